"""Running (population) statistics: the update of ``BatchNormState``."""

from typing import Optional

import jax.numpy as jnp

from ._stats import Moments, accumulation_dtype
from ._types import BatchNormState


def update_running_stats(
    state: BatchNormState,
    batch: Moments,
    feature_shape,
    momentum: Optional[float],
    unbiased: bool,
) -> BatchNormState:
    """Folds one batch's statistics into the running statistics.

    ``momentum`` follows Flax: ``new = momentum·old + (1 − momentum)·batch``.
    ``momentum=None`` keeps the exact cumulative average over all batches
    (``new = (count·old + batch)/(count + 1)``). With ``unbiased=True`` the
    batch variance enters as m/(m−1)·σ²_B, m the number of elements that
    entered the statistics.

    A batch with a feature whose statistics are not finite (NaN/Inf in x, an
    unbiased variance of a single element) or that has no valid element
    leaves the whole state as it was: every feature and ``count``.

    Args:
      state: the running statistics before this batch.
      batch: the batch ``Moments`` (keepdims shapes).
      feature_shape: the shape of ``state.mean``.
      momentum: float in [0, 1] or None.
      unbiased: whether to apply Bessel's correction to the batch variance.

    Returns:
      The new ``BatchNormState``.

    """
    # At least float32 arithmetic whatever the state's dtype: in bfloat16, 0.99·old +
    # 0.01·batch rounds small steps away. The result is stored in the state's dtype.
    dtype = accumulation_dtype(state.mean.dtype)
    count = jnp.broadcast_to(batch.count, batch.mean.shape).reshape(feature_shape)
    mean = batch.mean.reshape(feature_shape)
    var = batch.var.reshape(feature_shape)
    if unbiased:
        var = var * (count / (count - 1))
    mean, var = mean.astype(dtype), var.astype(dtype)
    if momentum is None:
        seen = state.count.astype(dtype)
        keep, weight = seen / (seen + 1), 1 / (seen + 1)
    else:
        keep, weight = jnp.asarray(momentum, dtype), jnp.asarray(1.0 - momentum, dtype)
    new_mean = (keep * state.mean.astype(dtype) + weight * mean).astype(state.mean.dtype)
    new_var = (keep * state.var.astype(dtype) + weight * var).astype(state.var.dtype)
    ok = jnp.all(jnp.isfinite(mean)) & jnp.all(jnp.isfinite(var)) & jnp.all(count > 0)
    return BatchNormState(
        mean=jnp.where(ok, new_mean, state.mean),
        var=jnp.where(ok, new_var, state.var),
        count=jnp.where(ok, state.count + 1, state.count).astype(state.count.dtype),
    )
