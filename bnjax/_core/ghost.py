"""Ghost batch normalization (Hoffer et al., 2017): statistics per virtual batch.

The batch axis is split into groups of ``size`` consecutive examples; each
group is normalized with its own statistics by the same transform as
``batch_norm`` (the group axis is simply kept, like a feature axis), and the
running statistics receive the average of the groups' statistics.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import core as jax_core

from .options import Options
from .stats import Moments, Reduction, unbiased_variance
from .transform import normalize_train
from .validate import Layout


def _split_axis(shape: Tuple[int, ...], axis: int, groups: int) -> Tuple[int, ...]:
    """``shape`` with ``axis`` split into (groups, shape[axis] // groups); 1 stays (1, 1)."""
    size = shape[axis]
    split = (groups, size // groups) if size != 1 else (1, 1)
    return shape[:axis] + split + shape[axis + 1 :]


def check_virtual_batch_size(size: Optional[int], x: jax.Array, layout: Layout) -> None:
    """In training: ``size`` (already a positive int, see ``Options``) divides the batch axis."""
    if size is None:
        return
    if not layout.reduce_axes:
        raise ValueError(f"virtual_batch_size needs a batch axis; x has shape {x.shape}")
    batch = x.shape[layout.reduce_axes[0]]
    try:
        remainder = batch % size
        divides = remainder == 0  # with a symbolic batch (jax.export), may not be decidable
    except jax_core.InconclusiveDimensionOperation:
        divides = False
    if not isinstance(batch, int) and not divides:
        raise ValueError(
            f"virtual_batch_size={size} must divide the batch axis {layout.reduce_axes[0]} "
            f"of x, whose size {batch} is symbolic and not known to be a multiple of {size}; "
            f"export with a batch size declared as one, e.g. "
            f'jax.export.symbolic_shape("{size}*k, ...")'
        )
    if not divides:
        raise ValueError(
            f"virtual_batch_size={size} must divide the batch axis {layout.reduce_axes[0]} "
            f"of x (size {batch}, x.shape={x.shape})"
        )


def normalize_virtual_batches(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    mask: Optional[jax.Array],
    hint: Optional[jax.Array],
    layout: Layout,
    options: Options,
) -> Tuple[jax.Array, Moments]:
    """Normalizes each group of ``size`` examples with its own statistics.

    Args:
      x: the input.
      scale: γ, broadcastable to x, in the accumulation dtype.
      bias: β, broadcastable to x, in the accumulation dtype.
      mask: optional bool mask of x's rank.
      hint: optional per-feature value expected near each group's mean (the
        running mean), broadcastable to x; see ``transform.normalize_train``.
      layout: x's axes (the batch axis is ``layout.reduce_axes[0]``).
      options: the checked ``Options``: ``virtual_batch_size`` examples per
        virtual batch, ``epsilon``, and ``unbiased`` (whether the variance for
        the running statistics gets each group's m/(m−1) correction).

    Returns:
      ``(y, moments)``: the output, and the equally weighted average over
      the groups of their means (groups with a valid element) and variances
      (groups with a usable variance: with ``unbiased``, two or more valid
      elements, each corrected by its own m/(m−1)); ``count`` is the total
      number of valid elements. A feature with no such group gets NaN, which
      leaves its running statistics unchanged.
    """
    batch_axis = layout.reduce_axes[0]
    size, unbiased = options.virtual_batch_size, options.unbiased
    if size is None:
        raise ValueError("normalize_virtual_batches needs options.virtual_batch_size")
    groups = x.shape[batch_axis] // int(size)

    def split(a):
        if a is None or a.ndim == 0:
            return a
        return a.reshape(_split_axis(a.shape, batch_axis, groups))

    reduce_axes = tuple(a + (a > batch_axis) for a in layout.reduce_axes if a != batch_axis)
    reduce_axes = tuple(sorted(reduce_axes + (batch_axis + 1,)))
    reduction = Reduction(reduce_axes)
    y, moments = normalize_train(
        split(x), split(scale), split(bias), split(mask), split(hint), reduction, options.epsilon
    )
    count, mean, var = (
        jnp.broadcast_to(m, moments.mean.shape) for m in (moments.count, moments.mean, moments.var)
    )
    # A group enters the mean when it has a valid element, and the variance when it
    # has a usable one: with ``unbiased``, a group of a single valid element has no
    # unbiased variance and contributes its mean only.
    has_mean = count > 0
    has_var = count > 1 if unbiased else has_mean
    if unbiased:
        var = unbiased_variance(var, count)

    def average(values, valid):
        groups = jnp.sum(valid, axis=batch_axis, keepdims=True, dtype=count.dtype)
        weights = jnp.where(valid, 1 / jnp.maximum(groups, 1), jnp.zeros((), count.dtype))
        total = jnp.sum(jnp.where(valid, values, jnp.zeros((), values.dtype)) * weights, batch_axis)
        # A feature without any usable group gets NaN: the running update then keeps it.
        return jnp.where(jnp.any(valid, axis=batch_axis), total, jnp.nan)

    merged_mean = average(mean, has_mean)
    merged = Moments(
        jnp.sum(count, axis=batch_axis), merged_mean, average(var, has_var), merged_mean,
        jnp.zeros_like(merged_mean),
    )  # fmt: skip
    return y.reshape(x.shape), merged
