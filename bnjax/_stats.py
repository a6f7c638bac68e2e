"""Batch moments: exact at large offsets, float32 sums, one collective.

E[x²] − E[x]² cancels catastrophically when |mean| ≫ std. The variance uses
the shifted one-pass method (Chan, Golub & LeVeque, 1983): a per-feature shift
K taken from the data is subtracted before summing Σ(x−K) and Σ(x−K)², two
independent reductions over x (fused into one kernel where the compiler fuses
sibling reductions, as XLA:GPU does). The mean K + Σ(x−K)/m is then within
half a float32 ulp; a plain Σx/m errs by several ulps at |mean|/std = 1e4,
which is why the classic two-pass method is not used even on CPU, where it
would be a little faster. Across devices each device computes its own
(count, mean, M2) and the triples are combined with Chan's formula after a
single all-reduce that gathers them (see ``gather_by_sum``).
"""

from typing import NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


class Moments(NamedTuple):
    """Per-feature statistics, shaped to broadcast against ``x`` (keepdims).

    Attributes:
      count: number of elements that entered the statistics (after masking,
        across devices), in the accumulation dtype.
      mean: batch mean.
      var: biased batch variance σ²_B (divided by ``count``).

    """

    count: jax.Array
    mean: jax.Array
    var: jax.Array


def accumulation_dtype(dtype) -> jnp.dtype:
    """float64 for float64 input, float32 for everything narrower."""
    return jnp.dtype(jnp.float64) if jnp.dtype(dtype) == jnp.float64 else jnp.dtype(jnp.float32)


def safe_count(count: jax.Array) -> jax.Array:
    """The count with empty batches mapped to 1, so divisions stay finite."""
    return jnp.maximum(count, jnp.ones_like(count))


def masked_sum(values: jax.Array, mask: Optional[jax.Array], axes: Tuple[int, ...]) -> jax.Array:
    """Σ over ``axes`` (keepdims) of ``values`` where ``mask`` is True."""
    if mask is not None:
        values = jnp.where(mask, values, jnp.zeros((), values.dtype))
    return jnp.sum(values, axis=axes, keepdims=True)


def element_count(
    x_shape: Tuple[int, ...], mask: Optional[jax.Array], reduce_axes: Tuple[int, ...], dtype
) -> jax.Array:
    """Number of valid elements per feature on this device (keepdims)."""
    sizes = [x_shape[a] for a in reduce_axes]
    if mask is None:
        return jnp.asarray(float(np.prod(sizes, dtype=np.int64)), dtype)
    # A mask of size 1 along a reduced axis counts once for every index of x there.
    repeat = np.prod([x_shape[a] for a in reduce_axes if mask.shape[a] == 1], dtype=np.int64)
    count = jnp.sum(mask, axis=reduce_axes, keepdims=True, dtype=dtype)
    return count * jnp.asarray(float(repeat), dtype)


def _masked_mean(x: jax.Array, mask: jax.Array, reduce_axes: Tuple[int, ...]):
    """Plain masked mean and count per feature (keepdims); mean 0 where count is 0."""
    count = element_count(x.shape, mask, reduce_axes, x.dtype)
    return masked_sum(x, mask, reduce_axes) / safe_count(count), count


def _take(x: jax.Array, index) -> jax.Array:
    """``x[index]`` for static slices, also when x is sharded with explicit mesh axes.

    Explicit sharding (``jax.sharding.AxisType.Explicit``) has no rule for a
    slice of size 1 along a sharded axis; the slice is then taken with the
    compiler choosing the communication (``auto_axes``) and comes back
    replicated.
    """
    spec = getattr(getattr(jax.typeof(x), "sharding", None), "spec", None)
    if spec is None or all(part is None for part in spec):
        return x[index]
    replicated = jax.sharding.PartitionSpec(*([None] * x.ndim))
    return jax.sharding.auto_axes(lambda x: x[index], out_sharding=replicated)(x)


def _shift(
    x: jax.Array, mask: Optional[jax.Array], reduce_axes: Tuple[int, ...], dtype
) -> jax.Array:
    """A per-feature value close to the data, so that x − K is of the order of std.

    Without a mask: x's first element per feature. With a mask: the mean of
    the valid elements of the first slice along the first reduced axis; for a
    feature with none there, the plain masked mean of the whole batch (an
    extra pass, taken only when needed). Slices are taken before converting
    to ``dtype``, so that the conversion of the whole of x is not shared.
    """
    if mask is None:
        first_element = tuple(
            slice(0, 1) if a in reduce_axes else slice(None) for a in range(x.ndim)
        )
        return lax.stop_gradient(_take(x, first_element).astype(dtype))
    first_slice = tuple(slice(0, 1) if a == reduce_axes[0] else slice(None) for a in range(x.ndim))
    x0 = _take(x, first_slice).astype(dtype)
    m0 = _take(mask, first_slice)
    shift, count = _masked_mean(x0, m0, reduce_axes)
    shift = lax.cond(
        jnp.all(count > 0),
        lambda: shift,
        lambda: jnp.where(count > 0, shift, _masked_mean(x.astype(dtype), mask, reduce_axes)[0]),
    )
    return lax.stop_gradient(shift)


