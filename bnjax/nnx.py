"""``bnjax.nnx.BatchNorm``: batch normalization as a ``flax.nnx`` module."""

from types import MappingProxyType
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import jax
import jax.numpy as jnp
from flax import nnx
from flax.nnx import initializers
from flax.nnx.nn import dtypes as flax_dtypes
from jax.typing import ArrayLike

from ._core.validate import feature_shape_from
from ._frontend import (
    call_core,
    check_dtypes,
    core_options,
    output_dtype,
    promote_like_flax_nnx,
    start_call,
)
from ._tools.population import check_contributions, iterate_batches

__all__ = ["BatchNorm", "recompute_population_stats"]


class BatchNorm(nnx.Module):
    """Batch normalization (Ioffe & Szegedy, 2015) as a ``flax.nnx`` module.

    Mirrors ``flax.nnx.BatchNorm``: ``Param`` scale and bias, ``BatchStat``
    mean and var updated in place in training, ``model.train()`` /
    ``model.eval()`` switching, call-time ``use_running_average`` (which wins
    over the attribute) and ``mask``. The computation is
    ``bnjax.batch_norm``.

    Args:
      num_features: the size of the feature axis (a tuple for several axes).
      use_running_average: True evaluates with the running statistics.
      axis: the feature axis or axes.
      momentum: Flax's convention (a float, or a NumPy or JAX scalar, traced
        or not); None keeps the exact average over the batches each feature
        saw (a ``count`` ``BatchStat`` of the feature shape is then kept
        too). Statistics loaded without their count (``nnx.update`` with a
        ``flax.nnx.BatchNorm``'s state leaves ``count`` at 0) count as one
        batch; set ``count`` to weigh them otherwise.
      epsilon: added to the variance.
      dtype: computation and output dtype, inexact (an integer one raises a
        ValueError, as in Flax); None promotes x with the parameters and the
        statistics (``promote_dtype``).
      param_dtype: dtype of scale and bias, floating point.
      use_bias: whether to learn β.
      use_scale: whether to learn γ.
      bias_init: initializer of β.
      scale_init: initializer of γ.
      axis_name: mapped axis to compute the statistics across.
      axis_index_groups: device groups along ``axis_name``.
      use_fast_variance: accepted for compatibility; statistics are always
        stable and float32-accumulated.
      unbiased: the running variance receives m/(m−1)·σ²_B.
      virtual_batch_size: ghost batch norm, statistics per group of this many
        examples (see ``bnjax.batch_norm``).
      renorm: Batch Renormalization in training (see ``bnjax.batch_renorm``).
      r_max: clip of r when ``renorm``.
      d_max: clip of d when ``renorm``.
      check_values: opt-in value checks (see ``bnjax.batch_norm``).
      promote_dtype: as in ``flax.nnx.BatchNorm``: called as
        ``promote_dtype((x, mean, var, scale, bias), dtype=dtype)``, it returns
        them cast to the computation dtype; the statistics come from the cast
        x (in at least float32), and running statistics keep their own dtype.
        Flax's default (``flax.nnx.nn.dtypes.promote_dtype``) is applied by an
        equivalent that also works under strict dtype promotion.
      rngs: ``nnx.Rngs`` for the initializers.
      bias_metadata: metadata of the bias ``nnx.Param``.
      scale_metadata: metadata of the scale ``nnx.Param``.

    Examples:
      >>> import jax.numpy as jnp, bnjax
      >>> from flax import nnx
      >>> bn = bnjax.nnx.BatchNorm(2, rngs=nnx.Rngs(0))
      >>> y = bn(jnp.arange(8.0).reshape(4, 2))  # trains: statistics update in place
      >>> bn.mean[...]
      Array([0.03, 0.04], dtype=float32)
      >>> bn.eval()
      >>> bn.use_running_average
      True
    """

    def __init__(
        self,
        num_features: Union[int, Sequence[int]],
        *,
        use_running_average: Optional[bool] = False,
        axis: Union[int, Sequence[int]] = -1,
        momentum: Optional[float] = 0.99,
        epsilon: float = 1e-5,
        dtype: Optional[Any] = None,
        param_dtype: Any = jnp.float32,
        use_bias: bool = True,
        use_scale: bool = True,
        bias_init: Any = initializers.zeros,
        scale_init: Any = initializers.ones,
        axis_name: Optional[str] = None,
        axis_index_groups: Any = None,
        use_fast_variance: bool = True,
        unbiased: bool = False,
        virtual_batch_size: Optional[int] = None,
        renorm: bool = False,
        r_max: float = 3.0,
        d_max: float = 5.0,
        check_values: bool = False,
        promote_dtype: Any = flax_dtypes.promote_dtype,
        rngs: nnx.Rngs,
        bias_metadata: Mapping[str, Any] = MappingProxyType({}),
        scale_metadata: Mapping[str, Any] = MappingProxyType({}),
    ):
        shape = feature_shape_from(num_features)
        check_dtypes(dtype, param_dtype)
        self.mean = nnx.BatchStat(jnp.zeros(shape, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(shape, jnp.float32))
        # one count per feature: the exact average of the batches each feature saw
        self.count = (
            nnx.BatchStat(jnp.zeros(shape, jnp.int32)) if momentum is None else nnx.data(None)
        )
        self.scale = nnx.data(None)
        if use_scale:
            self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype), **scale_metadata)
        self.bias = nnx.data(None)
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype), **bias_metadata)
        self.num_features = num_features
        self.use_running_average = use_running_average
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.dtype = dtype
        self.param_dtype = param_dtype
        self.use_bias = use_bias
        self.use_scale = use_scale
        self.axis_name = axis_name
        self.axis_index_groups = axis_index_groups
        self.use_fast_variance = use_fast_variance
        self.unbiased = unbiased
        self.virtual_batch_size = virtual_batch_size
        self.renorm = renorm
        self.r_max = r_max
        self.d_max = d_max
        self.check_values = check_values
        self.promote_dtype = promote_dtype

    def __call__(
        self,
        x: ArrayLike,
        use_running_average: Optional[bool] = None,
        *,
        mask: Optional[ArrayLike] = None,
    ) -> jax.Array:
        """Normalizes ``x``; in training, updates ``mean``/``var`` in place.

        Args:
          x: the input.
          use_running_average: overrides the attribute for this call.
          mask: boolean, broadcastable to x; only True positions enter the
            statistics.

        Returns:
          The normalized input.
        """
        train, layout = start_call(self, x, use_running_average, call_overrides=True)
        # recompute_population_stats marks its copy of the model with this counter.
        population = train and vars(self).get("population_calls") is not None
        if train and self.momentum is None and self.count is None and not population:
            raise ValueError(
                "momentum=None keeps an exact average and needs a count: create the layer "
                "with bnjax.nnx.BatchNorm(..., momentum=None) instead of setting it later"
            )
        mean, var = self.mean[...], self.var[...]
        scale = None if self.scale is None else self.scale[...]
        bias = None if self.bias is None else self.bias[...]
        promote: Callable[..., Any] = self.promote_dtype  # Flax's or the user's
        if promote is flax_dtypes.promote_dtype:
            promote = promote_like_flax_nnx
        x, mean_p, var_p, scale, bias = promote((x, mean, var, scale, bias), dtype=self.dtype)
        y, new_state = call_core(
            x,
            scale,
            bias,
            mean_p if not train else mean,  # the running statistics keep their dtype (as Flax)
            var_p if not train else var,
            None if self.count is None else self.count[...],
            train,
            output_dtype(x, self.dtype, scale, bias),
            core_options(self, population=population),
            mask,
            layout,
        )
        if population:  # counted once the call has succeeded
            vars(self)["population_calls"][...] += 1
        if train:
            if new_state.mean.dtype == self.mean.dtype:
                self.mean[...] = new_state.mean
            else:  # complex input: the running mean becomes complex (as in flax.linen)
                self.mean.set_value(new_state.mean)
            self.var[...] = new_state.var
            if self.count is not None:
                self.count[...] = new_state.count
        return y

    def set_view(self, use_running_average: Optional[bool] = None):
        """Used by ``nnx.view`` (as in ``flax.nnx.BatchNorm``).

        Args:
          use_running_average: if given, the mode of the view.
        """
        if use_running_average is not None:
            self.use_running_average = use_running_average


