"""``bnjax.equinox``: batch normalization as an Equinox stateful layer, and its tools.

``BatchNorm`` is the layer; ``recompute_population_stats`` and
``fold_into_linear`` are ``bnjax``'s tools of the same names for Equinox models
and their ``eqx.nn.State`` (the population pass runs the model with each layer
replaced by a stand-in that keeps the core's exact average with unbiased
variances; folding hands the layer's weight and statistics to the core's).
"""

import warnings
from typing import Any, Callable, Hashable, Iterable, Literal, Optional, Sequence, Tuple, Union

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from ._core import validate
from ._core.containers import BatchNormParams, BatchNormState
from ._core.functional import init
from ._core.options import Options
from ._frontend import call_core
from ._tools.fold import fold_into_linear as fold_kernel
from ._tools.population import check_contributions, iterate_batches

__all__ = ["BatchNorm", "fold_into_linear", "recompute_population_stats"]

AxisName = Union[Hashable, Sequence[Hashable]]


class BatchNorm(eqx.nn.StatefulLayer):
    """Batch normalization (Ioffe & Szegedy, 2015), a drop-in for ``equinox.nn.BatchNorm``.

    The same constructor, fields, state indices and call as Equinox's
    (``eqx.nn.make_with_state``, ``eqx.nn.inference_mode``, ``eqx.nn.Sequential``
    and serialisation work unchanged); the computation is bnjax's core
    (``bnjax.batch_norm``): statistics accumulated in float32 or wider and
    exact when |mean| ≫ std, a gradient that keeps only x, and the output in
    x's dtype (bfloat16 and float16 inputs work; the statistics stay float32).

    ``__call__`` takes one example of shape ``(input_size, *spatial)`` (any
    rank, ``(C,)`` included) inside a ``jax.vmap`` or ``jax.pmap`` named
    ``axis_name`` (a name, or a tuple of names for nested maps); the
    statistics are over the named axes and the spatial axes.

    Modes (Equinox's; the state layout is Equinox's too):

    - ``"batch"``: training normalizes with the batch statistics;
      ``batch_state_index`` holds the running ``(mean, var)``, which after t
      training steps are the exact momentum-weighted average
      ``Σ (1−m)·mᵗ⁻ⁱ·sᵢ / (1 − mᵗ)`` of the batch statistics sᵢ seen (the first
      step stores the first batch's), and ``batch_counter`` the number of
      steps. (Equinox stores a zero-started average that it divides by
      1 − mᵗ at inference, with its hidden variance starting at 1; here the
      stored pair is the average itself, used as it is.)
    - ``"ema"``: the first training step stores the batch statistics, later
      ones the exponential moving average; training normalizes with those
      updated running statistics (Equinox's meaning), and
      ``ema_first_time_index`` says whether a step has run. The gradient
      treats the running statistics as constants except on the first step,
      where it is plain batch norm's (Equinox's also flows through the
      (1 − momentum) share of the batch in the later steps).
    - unspecified: ``"ema"`` with Equinox's warning.

    In both modes inference before any training step normalizes with mean 0
    and variance 1.

    Args:
      input_size: the number of channels (axis 0 of each example).
      axis_name: the name(s) of the mapped batch axis or axes.
      eps: added to the variance.
      channelwise_affine: whether to learn ``weight`` (γ) and ``bias`` (β).
      momentum: Equinox's (and Flax's) convention,
        ``new = momentum·old + (1 − momentum)·batch``; None (``mode="batch"``
        only) keeps the exact cumulative average of the batch statistics.
      inference: True normalizes with the running statistics; toggled by
        ``eqx.nn.inference_mode`` or the call's ``inference``.
      dtype: dtype of ``weight`` and ``bias`` (default float32, float64 in
        64-bit mode); the running statistics use it but never narrower than
        float32.
      mode: ``"ema"`` or ``"batch"``.
      unbiased: (bnjax) the running variance receives m/(m−1)·σ²_B, m the
        number of elements per channel across the batch.

    bnjax's options after Equinox's: ``momentum=None`` and ``unbiased``
    (above); the call's ``mask``, which also makes uneven per-device batches
    (padding masked out) weigh by their valid examples; and, for whole
    models, ``bnjax.equinox.recompute_population_stats`` and
    ``bnjax.equinox.fold_into_linear``.

    Not offered, with the reason (``bnjax.batch_norm``/``bnjax.batch_renorm``
    on the whole batch have them):

    - ``virtual_batch_size`` (ghost batches): the layer sees one example and
      the batch only as a mapped axis, so it cannot split the batch into groups.
    - ``axis_index_groups``: JAX's grouped collectives exist under ``pmap``
      and ``shard_map`` but not under ``vmap``, Equinox's usual batch axis.
    - renorm (r_max, d_max) and ``check_values``: not wired into this
      layer's two modes yet.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, bnjax.equinox
      >>> bn, state = eqx.nn.make_with_state(bnjax.equinox.BatchNorm)(2, "batch", mode="batch")
      >>> x = jnp.array([[1.0, 10.0], [3.0, 30.0]])
      >>> y, state = jax.vmap(bn, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(
      ...     x, state)
      >>> y.round(3)
      Array([[-1., -1.],
             [ 1.,  1.]], dtype=float32)
      >>> state.get(bn.batch_state_index)[0]  # the first batch's mean, from the first step
      Array([ 2., 20.], dtype=float32)
    """

    weight: Optional[jax.Array]
    bias: Optional[jax.Array]
    ema_first_time_index: Optional[eqx.nn.StateIndex]
    ema_state_index: Optional[eqx.nn.StateIndex]
    batch_counter: Optional[eqx.nn.StateIndex]
    batch_state_index: Optional[eqx.nn.StateIndex]
    axis_name: AxisName
    inference: bool
    input_size: int = eqx.field(static=True)
    eps: float = eqx.field(static=True)
    channelwise_affine: bool = eqx.field(static=True)
    momentum: Optional[float] = eqx.field(static=True)
    mode: Literal["ema", "batch"] = eqx.field(static=True)
    unbiased: bool = eqx.field(static=True)

    def __init__(
        self,
        input_size: int,
        axis_name: AxisName,
        eps: float = 1e-5,
        channelwise_affine: bool = True,
        momentum: Optional[float] = 0.99,
        inference: bool = False,
        dtype: Any = None,
        mode: Literal["ema", "batch", "legacy"] = "legacy",
        *,
        unbiased: bool = False,
    ):
        if mode == "legacy":
            mode = "ema"
            warnings.warn(
                "When `eqx.nn.BatchNorm(..., mode=...)` is unspecified it defaults to "
                "'ema', for backward compatibility. This typically has a performance "
                "impact, and for new code the user is encouraged to use 'batch' "
                "instead. See `https://github.com/patrick-kidger/equinox/issues/659`.",
                stacklevel=2,
            )
        if mode not in {"ema", "batch"}:
            raise ValueError("Invalid mode, must be 'ema' or 'batch'.")
        if momentum is None and mode == "ema":
            raise ValueError(
                "momentum=None (the exact cumulative average) needs a step count: use "
                "mode='batch', whose state keeps one"
            )
        # The momentum and eps are checked here, once, as the core checks them.
        Options(momentum=momentum, epsilon=eps, unbiased=unbiased).check()
        dtype = jnp.result_type(float) if dtype is None else dtype
        params, stats = init(
            input_size, dtype=dtype, use_scale=channelwise_affine, use_bias=channelwise_affine
        )
        self.weight, self.bias = params.scale, params.bias
        running = (stats.mean, stats.var)  # mean 0, variance 1: inference before training
        self.ema_first_time_index = eqx.nn.StateIndex(jnp.array(True)) if mode == "ema" else None
        self.ema_state_index = eqx.nn.StateIndex(running) if mode == "ema" else None
        self.batch_counter = (
            eqx.nn.StateIndex(jnp.zeros((), jnp.result_type(int))) if mode == "batch" else None
        )
        self.batch_state_index = eqx.nn.StateIndex(running) if mode == "batch" else None
        self.mode = mode
        self.inference = inference
        self.axis_name = axis_name
        self.input_size = input_size
        self.eps = eps
        self.channelwise_affine = channelwise_affine
        self.momentum = momentum
        self.unbiased = unbiased

    def __call__(
        self,
        x: ArrayLike,
        state: eqx.nn.State,
        *,
        key: Any = None,
        inference: Optional[bool] = None,
        mask: Optional[ArrayLike] = None,
    ) -> Tuple[jax.Array, eqx.nn.State]:
        """Normalizes one example; in training, returns the state with updated statistics.

        Args:
          x: one example, shape ``(input_size, *spatial)``.
          state: the ``eqx.nn.State`` holding this layer's statistics.
          key: ignored (Equinox's API).
          inference: overrides ``self.inference`` for this call when not None.
          mask: (bnjax) a boolean scalar or array broadcastable to x; only
            True elements enter the statistics. Under ``jax.vmap``/``jax.pmap``
            a per-example ``mask`` (False for padding) gives batches of
            different sizes on different devices, and the statistics weight
            each device by its number of valid elements.

        Returns:
          ``(y, state)``: y with x's shape and dtype.

        Raises:
          NameError: ``axis_name`` (or one of its names) is not bound by an
            enclosing ``jax.vmap``/``jax.pmap`` (as Equinox's); the message
            names it and the call to wrap the layer in.
          ValueError: x that is a scalar or whose axis 0 is not ``input_size``;
            a state that holds no statistics for this layer, or statistics of
            another size (the state of another model).
        """
        del key
        train = not (self.inference if inference is None else inference)
        axis_name = _axis_names(self.axis_name)
        _check_bound(axis_name)
        x = validate.as_array(x, "x")
        self._check_example(x)
        dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.inexact) else None

        def core(mean, var, count, train, momentum):
            options = Options(
                axis=0, momentum=momentum, epsilon=self.eps, unbiased=self.unbiased,
                axis_name=axis_name,
            )  # fmt: skip
            return call_core(
                x, self.weight, self.bias, mean, var, count, train, dtype, options, mask
            )

        if self.mode == "ema":
            assert self.ema_state_index is not None and self.ema_first_time_index is not None
            mean, var = self._statistics(state, self.ema_state_index, "ema_state_index")
            if not train:
                return core(mean, var, None, False, self.momentum)[0], state
            assert self.momentum is not None  # the constructor refuses None in this mode
            first = state.get(self.ema_first_time_index)
            # The first step stores the batch's statistics (momentum 0), later ones the EMA.
            momentum = jnp.where(first, jnp.zeros((), mean.dtype), self.momentum)
            y_batch, new = core(mean, var, None, True, momentum)
            y_running, _ = core(new.mean, new.var, None, False, momentum)
            state = state.set(self.ema_first_time_index, jnp.array(False))
            state = state.set(self.ema_state_index, (new.mean, new.var))
            return jnp.where(first, y_batch, y_running), state

        assert self.batch_state_index is not None and self.batch_counter is not None
        mean, var = self._statistics(state, self.batch_state_index, "batch_state_index")
        counter = state.get(self.batch_counter)
        if not train:
            return core(mean, var, counter, False, self.momentum)[0], state
        y, new = core(mean, var, counter, True, _average_momentum(self.momentum, counter))
        state = state.set(self.batch_state_index, (new.mean, new.var))
        state = state.set(self.batch_counter, new.count)
        return y, state

    def _check_example(self, x: jax.Array) -> None:
        """Raises unless x is one example ``(input_size, *spatial)``."""
        if x.ndim == 0 or x.shape[0] != self.input_size:
            got = "a scalar" if x.ndim == 0 else f"shape {tuple(x.shape)}"
            raise ValueError(
                f"bnjax.equinox.BatchNorm(input_size={self.input_size}): x must be one example "
                f"of shape (input_size, *spatial), channels first, got {got}. Call the layer "
                "on each example inside jax.vmap (give a batch of vectors the shape (batch, "
                f"{self.input_size}), and move channels-last data with jnp.moveaxis(x, -1, 0))"
            )

    def _statistics(self, state: eqx.nn.State, index: eqx.nn.StateIndex, field: str) -> Any:
        """``(mean, var)`` from ``state``, with an error naming a state of another model."""
        fix = (
            "pass the state made with this model: model, state = eqx.nn.make_with_state(Model)(...)"
        )
        try:
            value = state.get(index)
        except KeyError:
            raise ValueError(
                f"bnjax.equinox.BatchNorm(mode={self.mode!r}): the state holds nothing for "
                f"this layer's {field} ({index.marker!r}): it is the state of another model; " + fix
            ) from None
        shapes = [getattr(a, "shape", None) for a in jax.tree.leaves(value)]
        if len(shapes) != 2 or any(shape != (self.input_size,) for shape in shapes):
            raise ValueError(
                f"bnjax.equinox.BatchNorm(input_size={self.input_size}): the state's {field} "
                f"holds {shapes}, not (mean, var) of shape ({self.input_size},): it is "
                "another layer's state; " + fix
            )
        return value


