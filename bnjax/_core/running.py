"""Running (population) statistics: the update of ``BatchNormState``."""

from typing import Optional

import jax.numpy as jnp
from jax import lax

from .containers import BatchNormState
from .stats import Moments, accumulation_dtype


def update_running_stats(
    state: BatchNormState,
    batch: Moments,
    feature_shape,
    momentum: Optional[float],
) -> BatchNormState:
    """Folds one batch's statistics into the running statistics, feature by feature.

    ``momentum`` follows Flax: ``new = momentum·old + (1 − momentum)·batch``.
    ``momentum=None`` keeps the exact cumulative average over all batches
    (``new = (count·old + batch)/(count + 1)``). The batch's variance enters
    as it comes: ``stats.population_estimate`` (and the ghost-batch step)
    apply Bessel's correction where ``unbiased`` asks for it.

    A feature whose batch statistics cannot be used (no valid element, a NaN
    or Inf in its values, an unbiased variance of a single element) keeps its
    own running mean and variance; the other features update. A scalar
    ``count`` (as ``init`` makes it), the number of batches folded in,
    advances when at least one feature updated; with ``momentum=None`` the
    weight 1/(count + 1) is then shared, so a feature that missed some batches
    averages the ones it saw with slightly unequal weights. A ``count`` with
    the feature shape counts per feature, and the average is exact for every
    feature (the population-statistics tools use that).

    The new statistics carry no gradient (``stop_gradient``, as in Flax):
    they are state, not a function to differentiate.

    Args:
      state: the running statistics before this batch (float32 or wider).
      batch: the batch's estimate of the population ``Moments`` (keepdims
        shapes); a NaN mean or variance leaves its feature unchanged.
      feature_shape: the shape of ``state.mean``.
      momentum: float in [0, 1] or None.

    Returns:
      The new ``BatchNormState``, in the dtypes of ``state`` (the mean becomes
      complex for complex input, as in Flax).

    """
    dtype = accumulation_dtype(state.var.dtype)
    count = jnp.broadcast_to(batch.count, batch.var.shape).reshape(feature_shape)
    mean = lax.stop_gradient(batch.mean.reshape(feature_shape))
    var = lax.stop_gradient(batch.var.reshape(feature_shape))
    mean_dtype = state.mean.dtype
    if jnp.iscomplexobj(mean) and not jnp.iscomplexobj(state.mean):  # complex x: complex mean
        mean_dtype = (lax.complex(state.mean, state.mean)).dtype
    mean, var = mean.astype(mean_dtype), var.astype(dtype)
    if momentum is None:
        seen = state.count.astype(dtype)
        keep, weight = seen / (seen + 1), 1 / (seen + 1)
    else:
        keep, weight = jnp.asarray(momentum, dtype), jnp.asarray(1.0 - momentum, dtype)
    new_mean = (
        keep.astype(mean_dtype) * state.mean.astype(mean_dtype) + weight.astype(mean_dtype) * mean
    )
    new_var = keep * state.var.astype(dtype) + weight * var
    ok = jnp.isfinite(mean) & jnp.isfinite(var) & (count > 0)
    return BatchNormState(
        mean=jnp.where(ok, new_mean, state.mean.astype(mean_dtype)),
        var=jnp.where(ok, new_var, state.var).astype(state.var.dtype),
        count=jnp.where(
            ok if state.count.ndim else jnp.any(ok), state.count + 1, state.count
        ).astype(state.count.dtype),
    )