def local_moments(x: jax.Array, mask: Optional[jax.Array], reduce_axes: Tuple[int, ...]) -> Moments:
    """Moments of the elements of ``x`` on this device, from Σ(x−K) and Σ(x−K)².

    Returns ``Moments`` whose ``var`` field holds M2 = Σ(x−mean)² (not yet
    divided), which is what Chan's combination needs.
    """
    acc = accumulation_dtype(x.dtype)
    shift = _shift(x, mask, reduce_axes, acc)
    # The barrier keeps the slice that gave the shift from becoming one more
    # consumer of x's conversion, which XLA:CPU would then write to memory.
    xf = lax.optimization_barrier(x).astype(acc)
    # Two copies of the shift that XLA cannot merge: each reduction then reads x
    # itself and XLA:CPU runs the two side by side, instead of writing one x − K
    # to memory and reading it twice (it does not fuse sibling reductions).
    s1 = masked_sum(xf - shift, mask, reduce_axes)
    centered = xf - lax.optimization_barrier(shift)
    s2 = masked_sum(centered * centered, mask, reduce_axes)
    count = jnp.broadcast_to(element_count(x.shape, mask, reduce_axes, xf.dtype), s1.shape)
    mean_offset = s1 / safe_count(count)
    m2 = jnp.maximum(s2 - s1 * mean_offset, jnp.zeros((), xf.dtype))
    return Moments(count, shift + mean_offset, m2)


def combine_moments(gathered: Moments) -> Moments:
    """Chan's parallel combination over the leading axis of stacked moments."""
    count = jnp.sum(gathered.count, axis=0)
    weights = gathered.count / safe_count(count)
    mean = jnp.sum(weights * gathered.mean, axis=0)
    spread = gathered.count * jnp.square(gathered.mean - mean)
    m2 = jnp.sum(gathered.var + spread, axis=0)
    return Moments(count, mean, m2)


def gather_by_sum(values: jax.Array, axis_name, axis_index_groups=None) -> jax.Array:
    """Stacks ``values`` from every member of ``axis_name`` (or of its group), via ``psum``.

    Each member writes its values into its own slot of a zero array and one
    all-reduce sums them. Unlike ``lax.all_gather``, the result is known to be
    the same on every member (``shard_map`` can return it replicated), and it
    works alike under ``pmap``, ``shard_map`` and ``vmap``. The values are
    per-feature statistics, so the extra bytes are negligible.

    Args:
      values: this member's array.
      axis_name: the mapped axis.
      axis_index_groups: optional groups of indices along ``axis_name``.

    Returns:
      An array of shape ``(group size,) + values.shape``.
    """
    index = lax.axis_index(axis_name)
    if axis_index_groups is None:
        size = lax.axis_size(axis_name)
    else:
        size = len(axis_index_groups[0])
        position = np.zeros(sum(len(g) for g in axis_index_groups), np.int32)
        for group in axis_index_groups:
            position[np.asarray(group)] = np.arange(len(group))
        index = jnp.asarray(position)[index]
    slots = jnp.arange(size) == index
    slots = slots.reshape((size,) + (1,) * values.ndim)
    placed = jnp.where(slots, values[None], jnp.zeros((), values.dtype))
    return lax.psum(placed, axis_name, axis_index_groups=axis_index_groups)


def batch_moments(
    x: jax.Array,
    mask: Optional[jax.Array],
    reduce_axes: Tuple[int, ...],
    axis_name=None,
    axis_index_groups=None,
) -> Moments:
    """Count, mean and biased variance per feature over the reduced axes.

    Args:
      x: input of any floating dtype; sums accumulate in float32 (float64 for
        float64 input).
      mask: optional bool array of ``x``'s rank, broadcastable to ``x``; only
        True positions enter the statistics.
      reduce_axes: the batch (and spatial) axes to reduce over.
      axis_name: optional mapped axis (pmap/shard_map/vmap) to reduce across.
      axis_index_groups: optional groups of devices along ``axis_name``.

    Returns:
      ``Moments`` with keepdims shapes; ``var`` is the biased variance.

    """
    local = local_moments(x, mask, reduce_axes)
    if axis_name is None:
        total = local
    else:
        packed = jnp.stack(local)
        gathered = gather_by_sum(packed, axis_name, axis_index_groups)
        total = combine_moments(Moments(*jnp.moveaxis(gathered, 1, 0)))
    var = total.var / safe_count(total.count)
    return Moments(total.count, total.mean, var)


def global_sum(values: jax.Array, axis_name=None, axis_index_groups=None) -> jax.Array:
    """Sums across ``axis_name`` (one all-reduce) when given; identity otherwise."""
    if axis_name is None:
        return values
    return lax.psum(values, axis_name, axis_index_groups=axis_index_groups)
