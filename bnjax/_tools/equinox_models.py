"""Population statistics and folding for Equinox models (``bnjax.equinox``'s tools).

The same tools as for Flax (``bnjax.recompute_population_stats``,
``bnjax.fold_into_linear``), on an Equinox model and its ``eqx.nn.State``:
the population pass runs the model with every ``bnjax.equinox.BatchNorm``
replaced by a stand-in that keeps the core's exact average with unbiased
variances, and folding hands the layer's weight and running statistics to the
core's ``fold_into_linear``.
"""

from typing import Any, Callable, Iterable, Tuple

import equinox as eqx
import jax
import jax.numpy as jnp

from .._core.containers import BatchNormParams, BatchNormState
from .batches import check_contributions, iterate_batches
from .fold import fold_into_linear as fold_kernel

Forward = Callable[[Any, eqx.nn.State, Any], Tuple[Any, eqx.nn.State]]


def _layers(model: Any) -> dict:
    """``{path: layer}`` of the bnjax Equinox BatchNorm layers in ``model`` (path "" for itself)."""
    from ..equinox import BatchNorm

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
    from ..equinox import BatchNorm, _Population

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
    from ..equinox import BatchNorm

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
