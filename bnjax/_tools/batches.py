"""What the population-statistics tools of every front end share (no Flax, no Equinox).

Iterating over the user's batches (behind an optional progress bar) and the
check that every training call of every layer entered its statistics.
"""

from typing import Iterable, Iterator, Mapping, Sized

import numpy as np


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
        calls, count = int(calls), np.asarray(count)
        if np.any(count != calls):
            missing = calls - int(np.min(count))
            raise ValueError(
                f"recompute_population_stats: the BatchNorm layer {name!r} got no usable "
                f"statistics from {missing} of its {calls} training call(s): a batch of one "
                "element has no unbiased variance, and a batch with no valid element (mask) or "
                "with NaN/Inf values has no statistics. Population statistics average every "
                "batch: drop such batches (e.g. a last batch of one example). The variables "
                "were left unchanged."
            )
