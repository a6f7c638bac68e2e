"""``bnjax.linen``: the flax.linen ``BatchNorm`` (drop-in) and ``recompute_population_stats``."""

from typing import Any, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import initializers
from jax.typing import ArrayLike

from ._frontend import (
    call_core,
    core_options,
    start_call,
)
from ._tools.population import COLLECTION, population_requested
from ._tools.population import recompute_population_stats as recompute_population_stats

__all__ = ["BatchNorm", "recompute_population_stats"]


class BatchNorm(nn.Module):
    """Batch normalization (Ioffe & Szegedy, 2015) as a ``flax.linen`` module.

    Same fields, defaults, call signature and variables as
    ``flax.linen.BatchNorm`` (``params/{scale, bias}``,
    ``batch_stats/{mean, var}``), so checkpoints of models that use Flax's
    load unchanged; the computation is ``bnjax.batch_norm``. Statistics are
    always float32-accumulated and stable at large offsets, so Flax's
    ``use_fast_variance`` and ``force_float32_reductions`` are accepted and
    have no effect. Running statistics are not updated while initializing.

    Attributes:
      use_running_average: True evaluates with the running statistics, False
        trains with batch statistics; may instead be given at call time.
      axis: the feature axis or axes.
      momentum: Flax's convention ``new = momentum·old + (1−momentum)·batch``
        (a float, or a NumPy or JAX scalar, traced or not); None keeps the
        exact average over the batches each feature saw (then
        ``batch_stats/count`` is stored too, one per feature; statistics
        loaded without it count as one batch).
      epsilon: added to the variance.
      dtype: the output dtype, inexact (an integer one raises a ValueError,
        as in Flax); None promotes x with the parameters, as Flax does. The
        statistics always come from x in at least float32, so
        ``jnp.bfloat16`` with float32 input gives Flax's numbers rounded to
        bfloat16.
      param_dtype: dtype of scale and bias, floating point.
      use_bias: whether to learn β.
      use_scale: whether to learn γ.
      bias_init: initializer of β.
      scale_init: initializer of γ.
      axis_name: mapped axis to compute the statistics across.
      axis_index_groups: device groups along ``axis_name``.
      use_fast_variance: accepted for compatibility; no effect.
      force_float32_reductions: accepted for compatibility; no effect.
      unbiased: the running variance receives m/(m−1)·σ²_B.
      virtual_batch_size: ghost batch norm, statistics per group of this many
        examples (see ``bnjax.batch_norm``).
      renorm: Batch Renormalization in training (see ``bnjax.batch_renorm``).
      r_max: clip of r when ``renorm``.
      d_max: clip of d when ``renorm``.
      check_values: opt-in value checks (see ``bnjax.batch_norm``).

    Examples:
      >>> import jax, jax.numpy as jnp, bnjax
      >>> bn = bnjax.BatchNorm(use_running_average=False)
      >>> x = jnp.arange(8.0).reshape(4, 2)
      >>> variables = bn.init(jax.random.key(0), x)
      >>> jax.tree.map(jnp.shape, variables)
      {'batch_stats': {'mean': (2,), 'var': (2,)}, 'params': {'bias': (2,), 'scale': (2,)}}
      >>> y, updates = bn.apply(variables, x, mutable=["batch_stats"])
      >>> updates["batch_stats"]["mean"]
      Array([0.03, 0.04], dtype=float32)
    """

    use_running_average: Optional[bool] = None
    axis: Union[int, Sequence[int]] = -1
    momentum: Optional[float] = 0.99
    epsilon: float = 1e-5
    dtype: Optional[Any] = None
    param_dtype: Any = jnp.float32
    use_bias: bool = True
    use_scale: bool = True
    bias_init: Any = initializers.zeros
    scale_init: Any = initializers.ones
    axis_name: Optional[str] = None
    axis_index_groups: Any = None
    use_fast_variance: bool = True
    force_float32_reductions: bool = True
    unbiased: bool = False
    virtual_batch_size: Optional[int] = None
    renorm: bool = False
    r_max: float = 3.0
    d_max: float = 5.0
    check_values: bool = False

    @nn.compact
    def __call__(
        self,
        x: ArrayLike,
        use_running_average: Optional[bool] = None,
        *,
        mask: Optional[ArrayLike] = None,
    ) -> jax.Array:
        """Normalizes ``x``; in training, updates ``batch_stats`` (which must be mutable).

        Args:
          x: the input.
          use_running_average: give it here or to the constructor, not both
            (as ``flax.linen.BatchNorm``).
          mask: boolean, broadcastable to x; only True positions enter the
            statistics.

        Returns:
          The normalized input.
        """
        train, layout = start_call(self, x, use_running_average, call_overrides=False)
        feature_shape = layout.feature_shape
        initializing = self.is_initializing()
        updating = train and not initializing
        # Population statistics (precise BN): the tool names its collection in `mutable`.
        population = updating and population_requested(self)
        mean, var, count = self._statistics(feature_shape, updating)
        if population:  # fresh statistics that keep the exact average (precise BN)
            mean, var, count = self._statistics(mean.value.shape, False, COLLECTION)
            calls = self.variable(COLLECTION, "calls", jnp.zeros, (), jnp.int32)
            calls.value = calls.value + 1
        scale = bias = None
        if self.use_scale:
            shape = self._existing_shape("scale", feature_shape)
            scale = self.param("scale", self.scale_init, shape, self.param_dtype)
        if self.use_bias:
            shape = self._existing_shape("bias", feature_shape)
            bias = self.param("bias", self.bias_init, shape, self.param_dtype)

        y, new_state = call_core(
            x,
            scale,
            bias,
            mean.value,
            var.value,
            None if count is None else count.value,
            train,
            self.dtype,
            core_options(self, initializing=initializing, population=population),
            mask,
            layout,
        )
        if updating:
            mean.value, var.value = new_state.mean, new_state.var
            if count is not None:
                count.value = new_state.count
        return y

    @nn.nowrap
    def _existing_shape(self, name: str, from_x: Tuple[int, ...]) -> Tuple[int, ...]:
        """The shape of the parameter ``name`` where it exists, else the one x asks for.

        The layer's variables keep the shape they were created with; the core
        checks them against x once (one message for every front end), before
        Flax's own parameter shape check would.
        """
        if self.has_variable("params", name):
            # unbox: a scale_init/bias_init with nn.with_partitioning stores a Partitioned box
            return tuple(jnp.shape(nn.meta.unbox(self.get_variable("params", name))))
        return from_x

    @nn.nowrap  # runs inside __call__'s compact scope (Module.tabulate, shared modules)
    def _statistics(self, feature_shape, updating: bool, collection: str = "batch_stats"):
        """The (mean, var, count) variables of ``collection``; count only where needed.

        ``batch_stats`` always exists (Flax's variable tree); it must be mutable
        when ``updating``. ``count`` (``momentum=None``) is created and read in
        training only, so a checkpoint without it evaluates.
        """
        initializing = self.is_initializing()
        if collection == "batch_stats":
            if not self.has_variable(collection, "mean") and not (
                initializing or self.is_mutable_collection(collection)
            ):
                raise ValueError(
                    "bnjax.BatchNorm found no 'batch_stats' in the variables: pass all the "
                    "variables that init returned (params and batch_stats), e.g. "
                    "model.apply(variables, x), not model.apply({'params': params}, x)"
                )
            if updating and not self.is_mutable_collection(collection):
                raise ValueError(
                    "bnjax.BatchNorm in training mode (use_running_average=False) updates the "
                    "'batch_stats' collection: call model.apply(variables, x, "
                    "mutable=['batch_stats']) and keep the returned statistics, or evaluate "
                    "with use_running_average=True"
                )
        mean = self.variable(collection, "mean", jnp.zeros, feature_shape, jnp.float32)
        var = self.variable(collection, "var", jnp.ones, feature_shape, jnp.float32)
        count = None  # kept only where the exact average needs it, and read only in training
        if collection != "batch_stats" or (self.momentum is None and (updating or initializing)):
            # one count per feature, so that a feature that misses a batch averages exactly
            # the batches it saw. Statistics without a count (a flax.linen.BatchNorm
            # checkpoint) get one of zeros at the first training step: the core then counts
            # them as one batch (see bnjax.batch_norm's state.count).
            count = self.variable(collection, "count", jnp.zeros, feature_shape, jnp.int32)
        return mean, var, count