def recompute_population_stats(model: nnx.Module, batches, *, progress: bool = True) -> None:
    """Sets every ``bnjax.nnx.BatchNorm`` in ``model`` to population statistics, in place.

    Runs ``model(batch)`` over the batches (one ``nnx.jit`` step, compiled once
    per distinct batch shape and dtype) on a copy of the model (``nnx.clone``)
    in which every bnjax BatchNorm layer trains and keeps the exact average of
    its batch means and of its unbiased batch variances m/(m−1)·σ²_B (the
    core's ``momentum=None, unbiased=True``), a ``renorm=True`` layer
    normalizing with its batch statistics as plain batch norm. Only when every
    batch has run are the new ``mean`` and ``var`` (and ``count`` of a
    ``momentum=None`` layer) written into ``model``: on any error the model is
    exactly as it was. Nothing else in ``model`` changes (parameters, modes,
    options, other layers' state such as random-number streams); a layer that
    ran only in evaluation mode (a call-time ``use_running_average=True``)
    keeps its statistics.

    Args:
      model: an NNX module containing ``bnjax.nnx.BatchNorm`` layers.
      batches: an iterable of model inputs.
      progress: show a tqdm progress bar.

    Raises:
      ValueError: for an empty iterable, a model without bnjax BatchNorm
        layers or none that ran in training mode, or a layer that got no
        usable statistics from one of the batches (a batch of one element, no
        valid element, NaN/Inf), naming the layer.

    Examples:
      >>> import jax.numpy as jnp, bnjax
      >>> from flax import nnx
      >>> bn = bnjax.nnx.BatchNorm(1, rngs=nnx.Rngs(0))
      >>> batches = [jnp.array([[0.0], [2.0]]), jnp.array([[4.0], [6.0]])]
      >>> bnjax.nnx.recompute_population_stats(bn, batches, progress=False)
      >>> bn.mean[...], bn.var[...]  # means 1 and 5; unbiased variances 2 and 2
      (Array([3.], dtype=float32), Array([2.], dtype=float32))
    """
    layers = _bnjax_layers(model)
    if not layers:
        raise ValueError(
            f"recompute_population_stats found no bnjax.nnx.BatchNorm in {type(model).__name__}"
        )
    batches = iterate_batches(batches, progress, "population statistics")
    work = nnx.clone(model)  # arrays are shared, not copied; the model stays untouched
    work_layers = _bnjax_layers(work)
    for layer in work_layers.values():
        layer.use_running_average = False
        layer.mean[...] = jnp.zeros_like(layer.mean[...])
        layer.var[...] = jnp.ones_like(layer.var[...])
        # per feature, so that a batch that misses one feature is seen too
        layer.count = nnx.BatchStat(jnp.zeros(layer.mean.shape, jnp.int32))
        layer.population_calls = nnx.BatchStat(jnp.zeros((), jnp.int32))
    step = nnx.jit(lambda model, batch: model(batch))
    for batch in batches:
        step(work, batch)
    ran = {path: layer for path, layer in work_layers.items() if layer.population_calls[...] > 0}
    if not ran:
        raise ValueError(
            "no bnjax.nnx.BatchNorm layer ran in training mode: every call passed "
            "use_running_average=True"
        )
    check_contributions(
        {path: (layer.population_calls[...], layer.count[...]) for path, layer in ran.items()}
    )
    for path, new in ran.items():
        layer = layers[path]
        layer.mean[...], layer.var[...] = new.mean[...], new.var[...]
        if layer.count is not None:  # a layer that keeps the exact average keeps the new count
            count = jnp.min(new.count[...]).astype(layer.count.dtype)  # equal for every feature
            layer.count[...] = jnp.broadcast_to(count, layer.count.shape)


def _bnjax_layers(model: nnx.Module) -> dict:
    """``{path: layer}`` of the bnjax BatchNorm layers in ``model`` (each once)."""
    return {
        ".".join(map(str, path)) or type(model).__name__: node
        for path, node in nnx.iter_graph(model)
        if isinstance(node, BatchNorm)
    }
