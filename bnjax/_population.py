"""Population statistics (paper Alg. 2, steps 8–11; "precise BN").

Recomputing them runs the model in training mode over some batches while every
bnjax layer keeps the exact average of its batch means and of its unbiased
batch variances: the core's own ``momentum=None, unbiased=True`` mode, applied
to a fresh set of statistics. Linen layers keep that set in the
``bnjax_population`` collection while ``population_mode()`` is active; NNX
layers are switched in place (see ``bnjax.nnx.recompute_population_stats``).
"""

import contextlib
import contextvars
from typing import Any, Iterable, Iterator, Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util

COLLECTION = "bnjax_population"
_ACTIVE = contextvars.ContextVar("bnjax_population_mode", default=False)


@contextlib.contextmanager
def population_mode() -> Iterator[None]:
    """While active (at trace time), training linen layers update ``COLLECTION`` instead."""
    token = _ACTIVE.set(True)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def population_mode_active() -> bool:
    """Whether ``population_mode()`` is active."""
    return _ACTIVE.get()


def iterate_batches(batches: Iterable, progress: bool, description: str) -> Iterator:
    """The batches, behind a tqdm progress bar when ``progress``; raises if there are none."""
    iterator = iter(batches)
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

    total = len(batches) if hasattr(batches, "__len__") else None
    return iter(tqdm(chained(), total=total, desc=description, unit="batch"))


def _fresh_statistics(shapes: Mapping) -> Any:
    """Zeros for means and counts, ones for variances, shaped like ``shapes``."""
    flat = traverse_util.flatten_dict(shapes)
    fresh = {
        path: (jnp.ones if path[-1] == "var" else jnp.zeros)(leaf.shape, leaf.dtype)
        for path, leaf in flat.items()
    }
    return traverse_util.unflatten_dict(fresh)


def recompute_population_stats(
    model, variables: Mapping, batches: Iterable, *, progress: bool = True, **apply_kwargs
) -> dict:
    """Sets every bnjax linen layer's running statistics to population statistics.

    Runs ``model.apply(variables, batch, **apply_kwargs)`` over the batches
    (compiled once) and sets each ``bnjax.BatchNorm`` layer that ran in
    training mode to the average of its batch means and of its unbiased batch
    variances m/(m−1)·σ²_B. Every layer sees the activations of the current
    parameters; parameters and all other collections are returned unchanged.
    Pass what puts the model in training mode in ``apply_kwargs`` (for example
    ``train=True``); masks and sharded batches work as in training.

    Args:
      model: a linen module containing ``bnjax.BatchNorm`` layers.
      variables: its variables (``params``, ``batch_stats``, ...).
      batches: an iterable of model inputs (each passed as the first argument).
      progress: show a tqdm progress bar.
      **apply_kwargs: further arguments of ``model.apply``.

    Returns:
      The variables with new ``batch_stats``.

    Raises:
      ValueError: for an empty iterable, or when no bnjax BatchNorm layer ran
        in training mode.
    """
    variables = dict(variables)
    batches = iterate_batches(batches, progress, "population statistics")
    first = next(batches)

    def step(population, batch):
        with population_mode():
            _, updates = model.apply(
                {**variables, COLLECTION: population},
                batch,
                mutable=[COLLECTION, "batch_stats"],
                **apply_kwargs,
            )
        return updates[COLLECTION]

    shapes = jax.eval_shape(step, {}, first)
    if not shapes:
        raise ValueError(
            "no bnjax.BatchNorm layer ran in training mode: the model has none, or it ran in "
            "evaluation mode (pass e.g. train=True to put it in training mode)"
        )
    step = jax.jit(step)
    population = step(_fresh_statistics(shapes), first)
    for batch in batches:
        population = step(population, batch)

    batch_stats = traverse_util.flatten_dict(dict(variables.get("batch_stats", {})))
    for path, value in traverse_util.flatten_dict(population).items():
        if path[-1] in ("mean", "var") or path in batch_stats:  # count: momentum=None layers
            batch_stats[path] = value
    return {**variables, "batch_stats": traverse_util.unflatten_dict(batch_stats)}