def _axis_names(axis_name: AxisName) -> Any:
    """Equinox's ``axis_name`` (a name or a sequence of names) as the core takes it."""
    if isinstance(axis_name, (list, tuple)):
        return tuple(axis_name)
    return axis_name


def _check_bound(axis_name: Any) -> None:
    """Raises Equinox's NameError, saying which name is unbound and what to wrap the call in."""
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    for name in names:
        try:
            jax.lax.axis_size(name)
        except NameError:
            raise NameError(
                f"bnjax.equinox.BatchNorm(axis_name={axis_name!r}): no enclosing mapped axis "
                f"is named {name!r}. Call the layer on each example inside "
                f"jax.vmap(layer, axis_name={name!r}, in_axes=(0, None), out_axes=(0, None))"
                f"(x, state) (or jax.pmap / eqx.filter_vmap with axis_name={name!r})"
            ) from None


def _average_momentum(momentum: Optional[float], counter: jax.Array) -> Any:
    """The core's momentum that makes the running statistics the debiased average.

    With t = counter + 1 steps, ``(m − mᵗ)/(1 − mᵗ)`` turns the update
    ``new = keep·old + (1 − keep)·batch`` into the exact momentum-weighted
    average ``Σ (1 − m)·mᵗ⁻ⁱ·sᵢ / (1 − mᵗ)``: 0 on the first step, m in the
    limit. None (the cumulative average) and m ∈ {0, 1} pass unchanged.
    """
    if momentum is None or momentum in (0.0, 1.0):
        return momentum
    steps = (counter + 1).astype(jnp.float32)
    power = jnp.power(jnp.asarray(momentum, jnp.float32), steps)
    return (momentum - power) / (1 - power)


