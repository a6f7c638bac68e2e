"""Containers for batch-norm parameters and running statistics."""

from typing import NamedTuple, Optional

import jax


class BatchNormParams(NamedTuple):
    """Learned per-feature parameters (γ, β in Ioffe & Szegedy, 2015).

    Attributes:
      scale: γ, shaped like the feature axes of the input, or ``None`` when the
        layer has no scale (γ = 1).
      bias: β, shaped like the feature axes of the input, or ``None`` when the
        layer has no bias (β = 0).

    """

    scale: Optional[jax.Array]
    bias: Optional[jax.Array]


class BatchNormState(NamedTuple):
    """Running (population) statistics, returned updated by training steps.

    Attributes:
      mean: running mean per feature, initially zeros.
      var: running variance per feature, initially ones.
      count: int32 (or wider), one per feature as ``init`` makes it: the
        number of training batches folded into each feature's statistics (a
        feature that missed a batch, for NaN/Inf values or a mask that left it
        empty, did not count it), used by ``momentum=None``, the exact
        cumulative average. A scalar count (older states) is accepted: it
        counts the batches that updated any feature. A count of 0 with
        statistics other than ``init``'s (mean 0, variance 1) means
        statistics loaded without their count: they count as one batch.

    """

    mean: jax.Array
    var: jax.Array
    # a field named count shadows tuple.count (the name is public)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
