"""Population statistics (paper Alg. 2, steps 8–11; "precise BN").

Recomputing them runs the model in training mode over some batches while every
bnjax layer keeps the exact average of its batch means and of its unbiased
batch variances: the core's own ``momentum=None, unbiased=True`` mode, applied
to a fresh set of statistics. Linen layers keep that set in the
``bnjax_population`` collection when the tool names it in ``mutable``; NNX
layers do so in a copy of the model (see ``bnjax.nnx.recompute_population_stats``).
Each layer also counts its training calls, so that a call whose batch gave no
usable statistics (one element with the unbiased variance, no valid element,
NaN/Inf) is an error naming the layer, never a silently skipped batch.
"""

from typing import Any, Dict, Iterable, Iterator, Mapping, Sized, Tuple

import jax
import jax.numpy as jnp
import numpy as np

COLLECTION = "bnjax_population"


def _named_collections(mutable) -> frozenset:
    """The collections a ``mutable`` filter names explicitly (not ``True`` or a DenyList)."""
    if isinstance(mutable, str):
        return frozenset([mutable])
    if isinstance(mutable, (list, tuple, set, frozenset)):
        return frozenset().union(*(_named_collections(m) for m in mutable))
    return frozenset()


def population_requested(module) -> bool:
    """Whether a linen layer runs for ``recompute_population_stats``.

    The tool says so explicitly: it names ``COLLECTION`` in ``mutable``
    (``mutable=True`` or a ``DenyList`` does not count).
    """
    return COLLECTION in _named_collections(module.scope.mutable)


def iterate_batches(batches: Iterable, progress: bool, description: str) -> Iterator:
    """The batches, behind a tqdm progress bar when ``progress``; raises if there are none."""
    try:
        iterator = iter(batches)
    except TypeError:
        raise TypeError(
            "recompute_population_stats needs an iterable of model inputs for batches, got "
            f"{type(batches).__name__}"
        ) from None
    try:
        first = next(iterator)
    except StopIteration:
        raise ValueError(
            "recompute_population_stats needs at least one batch, got an empty iterable"
        ) from None

    def chained():
        yield first
        yield from iterator

    if not progress:
        return chained()
    from tqdm.auto import tqdm

    total = len(batches) if isinstance(batches, Sized) else None
    return iter(tqdm(chained(), total=total, desc=description, unit="batch"))


def check_contributions(layers: Mapping[str, tuple]) -> None:
    """Raises unless every training call of every layer entered its population statistics.

    Args:
      layers: ``{layer name: (calls, count)}``: how often the layer ran in
        training mode, and how many of those calls its statistics counted.
    """
    for name, (calls, count) in layers.items():
        # One entry per stacked copy of the layer under nn.scan / nn.vmap, () otherwise.
        calls, count = np.asarray(calls), np.asarray(count)
        calls = calls.reshape(calls.shape + (1,) * (count.ndim - calls.ndim))
        if np.any(count != calls):
            missing, calls = int(np.max(calls - count)), int(np.max(calls))
            raise ValueError(
                f"recompute_population_stats: the BatchNorm layer {name!r} got no usable "
                f"statistics from {missing} of its {calls} training call(s): a batch of one "
                "element has no unbiased variance, and a batch with no valid element (mask) or "
                "with NaN/Inf values has no statistics. Population statistics average every "
                "batch: drop such batches (e.g. a last batch of one example). The variables "
                "were left unchanged."
            )


def _fresh_statistics(shapes: Mapping) -> Any:
    """Zeros for means and counts, ones for variances, shaped like ``shapes``."""
    from flax import traverse_util

    flat: Dict[Tuple[str, ...], Any] = traverse_util.flatten_dict(shapes)
    fresh = {
        path: (jnp.ones if path[-1] == "var" else jnp.zeros)(leaf.shape, leaf.dtype)
        for path, leaf in flat.items()
    }
    return traverse_util.unflatten_dict(fresh)