class _Population(BatchNorm):
    """A layer's stand-in while ``recompute_population_stats`` runs (bnjax-private).

    Batch mode keeping the exact average of the batch means and of the
    unbiased batch variances (the core's ``momentum=None, unbiased=True``),
    with a per-feature count (so that a batch that gave a feature no usable
    statistics shows) and a count of its training calls.
    """

    calls: eqx.nn.StateIndex

    def __init__(self, layer: BatchNorm, dtype: Any):
        super().__init__(
            layer.input_size, layer.axis_name, layer.eps, layer.channelwise_affine,
            None, False, dtype, "batch", unbiased=True,
        )  # fmt: skip
        self.weight, self.bias = layer.weight, layer.bias
        self.batch_counter = eqx.nn.StateIndex(jnp.zeros((layer.input_size,), jnp.int32))
        self.calls = eqx.nn.StateIndex(jnp.zeros((), jnp.int32))

    def __call__(self, x, state, *, key=None, inference=None, mask=None):
        """Trains unless the call asks for inference, counting the training calls."""
        if not (self.inference if inference is None else inference):
            state = state.set(self.calls, state.get(self.calls) + 1)
        return super().__call__(x, state, key=key, inference=inference, mask=mask)


Forward = Callable[[Any, eqx.nn.State, Any], Tuple[Any, eqx.nn.State]]


