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
      count: int32 scalar, the number of training batches folded into the
        statistics so far (used by ``momentum=None``, the exact cumulative
        average).

    """

    mean: jax.Array
    var: jax.Array
    # a field named count shadows tuple.count (the name is public)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