def _raise_without_population(model, variables: Mapping, batch, apply_kwargs) -> None:
    """Raises the ValueError for a model in which no layer computed population statistics.

    Layers that trained all the same (their ``batch_stats`` changed) ran inside
    a lifted transform (``nn.scan``, ``nn.vmap``, ...) that does not pass
    ``COLLECTION`` on; otherwise none trained.
    """
    _, updates = model.apply(variables, batch, mutable=["batch_stats"], **apply_kwargs)
    before = jax.tree.leaves(variables.get("batch_stats", {}))
    after = jax.tree.leaves(updates.get("batch_stats", {}))
    trained = len(before) != len(after) or any(
        not np.array_equal(b, a) for b, a in zip(before, after, strict=True)
    )
    if trained:
        raise ValueError(
            "recompute_population_stats: BatchNorm layers trained but none computed population "
            "statistics: a lifted transform (nn.scan, nn.vmap, nn.remat_scan, ...) around them "
            f"must pass the {COLLECTION!r} collection on as it passes 'batch_stats', e.g. "
            f"nn.scan(..., variable_axes={{'params': 0, 'batch_stats': 0, {COLLECTION!r}: 0}}). "
            "The variables were left unchanged."
        )
    raise ValueError(
        "no bnjax.BatchNorm layer ran in training mode: the model has none, or it ran in "
        "evaluation mode (pass e.g. train=True to put it in training mode)"
    )


def recompute_population_stats(
    model, variables: Mapping, batches: Iterable, *, progress: bool = True, **apply_kwargs
) -> dict:
    """Sets every bnjax linen layer's running statistics to population statistics.

    Runs ``model.apply(variables, batch, **apply_kwargs)`` over the batches
    (one ``jax.jit`` step, compiled once per distinct batch shape and dtype)
    and sets each ``bnjax.BatchNorm`` layer that ran in training mode to the
    average of its batch means and of its unbiased batch variances
    m/(m−1)·σ²_B. Every layer sees the activations of the current parameters,
    each BatchNorm before it normalizing with its batch statistics (a
    ``renorm=True`` layer too: r = 1, d = 0, since the statistics r and d refer
    to are the ones being replaced). Parameters and all other collections are
    returned unchanged, and so are the statistics of layers that did not run in
    training mode. Pass what puts the model in training mode in
    ``apply_kwargs`` (for example ``train=True``); masks and sharded batches
    work as in training.

    Args:
      model: a linen module containing ``bnjax.BatchNorm`` layers.
      variables: its variables (``params``, ``batch_stats``, ...).
      batches: an iterable of model inputs (each passed as the first argument).
      progress: show a tqdm progress bar.
      **apply_kwargs: further arguments of ``model.apply``.

    Returns:
      The variables with new ``batch_stats``.

    Raises:
      ValueError: for an empty iterable; when no bnjax BatchNorm layer ran in
        training mode; when a layer got no usable statistics from one of the
        batches (a batch of one element, no valid element, NaN/Inf), naming
        the layer. Nothing is returned then.

    Examples:
      >>> import jax, jax.numpy as jnp, bnjax
      >>> bn = bnjax.BatchNorm(use_running_average=False)
      >>> variables = bn.init(jax.random.key(0), jnp.zeros((2, 1)))
      >>> batches = [jnp.array([[0.0], [2.0]]), jnp.array([[4.0], [6.0]])]
      >>> new = bnjax.recompute_population_stats(bn, variables, batches, progress=False)
      >>> new["batch_stats"]["mean"], new["batch_stats"]["var"]  # unbiased variances 2 and 2
      (Array([3.], dtype=float32), Array([2.], dtype=float32))
    """
    from flax import traverse_util  # here: the helpers above serve the Equinox front end too

    variables = dict(variables)
    batches = iterate_batches(batches, progress, "population statistics")
    first = next(batches)

    def step(population, batch):
        _, updates = model.apply(
            {**variables, COLLECTION: population},
            batch,
            mutable=[COLLECTION, "batch_stats"],  # naming COLLECTION selects population mode
            **apply_kwargs,
        )
        return updates[COLLECTION]

    shapes = jax.eval_shape(step, {}, first)
    if not shapes:
        _raise_without_population(model, variables, first, apply_kwargs)
    step = jax.jit(step)
    population = step(_fresh_statistics(shapes), first)
    for batch in batches:
        population = step(population, batch)

    flat: Dict[Tuple[str, ...], Any] = traverse_util.flatten_dict(population)
    check_contributions(
        {
            "/".join(path[:-1]) or type(model).__name__: (calls, flat[(*path[:-1], "count")])
            for path, calls in flat.items()
            if path[-1] == "calls"
        }
    )
    batch_stats: Dict[Tuple[str, ...], Any] = traverse_util.flatten_dict(
        dict(variables.get("batch_stats", {}))
    )
    for path, value in flat.items():
        if path[-1] in ("mean", "var"):
            batch_stats[path] = value
        elif path in batch_stats:  # momentum=None layers: batches folded in (equal per feature)
            old = batch_stats[path]
            batch_stats[path] = jnp.broadcast_to(jnp.min(value).astype(old.dtype), jnp.shape(old))
    return {**variables, "batch_stats": traverse_util.unflatten_dict(batch_stats)}