def _layers(model: Any) -> dict:
    """``{path: layer}`` of the bnjax Equinox BatchNorm layers in ``model`` (path "" for itself)."""
    is_layer = lambda node: isinstance(node, BatchNorm)  # noqa: E731
    leaves = jax.tree_util.tree_flatten_with_path(model, is_leaf=is_layer)[0]
    return {jax.tree_util.keystr(path): leaf for path, leaf in leaves if is_layer(leaf)}


def _running_index(layer: Any) -> Any:
    return layer.batch_state_index if layer.mode == "batch" else layer.ema_state_index


def _population_model(model: Any, state: eqx.nn.State) -> Tuple[Any, eqx.nn.State]:
    """The model with each bnjax layer's stand-in, and a fresh state for it.

    Every other ``StateIndex`` starts from its value in ``state``, so the rest
    of the model runs as it would in training; ``state`` itself is not touched.
    """

    def replace(node):
        if isinstance(node, BatchNorm):
            mean = _statistics(node, state)[0]
            return _Population(node, mean.dtype)
        if isinstance(node, eqx.nn.StateIndex):
            return eqx.nn.StateIndex(state.get(node))
        return node

    is_leaf = lambda node: isinstance(node, (BatchNorm, eqx.nn.StateIndex))  # noqa: E731
    rebuilt = jax.tree.map(replace, model, is_leaf=is_leaf)
    return eqx.nn.delete_init_state(rebuilt), eqx.nn.State(rebuilt)


