"""Running (population) statistics: the update of ``BatchNormState``."""

import jax
import jax.numpy as jnp
from jax import lax

from .containers import BatchNormState
from .stats import Moments, accumulation_dtype


def update_running_stats(
    state: BatchNormState,
    batch: Moments,
    feature_shape,
    momentum,
) -> BatchNormState:
    """Folds one batch's statistics into the running statistics, feature by feature.

    ``momentum`` follows Flax: ``new = momentum·old + (1 − momentum)·batch``
    (a float, or a traced JAX scalar). ``momentum=None`` keeps the exact
    cumulative average over the batches each feature saw
    (``new = (count·old + batch)/(count + 1)``). The batch's variance enters
    as it comes: ``stats.population_estimate`` (and the ghost-batch step)
    apply Bessel's correction where ``unbiased`` asks for it.

    A feature whose batch statistics cannot be used (no valid element, a NaN
    or Inf in its values, an unbiased variance of a single element) keeps its
    own running mean, variance and count; the other features update. With
    the per-feature ``count`` that ``init`` makes, the average is exact for
    every feature, whichever batches it missed. A scalar ``count`` (a
    hand-built state or an older checkpoint) advances when at least one
    feature updated; with ``momentum=None`` its weight 1/(count + 1) is then
    shared, so a feature that missed some batches averages the ones it saw
    with unequal weights.

    A count of 0 means that no batch was folded in, and the statistics are
    ``init``'s (mean 0, variance 1). Statistics that differ from those while
    their count is 0 came from elsewhere without their count (a checkpoint of
    a layer that did not keep one, such as ``flax.linen.BatchNorm``, or
    ``nnx.update`` with its state): the exact average counts them as one
    batch, instead of replacing them with the next batch. Set the count to
    say otherwise.

    The new statistics carry no gradient (``stop_gradient``): they are state
    that the next call reads, not part of this call's output. (Flax does not
    stop it; its running mean has the gradient (1 − momentum)/m per element.)

    Args:
      state: the running statistics before this batch (float32 or wider).
      batch: the batch's estimate of the population ``Moments`` (keepdims
        shapes); a NaN mean or variance leaves its feature unchanged.
      feature_shape: the shape of ``state.mean``.
      momentum: a real scalar in [0, 1], or None.

    Returns:
      The new ``BatchNormState``, in the dtypes and shapes of ``state`` (the
      mean becomes complex for complex input, as in Flax).

    """
    dtype = accumulation_dtype(state.var.dtype)
    count = jnp.broadcast_to(batch.count, batch.var.shape).reshape(feature_shape)
    mean = lax.stop_gradient(batch.mean.reshape(feature_shape))
    var = lax.stop_gradient(batch.var.reshape(feature_shape))
    mean_dtype = state.mean.dtype
    if jnp.iscomplexobj(mean) and not jnp.iscomplexobj(state.mean):  # complex x: complex mean
        mean_dtype = (lax.complex(state.mean, state.mean)).dtype
    mean, var = mean.astype(mean_dtype), var.astype(dtype)
    ok = jnp.isfinite(mean) & jnp.isfinite(var) & (count > 0)
    seen = loaded_count(state, feature_shape)
    if momentum is None:
        seen_real = seen.astype(dtype)
        keep, weight = seen_real / (seen_real + 1), 1 / (seen_real + 1)
    else:
        keep = jnp.asarray(momentum, dtype)
        # 1 − momentum before rounding where momentum is a Python float (0.01, not 1 − f32(0.99))
        weight = jnp.asarray(1.0 - momentum, dtype) if isinstance(momentum, float) else 1 - keep
    new_mean = (
        keep.astype(mean_dtype) * state.mean.astype(mean_dtype) + weight.astype(mean_dtype) * mean
    )
    new_var = keep * state.var.astype(dtype) + weight * var
    if state.count.ndim:  # one count per feature: each counts its own batches
        new_count = jnp.where(ok, seen + 1, state.count)
    else:
        new_count = jnp.where(jnp.any(ok), state.count + 1, state.count)
    return BatchNormState(
        mean=jnp.where(ok, new_mean, state.mean.astype(mean_dtype)),
        var=jnp.where(ok, new_var, state.var).astype(state.var.dtype),
        count=new_count.astype(state.count.dtype),
    )


def loaded_count(state: BatchNormState, feature_shape) -> jax.Array:
    """The number of batches each feature's statistics stand for (feature-shaped).

    ``state.count``, except where it is 0 while the statistics are not
    ``init``'s (mean 0, variance 1): statistics loaded without their count
    count as one batch.
    """
    count = jnp.broadcast_to(state.count, feature_shape)
    loaded = (state.mean != 0) | (state.var != 1)
    return jnp.where((count == 0) & loaded, jnp.ones((), count.dtype), count)