def _statistics(layer: Any, state: eqx.nn.State) -> Any:
    return layer._statistics(state, _running_index(layer), "running statistics")


def recompute_population_stats(
    forward: Forward, model: Any, state: eqx.nn.State, batches: Iterable, *,
    progress: bool = True,
) -> eqx.nn.State:  # fmt: skip
    """The state with every ``bnjax.equinox.BatchNorm``'s statistics set to population ones.

    Runs ``forward(model, state, batch)`` over the batches (one
    ``eqx.filter_jit`` step, compiled once per distinct batch shape and dtype)
    with every bnjax layer training and keeping the exact average of its batch
    means and of its unbiased batch variances m/(m−1)·σ²_B (paper Alg. 2;
    "precise BN"), each layer seeing the activations of the current
    parameters with the layers before it normalizing with their batch
    statistics. Then each layer that trained gets those statistics: in
    ``mode="batch"`` with ``batch_counter`` set to the number of batches (the
    running average counts as that many steps), in ``mode="ema"`` with
    ``ema_first_time_index`` set to False. Everything else in the state, and
    the statistics of layers that ran only in inference, are unchanged; the
    ``state`` passed in stays valid.

    Args:
      forward: ``forward(model, state, batch) -> (output, state)``, e.g. the
        training loop's ``jax.vmap(model, axis_name="batch", in_axes=(0, None),
        out_axes=(0, None))(batch, state)``.
      model: an Equinox model containing ``bnjax.equinox.BatchNorm`` layers.
      state: its ``eqx.nn.State``.
      batches: an iterable of inputs (each passed as ``forward``'s third argument).
      progress: show a tqdm progress bar.

    Returns:
      The new ``eqx.nn.State``.

    Raises:
      ValueError: for an empty iterable, a model without bnjax BatchNorm
        layers or none that trained, or a layer that got no usable statistics
        from one of the batches (a batch of one element, NaN/Inf), naming the
        layer; for a state of another model.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, bnjax.equinox
      >>> model, state = eqx.nn.make_with_state(bnjax.equinox.BatchNorm)(1, "b", mode="batch")
      >>> forward = lambda m, s, x: jax.vmap(
      ...     m, axis_name="b", in_axes=(0, None), out_axes=(0, None))(x, s)
      >>> batches = [jnp.array([[0.0], [2.0]]), jnp.array([[4.0], [6.0]])]
      >>> state = bnjax.equinox.recompute_population_stats(
      ...     forward, model, state, batches, progress=False)
      >>> state.get(model.batch_state_index)  # means 1 and 5; unbiased variances 2 and 2
      (Array([3.], dtype=float32), Array([2.], dtype=float32))
    """
    layers = _layers(model)
    if not layers:
        raise ValueError(
            f"recompute_population_stats found no bnjax.equinox.BatchNorm in {type(model).__name__}"
        )
    batches = iterate_batches(batches, progress, "population statistics")
    work_model, work_state = _population_model(model, state)
    step = eqx.filter_jit(lambda m, s, batch: forward(m, s, batch)[1])
    for batch in batches:
        work_state = step(work_model, work_state, batch)
    work_layers = _layers(work_model)
    ran = {path: work_layers[path] for path in layers}
    ran = {path: layer for path, layer in ran.items() if int(work_state.get(layer.calls)) > 0}
    if not ran:
        raise ValueError(
            "no bnjax.equinox.BatchNorm layer ran in training mode: every call passed "
            "inference=True"
        )
    check_contributions(
        {
            path or type(model).__name__: (
                work_state.get(layer.calls),
                work_state.get(layer.batch_counter),
            )
            for path, layer in ran.items()
        }
    )
    new_state = jax.tree.map(lambda a: a, state)  # a copy: set() invalidates what it updates
    for path, work in ran.items():
        layer = layers[path]
        mean, var = work_state.get(work.batch_state_index)
        old_mean, old_var = _statistics(layer, state)
        statistics = (mean.astype(old_mean.dtype), var.astype(old_var.dtype))
        new_state = new_state.set(_running_index(layer), statistics)
        if layer.mode == "batch":
            count = jnp.min(work_state.get(work.batch_counter))
            counter = state.get(layer.batch_counter)
            new_state = new_state.set(layer.batch_counter, count.astype(counter.dtype))
        else:
            new_state = new_state.set(layer.ema_first_time_index, jnp.array(False))
    return new_state


def fold_into_linear(linear: Any, batch_norm: Any, state: eqx.nn.State) -> Any:
    """The ``eqx.nn.Linear`` or ``eqx.nn.Conv`` equal to ``linear`` followed by ``batch_norm``.

    For inference: ``batch_norm`` normalizes with its running statistics in
    ``state`` (mean 0 and variance 1 before any training step), so
    ``folded(x) == batch_norm(linear(x), state, inference=True)[0]`` up to
    rounding. The arithmetic is ``bnjax.fold_into_linear``'s (float32 or
    wider); the new weight and bias have the layer's dtype, and a layer
    without a bias gets one.

    Args:
      linear: an ``eqx.nn.Linear`` or ``eqx.nn.Conv`` (``Conv1d``/``2d``/``3d``)
        whose output features are the batch norm's channels.
      batch_norm: the ``bnjax.equinox.BatchNorm`` after it.
      state: the model's ``eqx.nn.State``.

    Returns:
      A layer of ``linear``'s type with the folded ``weight`` and ``bias``.

    Raises:
      TypeError: ``linear`` that is not an ``eqx.nn.Linear``/``Conv``,
        ``batch_norm`` that is not a ``bnjax.equinox.BatchNorm``.
      ValueError: output features that are not the batch norm's
        ``input_size``; a state of another model.

    Examples:
      >>> import jax, jax.numpy as jnp, equinox as eqx, bnjax.equinox
      >>> linear = eqx.nn.Linear(3, 2, key=jax.random.key(0))
      >>> bn, state = eqx.nn.make_with_state(bnjax.equinox.BatchNorm)(2, "b", mode="batch")
      >>> folded = bnjax.equinox.fold_into_linear(linear, bn, state)
      >>> x = jnp.ones((4, 3))
      >>> evaluating = eqx.nn.inference_mode(bn)
      >>> y, _ = jax.vmap(evaluating, axis_name="b", in_axes=(0, None), out_axes=(0, None))(
      ...     jax.vmap(linear)(x), state)
      >>> bool(jnp.allclose(jax.vmap(folded)(x), y, atol=1e-6))
      True
    """
    if not isinstance(linear, (eqx.nn.Linear, eqx.nn.Conv)):
        raise TypeError(
            f"linear must be an eqx.nn.Linear or eqx.nn.Conv, got {type(linear).__name__}"
        )
    if not isinstance(batch_norm, BatchNorm):
        raise TypeError(
            f"batch_norm must be a bnjax.equinox.BatchNorm, got {type(batch_norm).__name__}"
        )
    weight = linear.weight
    if weight.shape[0] != batch_norm.input_size:
        raise ValueError(
            f"linear has {weight.shape[0]} output features (weight.shape={weight.shape}) but "
            f"batch_norm has input_size={batch_norm.input_size}: fold the batch norm into the "
            "layer right before it"
        )
    mean, var = _statistics(batch_norm, state)
    kernel, bias = fold_kernel(
        jnp.moveaxis(weight, 0, -1),  # output features last, as the core takes them
        None if linear.bias is None else linear.bias.reshape(-1),
        BatchNormParams(batch_norm.weight, batch_norm.bias),
        BatchNormState(mean, var, jnp.zeros((), jnp.int32)),
        epsilon=batch_norm.eps,
    )
    bias_shape = (weight.shape[0],) + (1,) * (weight.ndim - 2 if linear.bias is None else 0)
    bias_shape = bias_shape if linear.bias is None else linear.bias.shape
    folded = eqx.tree_at(
        lambda layer: (layer.weight, layer.bias),
        linear,
        (jnp.moveaxis(kernel, -1, 0), bias.reshape(bias_shape)),
        is_leaf=lambda node: node is None,
    )
    if not folded.use_bias:  # a copy of ours: the bias is now used
        object.__setattr__(folded, "use_bias", True)
    return folded
