"""Batch moments: exact for any input, float32 sums, one collective.

E[x²] − E[x]² cancels catastrophically when |mean| ≫ std. The variance uses
the shifted method (Chan, Golub & LeVeque, 1983): with a per-feature shift K
taken from the data, Σ(x−K) and Σ(x−K)² are two independent reductions over
x, and M2 = Σ(x−K)² − (Σ(x−K))²/m. Its cancellation costs a relative error
of about eps·q, where q = Σ(x−K)²/M2 = 1 + ((K − μ)/σ)², so the method is
exact exactly when K is within a few σ of the mean, whatever the data.

How the sums are taken is chosen when the program is lowered
(``lax.platform_dependent``), because the three compilers reward different
things; every method is exact for any input short of the one limit stated
(the median's):

- **XLA:CPU: checked passes** (``"checked"``). K is the mean of the first
  slice(s) along the batch axis, taken over at least ``SHIFT_SAMPLE`` elements
  per feature (one image of a conv activation, eight rows of a dense one), so
  an outlier there moves K by its size divided by the sample. q is known
  after the pass; where q > ``MAX_CANCELLATION`` for some feature (an outlier
  among the first rows, a heavy tail, padding first under a mask), a second
  pass repeats the sums around the first pass's mean, which is then within a
  fraction of σ of μ (``lax.cond``; the members of a ``vmap`` with an axis
  name share one predicate and one second pass, see ``_members_at_once``).
  The relative error of the variance is then at most about
  ``MAX_CANCELLATION``·eps for any input. XLA:CPU does not fuse sibling
  reductions, so optimization barriers give each sum its own read of x.
- **XLA:GPU: one fused pass around a sample median** (``"median"``). A
  conditional there is counted as a second pass and may cost a host
  synchronization per layer. K is the median of nine elements spread evenly
  over the batch (Paeth's min/max network, one small kernel), and the two
  sums are sibling reductions that XLA:GPU fuses into one kernel reading x
  once: the forward moves 3|x|. The median of a distribution is within one σ
  of its mean, and a sample median is moved by no outlier unless five of the
  nine sampled elements are outliers, so q stays near 1 on every input short
  of one built against these nine positions. Under a mask that leaves none of
  them valid, K is the mean of the first slices' valid elements.
- **XLA:TPU: one checked pass around the running mean** (``"running"``). The
  running mean, given as ``hint``, is known before x is: XLA:TPU fuses the
  sums around it into the kernel that produces x (a convolution's output), as
  it fuses Flax's plain Σx and Σx², so the statistics cost no read of x of
  their own. q is known after the pass; where it exceeds ``MAX_CANCELLATION``
  (the first steps on data far from 0, a shift in the data, a corrupt state),
  a second pass around the first pass's mean runs (``lax.cond``: XLA:TPU runs
  conditionals on the device, without a host synchronization; a compiled
  program's figures count the branch as if it ran). Without a running mean
  (``hint`` None), one variadic reduction (``"pairwise"``) whose combination
  is Chan's pairwise update of (count, mean, M2), the mean carried as an
  unevaluated sum of two floats (TwoSum): exact for any data in any order,
  with no shift, but read separately from x's producer and, in a training
  step, 1.1–1.5× Flax's bytes. (XLA:GPU fuses nothing into a variadic
  reduction, and a conditional there may cost a host synchronization: hence
  the median there.)

The mean is returned twice: rounded (``mean``), and as the shift with the
exact offset μ − K (``shift``, ``offset``). The transform normalizes relative
to the shift, y = (x − K)·a + (β − (μ − K)·a): x − K is exact when K is near
x, so nothing is lost when μ is not representable (offsets of 1e5–1e6 std in
float32). Across devices each device computes its own (count, K, μ − K, M2),
one collective gathers them (see ``gather_by_sum``), and Chan's formula
combines them relative to one reference shift, so cross-device statistics are
as exact as local ones. Complex input is reduced as its real and imaginary
parts (mean complex, variance E|x − μ|² real).
"""

import functools
import math
from typing import Hashable, NamedTuple, Optional, Tuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

# The shift is the mean of at least this many elements per feature (whole slices of
# the batch axis): enough that one outlier or a heavy tail moves it little.
SHIFT_SAMPLE = 8
# Largest accepted q = Σ(x−K)²/M2, the cancellation factor of the shifted variance;
# above it the sums are taken again around the first pass's mean.
MAX_CANCELLATION = 8.0


class Moments(NamedTuple):
    """Per-feature batch statistics, shaped to broadcast against ``x`` (keepdims).

    Attributes:
      count: number of elements that entered the statistics (after masking,
        across devices), in the accumulation dtype.
      mean: batch mean μ_B (rounded to the accumulation dtype).
      var: biased batch variance σ²_B (divided by ``count``), real.
      shift: the per-feature value K that this device's sums were centred on.
      offset: μ_B − K, computed without rounding μ_B first.

    """

    # a field named count shadows tuple.count (the name is public)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    mean: jax.Array
    var: jax.Array
    shift: jax.Array
    offset: jax.Array


class Reduction(NamedTuple):
    """What the statistics reduce over: static and hashable, one object through the path.

    Built once per call from the options and x's layout (``functional.normalize``)
    and handed down unchanged to the statistics, the transform and its
    derivative rule (a ``nondiff_argnums`` / ``static_argnums`` argument).
    Epsilon travels beside it, not in it: it may be a traced scalar (a
    schedule inside ``jit``), which a static plan cannot hold.

    Attributes:
      axes: the axes of x the statistics reduce over (batch and spatial).
      axis_name: a mapped axis (or a tuple of them) to reduce across, or None.
      groups: device groups along ``axis_name`` (a tuple of tuples of ints), or None.
      method: which local statistics (see ``local_moments``); None chooses by
        the platform the program is lowered for.

    Examples:
      >>> from bnjax._core.stats import Reduction
      >>> Reduction((0, 1, 2), axis_name="batch")
      Reduction(axes=(0, 1, 2), axis_name='batch', groups=None, method=None)
    """

    axes: Tuple[int, ...]
    axis_name: Optional[Hashable] = None
    groups: Optional[Tuple[Tuple[int, ...], ...]] = None
    method: Optional[str] = None


class LocalMoments(NamedTuple):
    """One device's statistics, as Chan's combination needs them (keepdims).

    Attributes:
      count: number of valid elements on this device.
      shift: the value K the sums were centred on.
      offset: the device's mean minus K.
      m2: Σ(x − mean)² over the valid elements (not divided).

    """

    # a field named count shadows tuple.count (the name is public)
    count: jax.Array  # pyright: ignore[reportIncompatibleMethodOverride]
    shift: jax.Array
    offset: jax.Array
    m2: jax.Array


def accumulation_dtype(dtype) -> jnp.dtype:
    """float64 for float64/complex128 input, float32 for everything narrower.

    Always real: the dtype of the sums, the variance and the parameters.
    """
    wide = jnp.dtype(dtype) in (jnp.dtype(jnp.float64), jnp.dtype(jnp.complex128))
    return jnp.dtype(jnp.float64) if wide else jnp.dtype(jnp.float32)


def shift_dtype(dtype) -> jnp.dtype:
    """The dtype of the mean and the shift: the accumulation dtype, complex for complex x."""
    acc = accumulation_dtype(dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        return jnp.dtype(jnp.complex128) if acc == jnp.float64 else jnp.dtype(jnp.complex64)
    return acc


def unbiased_variance(var: jax.Array, count: jax.Array) -> jax.Array:
    """Bessel's correction m/(m−1)·σ²; NaN where m <= 1 (a single element has none)."""
    usable = count > 1
    return jnp.where(usable, var * (count / jnp.where(usable, count - 1, 1)), jnp.nan)


def population_estimate(moments: Moments, unbiased: bool) -> Moments:
    """The batch's estimate of the population statistics, for the running update.

    The mean, and the variance: biased σ²_B, or with ``unbiased`` m/(m−1)·σ²_B
    (NaN where m <= 1, which the running update then skips).
    """
    if not unbiased:
        return moments
    return moments._replace(var=unbiased_variance(moments.var, moments.count))


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
    # math.prod keeps symbolic sizes (jax.export) symbolic; jnp.asarray takes both.
    if mask is None:
        return _as_array(math.prod(x_shape[a] for a in reduce_axes), dtype)
    # A mask of size 1 along a reduced axis counts once for every index of x there.
    repeat = math.prod(x_shape[a] for a in reduce_axes if mask.shape[a] == 1)
    count = jnp.sum(mask, axis=reduce_axes, keepdims=True, dtype=dtype)
    return count * _as_array(repeat, dtype)


def _as_array(size, dtype) -> jax.Array:
    """A (possibly symbolic) number of elements as a scalar of ``dtype``."""
    if isinstance(size, int):
        return jnp.asarray(float(size), dtype)
    return jnp.asarray(size).astype(dtype)


def _take(x: jax.Array, index) -> jax.Array:
    """``x[index]`` for static slices, also when x is sharded with explicit mesh axes."""
    return _picked(lambda x: x[index], x)


def _picked(pick, x: jax.Array) -> jax.Array:
    """``pick(x)``, a few slices of x, also when x is sharded with explicit mesh axes.

    Explicit sharding (``jax.sharding.AxisType.Explicit``) has no rule for a
    slice of size 1 along a sharded axis; the slices are then taken with the
    compiler choosing the communication (``auto_axes``) and come back
    replicated.
    """
    spec = jax.typeof(x).sharding.spec
    if all(part is None for part in spec):
        return pick(x)
    replicated = jax.sharding.PartitionSpec()  # of any rank: pick's output may add an axis
    take = jax.sharding.auto_axes(pick, out_sharding=replicated)
    return cast(jax.Array, take(x))  # auto_axes's annotation also allows a decorator


def _shift(
    x: jax.Array, mask: Optional[jax.Array], reduce_axes: Tuple[int, ...], dtype
) -> jax.Array:
    """A per-feature value near the data: the mean of its first slices (``SHIFT_SAMPLE``).

    Takes the first rows along the first reduced axis, as many as make at least
    ``SHIFT_SAMPLE`` elements per feature (or all of them), and returns the mean
    of their valid elements; 0 for a feature with none there (the error bound of
    ``local_moments`` then calls for the second pass). Slices are taken before
    converting to ``dtype``, so that the conversion of the whole of x is not
    shared.
    """
    if not reduce_axes:  # no batch axis: each feature is its own single element
        return lax.stop_gradient(x.astype(dtype))
    lead = reduce_axes[0]
    per_row = math.prod(x.shape[a] for a in reduce_axes[1:])
    if isinstance(per_row, int) and isinstance(x.shape[lead], int):
        rows = min(x.shape[lead], -(-SHIFT_SAMPLE // max(per_row, 1)))
    else:  # symbolic sizes (jax.export): the first row, which always exists
        rows = 1
    first = tuple(slice(0, rows) if a == lead else slice(None) for a in range(x.ndim))
    sample = _take(x, first).astype(dtype)
    sample_mask = None if mask is None else _take(mask, first)
    count = element_count(sample.shape, sample_mask, reduce_axes, dtype)
    # A feature without a valid element there sums to 0 over a count of 0: its shift is 0.
    shift = masked_sum(sample, sample_mask, reduce_axes) / safe_count(count)
    return lax.stop_gradient(shift)


def _centred_sums(
    x: jax.Array,
    mask: Optional[jax.Array],
    reduce_axes: Tuple[int, ...],
    shift: jax.Array,
    count: jax.Array,
    separate: bool = True,
):
    """(μ − K, M2) from Σ(x−K) and Σ(x−K)², and whether their error bound is broken.

    Returns ``(offset, m2, uncertain)``, ``uncertain`` a scalar bool that is
    True when some feature's q = Σ(x−K)²/M2 exceeds ``MAX_CANCELLATION`` or is
    not a number (a non-finite shift or input).

    With ``separate`` (XLA:CPU), each sum reads its own copy of x: two copies of
    x and of the shift that XLA cannot merge, so that each reduction converts x
    in its own fusion and XLA:CPU runs the two side by side, instead of writing
    one converted x (bfloat16 input) or one x − K to memory and reading it
    twice (it does not fuse sibling reductions). The barrier also keeps the
    slice that gave the shift from sharing the conversion. XLA:GPU and XLA:TPU
    fuse the two sums into one read of x without it.
    """
    if separate:
        x1, x2, shift2 = lax.optimization_barrier((x, x, shift))
    else:
        x1, x2, shift2 = x, x, shift
    s1 = masked_sum(x1.astype(shift.dtype) - shift, mask, reduce_axes)
    centered = x2.astype(shift.dtype) - shift2
    s2 = masked_sum(centered * centered, mask, reduce_axes)
    offset = s1 / safe_count(count)
    m2 = jnp.maximum(s2 - s1 * offset, jnp.zeros((), s2.dtype))
    uncertain = jnp.any(~(s2 <= MAX_CANCELLATION * m2))
    return offset, m2, uncertain


def _checked_two_pass(x, mask, reduce_axes, count, hint=None):
    """XLA:CPU's statistics: the sums around the first slices' mean, again where needed.

    Returns ``(shift, offset, m2)``. The second pass around the first pass's
    mean runs only where the first one's error bound is broken (``lax.cond``).
    ``hint`` is not used.
    """
    shift = _shift(x, mask, reduce_axes, count.dtype)
    offset, m2, uncertain = _centred_sums(x, mask, reduce_axes, shift, count)
    return _again_if(uncertain, x, mask, reduce_axes, count, (shift, offset, m2), separate=True)


def _again_if(
    uncertain: jax.Array,
    x: jax.Array,
    mask: Optional[jax.Array],
    reduce_axes: Tuple[int, ...],
    count: jax.Array,
    first: Tuple[jax.Array, jax.Array, jax.Array],
    separate: bool,
):
    """``first`` = (K, μ − K, M2), or where ``uncertain``, the sums again around K + (μ − K).

    The first pass's mean is within a fraction of σ of μ whenever the data's
    deviations are representable at all, so the second pass's q is near 1.
    """
    shift, offset, _ = first

    def again():
        better = lax.stop_gradient(shift + offset)
        return (better,) + _centred_sums(x, mask, reduce_axes, better, count, separate)[:2]

    return lax.cond(uncertain, again, lambda: first)


def _running_pass(x, mask, reduce_axes, count, hint=None):
    """XLA:TPU's statistics: one pass around the running mean, checked, again where needed.

    The shift is ``hint``, the running mean: known before x is, so XLA:TPU
    fuses Σ(x−K) and Σ(x−K)² into the kernel that produces x (a convolution's
    output), as it fuses plain Σx and Σx²; x is not read for the statistics at
    all. The running mean is usually within a σ or two of the batch mean. Where
    it is not (the first steps on offset data, a shift in the data, a
    non-finite running mean), the error bound of ``_centred_sums`` is broken
    and a second pass around the first pass's mean runs (``lax.cond``; XLA:TPU
    runs conditionals on the device, with no host synchronization). A
    non-finite hint counts as 0. Without a hint, the pairwise reduction.

    Returns ``(shift, offset, m2)``.
    """
    if hint is None:
        return _pairwise_pass(x, mask, reduce_axes, count)
    *first, uncertain = running_first_pass(x, mask, reduce_axes, count, hint)
    return _again_if(uncertain, x, mask, reduce_axes, count, tuple(first), separate=False)


def running_first_pass(x, mask, reduce_axes, count, hint):
    """``_running_pass`` without its second pass: ``(shift, offset, m2, uncertain)``.

    What runs when the running mean is near the batch mean (``uncertain`` False);
    the benchmark compiles it alone to report that common path beside the program.
    """
    hint = lax.stop_gradient(hint.astype(count.dtype))
    shift = jnp.where(jnp.isfinite(hint), hint, jnp.zeros((), hint.dtype))  # a corrupt state
    offset, m2, uncertain = _centred_sums(x, mask, reduce_axes, shift, count, separate=False)
    shift = jnp.broadcast_to(shift, offset.shape)  # a hint shared by groups (ghost batches)
    # per device like the sums (shard_map): the second pass's shift is
    shift, offset, m2 = typed_as_barrier((shift, offset, m2))
    return shift, offset, m2, uncertain


# The comparator pairs of Paeth's median-of-9 network (Graphics Gems, 1990).
# fmt: off
_PAETH = ((1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8),
          (0, 3), (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2))
# fmt: on


def _median_of_9(v):
    """The element-wise median of nine arrays: Paeth's network of 19 min/max operations."""
    v = list(v)

    def order(i, j):
        v[i], v[j] = jnp.minimum(v[i], v[j]), jnp.maximum(v[i], v[j])

    for i, j in _PAETH:
        order(i, j)
    return v[4]


def _sample_median(x, mask, reduce_axes, dtype) -> jax.Array:
    """The per-feature median of nine elements spread over the batch (keepdims).

    Nine evenly spaced indices of the first reduced axis, each at the middle
    index of the other reduced axes, taken by one gather: one small kernel
    with the min/max network, and over a sharded batch (``jit`` of sharded
    arrays) one all-reduce of nine values per feature. Masked-out elements
    enter as +∞ and −∞ in turn, so they cancel in the median; ±∞ where the
    sample has no valid element.
    """
    lead = reduce_axes[0]

    def pick(values):
        for axis in reduce_axes[1:]:  # the middle of each spatial axis
            if values.shape[axis] != 1:
                middle = jnp.asarray(values.shape[axis] // 2)
                values = lax.dynamic_slice_in_dim(values, middle, 1, axis)
        size = values.shape[lead]  # symbolic sizes allowed
        if isinstance(size, int) and size == 1:  # a mask that broadcasts along the batch
            return jnp.stack([values] * 9)
        rows = jnp.arange(9) * (jnp.asarray(size) - 1) // 8
        picked = jnp.take(values, rows, axis=lead, mode="clip")
        return jnp.moveaxis(jnp.expand_dims(picked, lead + 1), lead, 0)

    sample = _picked(pick, x).astype(dtype)
    if mask is not None:
        valid = _picked(pick, mask)
        signs = np.where(np.arange(9) % 2, np.inf, -np.inf).reshape((9,) + (1,) * x.ndim)
        sample = jnp.where(valid, sample, jnp.asarray(signs, dtype))
    return _median_of_9(list(sample))


def _median_pass(x, mask, reduce_axes, count, hint=None):
    """XLA:GPU's statistics: one pass, no control flow.

    The shift is the median of nine elements spread over the batch (under a
    mask whose sample has no valid element, the mean of the first slices' valid
    elements); Σ(x−K) and Σ(x−K)² are sibling reductions that
    XLA:GPU fuses into one kernel reading x once. Returns ``(shift, offset, m2)``.
    """
    shift = _sample_median(x, mask, reduce_axes, count.dtype)
    if mask is not None:
        first = _shift(x, mask, reduce_axes, count.dtype)
        shift = jnp.where(jnp.isinf(shift), first, shift)
    # Computed once: a compiler may repeat the sample in each consumer of the shift
    # (XLA:TPU did, each copy counted as a read of x by its cost model).
    shift = lax.optimization_barrier(lax.stop_gradient(shift))
    offset, m2, _ = _centred_sums(x, mask, reduce_axes, shift, count, separate=False)
    return shift, offset, m2


def _two_sum(a: jax.Array, b: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth's TwoSum)."""
    s = a + b
    b_virtual = s - a
    e = (a - (s - b_virtual)) + (b - b_virtual)
    return s, e


def _chan_combine(a, b):
    """Chan's pairwise combination of (count, mean, mean's correction, M2) partials.

    The mean is carried as an unevaluated sum m + c (TwoSum), so μ − m is known
    to about eps² of the mean's size, whatever the offset of the data.
    """
    count_a, mean_a, low_a, m2_a = a
    count_b, mean_b, low_b, m2_b = b
    count = count_a + count_b
    weight = count_b / jnp.maximum(count, jnp.ones((), count.dtype))
    delta = (mean_b - mean_a) + (low_b - low_a)
    mean, error = _two_sum(mean_a, delta * weight)
    m2 = m2_a + m2_b + delta * delta * count_a * weight
    return count, mean, low_a + error, m2


def _pairwise_pass(x, mask, reduce_axes, count, hint=None):
    """XLA:TPU's statistics without a running mean: one variadic reduction, Chan's combination.

    Each element enters as (1, x, 0, 0) (masked out: all 0); the reduction's
    combination is exact for any data and any order and needs no shift, so
    XLA:TPU reads x once for it (it does not fuse it into a producing
    convolution's kernel, as it does Flax's plain sums). Returns
    ``(shift, offset, m2)``: the rounded mean, the rest of the mean, M2.
    """
    values = x.astype(count.dtype)
    ones = jnp.ones_like(values)
    if mask is not None:
        ones = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
        values = values * ones
    zero = jnp.zeros((), values.dtype)
    zeros = jnp.zeros_like(values)
    _, mean, low, m2 = lax.reduce(
        (ones, values, zeros, zeros), (zero, zero, zero, zero), _chan_combine, reduce_axes
    )
    keep = lambda v: jnp.expand_dims(v, reduce_axes)  # noqa: E731
    return lax.stop_gradient(keep(mean)), keep(low), keep(m2)


def local_moments(
    x: jax.Array,
    mask: Optional[jax.Array],
    reduce_axes: Tuple[int, ...],
    method: Optional[str] = None,
    hint: Optional[jax.Array] = None,
) -> LocalMoments:
    """(count, K, μ − K, M2) of the elements of real ``x`` on this device.

    Args:
      x: real input.
      mask: optional bool array broadcastable to ``x``.
      reduce_axes: the axes to reduce over.
      method: ``"checked"`` (XLA:CPU's passes around the first slices' mean),
        ``"median"`` (XLA:GPU's fused pass around a sample median),
        ``"running"`` (XLA:TPU's checked pass around ``hint``) or
        ``"pairwise"`` (the variadic reduction, XLA:TPU's without a hint); see
        the module docstring. None chooses when the program is lowered
        (``lax.platform_dependent``).
      hint: optional per-feature value expected near the batch mean, known
        before x (the running mean), keepdims-shaped; only ``"running"`` uses it.

    Returns:
      ``LocalMoments`` with keepdims shapes.
    """
    return _members_at_once(reduce_axes, method)(x, mask, hint)


def _members_at_once(reduce_axes: Tuple[int, ...], method: Optional[str]):
    """``_device_moments`` that ``jax.vmap`` computes for all its members at once.

    Under ``vmap`` (an Equinox layer's examples, or any batch of members), the
    members' moments are the moments of the stacked x with the members' axis
    kept, like a feature axis: one first pass for all of them, one error bound
    and at most one second pass (``lax.cond``) for all of them, instead of a
    predicate per member, which ``vmap`` would turn into computing both
    branches for every member. Nested ``vmap``s keep adding kept axes.
    Members without a batch axis (dense examples) share one shift
    (``_single_elements``).

    Where the method is chosen when the program is lowered, XLA:TPU keeps the
    members one by one (``vmap``'s own batching): its conditional would take
    the stacked x as an operand and copy it (2.3|x| of temporary memory and
    twice the bytes, compiled for a TPU v5e), where both branches computed for
    every member fuse into the pass that reads x.
    """

    @jax.custom_batching.custom_vmap
    def moments(x, mask, hint):
        return _device_moments(x, mask, reduce_axes, method, hint)

    @moments.def_vmap
    def _(axis_size, in_batched, x, mask, hint):
        def lead(value, batched):  # the members' axis first, of size 1 where not mapped
            return value if value is None or batched else jnp.expand_dims(value, 0)

        def at_once(x, mask, hint):
            kept = tuple(a + 1 for a in reduce_axes)
            args = (lead(v, b) for v, b in zip((x, mask, hint), in_batched, strict=True))
            out = _members_at_once(kept, method)(*args)
            return jax.tree.map(lambda v: jnp.broadcast_to(v, (axis_size,) + v.shape[1:]), out)

        def one_by_one(x, mask, hint):
            def each(x, mask, hint):
                return _device_moments(x, mask, reduce_axes, method, hint)

            axes = tuple(0 if batched else None for batched in in_batched)
            return jax.vmap(each, in_axes=axes)(x, mask, hint)

        if not reduce_axes:  # members without a batch axis: one shift for all of them
            mapped = in_batched[0]
            members = (axis_size,) + (x.shape[1:] if mapped else x.shape)
            x = jnp.broadcast_to(x if mapped else jnp.expand_dims(x, 0), members)
            return _single_elements(x, mask)
        if method is None:
            out = lax.platform_dependent(x, mask, hint, tpu=one_by_one, default=at_once)
        else:
            out = at_once(x, mask, hint)
        return out, jax.tree.map(lambda _: True, out)

    return moments


def _single_elements(x: jax.Array, mask: Optional[jax.Array]):
    """Members of one element per feature (dense examples under ``vmap``), their moments.

    Each member is its own mean with M2 = 0; its moments are taken relative to
    one shift for all of them, the mean of the first members (``_shift`` with
    the members' axis as the batch axis), so that the shift and what the
    combination derives from it stay per feature, unmapped, instead of one
    full-size copy of x each (which the backward would keep).

    Returns:
      ``(LocalMoments, out_batched)`` for ``custom_vmap``: the shift and M2
      unmapped, the offsets mapped, the counts mapped where the mask is.
    """
    acc = accumulation_dtype(x.dtype)
    if mask is not None:  # of every member, mapped or not
        mask = jnp.broadcast_to(mask, x.shape)
    shift = _shift(x, mask, (0,), acc)[0]
    ones = jnp.ones(x.shape[1:], acc)
    count = ones if mask is None else mask.astype(acc)
    offset = x.astype(acc) - shift
    if mask is not None:  # an empty member's value may be anything (NaN padding)
        offset = jnp.where(count > 0, offset, jnp.zeros((), acc))
    moments = LocalMoments(count, shift, offset, jnp.zeros_like(ones))
    batched = LocalMoments._make((mask is not None, False, True, False))  # flags, not arrays
    return moments, batched


def _device_moments(x, mask, reduce_axes, method, hint=None) -> LocalMoments:
    """``local_moments`` of one member."""
    acc = accumulation_dtype(x.dtype)
    count = element_count(x.shape, mask, reduce_axes, acc)
    if not reduce_axes:  # no batch axis: each element its own mean, with M2 = 0 exactly
        shift = lax.stop_gradient(x.astype(acc))
        offset = m2 = jnp.zeros_like(shift)
    elif method is not None:
        shift, offset, m2 = METHODS[method](x, mask, reduce_axes, count, hint)
    else:
        per_platform = {
            platform: functools.partial(_with_axes, METHODS[method], reduce_axes)
            for platform, method in (("cpu", "checked"), ("tpu", "running"), ("default", "median"))
        }
        shift, offset, m2 = lax.platform_dependent(x, mask, count, hint, **per_platform)
    count = jnp.broadcast_to(count, m2.shape)
    return LocalMoments(count, shift, offset, m2)


def _with_axes(
    statistics,
    reduce_axes: Tuple[int, ...],
    x: jax.Array,
    mask: Optional[jax.Array],
    count: jax.Array,
    hint: Optional[jax.Array],
):
    """``statistics(x, mask, reduce_axes, count, hint)``, the axes bound first by ``partial``."""
    return statistics(x, mask, reduce_axes, count, hint)


# The statistics each backend's programs use (see the module docstring).
METHODS = {
    "checked": _checked_two_pass,
    "median": _median_pass,
    "running": _running_pass,
    "pairwise": _pairwise_pass,
}


def combine_moments(gathered: LocalMoments) -> LocalMoments:
    """Chan's parallel combination over the leading axis of stacked local moments.

    The means are combined relative to one reference shift, the members'
    shifts averaged by their counts: near every member's data, so the
    differences K_i − reference lose nothing at large offsets (Sterbenz), and
    cheap for many members (a vmap over a batch of examples) where an argmax
    and a gather were not on XLA:CPU.

    Returns:
      The combined moments, whose ``shift`` is the reference and ``offset``
      the global mean minus it.
    """
    # keepdims along the members' axis: no implicit rank promotion (Equinox's tests raise on it)
    count = jnp.sum(gathered.count, axis=0, keepdims=True)
    weights = gathered.count / safe_count(count)
    # an empty member's shift may be anything (NaN under a mask): it gets weight 0 here
    shifts = jnp.where(gathered.count > 0, gathered.shift, jnp.zeros((), gathered.shift.dtype))
    reference = lax.stop_gradient(jnp.sum(weights * shifts, axis=0, keepdims=True))
    relative = (gathered.shift - reference) + gathered.offset  # each member's mean − reference
    offset = jnp.sum(weights * relative, axis=0, keepdims=True)
    spread = gathered.count * jnp.square(relative - offset)
    m2 = jnp.sum(gathered.m2 + spread, axis=0)
    return LocalMoments(count[0], reference[0], offset[0], m2)


def gather_by_sum(values: jax.Array, axis_name, axis_index_groups=None) -> jax.Array:
    """Stacks ``values`` from every member of ``axis_name`` (or of its group).

    Over the axes ``shard_map`` types ``values`` as varying over, and with
    ``axis_index_groups``, each member writes its values into its own slot of
    a zero array and one all-reduce sums them: unlike ``lax.all_gather``, the
    result is known to be the same on every member (``shard_map`` can return
    it replicated), and grouped all-reduces work under ``pmap``. Over the other
    axes (``vmap``'s and ``pmap``'s) it is ``lax.all_gather``: under ``vmap``
    the slots would be one array of members × members × values, quadratic in
    the batch (an Equinox layer's batch of 256 examples of 64 features: 0.34 s
    instead of 0.4 ms on XLA:CPU), while ``vmap``'s all-gather is the stacked
    values themselves. The values are per-feature statistics, so the extra
    bytes of either are negligible.

    Args:
      values: this member's array.
      axis_name: the mapped axis, or a tuple of them.
      axis_index_groups: optional groups of indices along ``axis_name``.

    Returns:
      An array of shape ``(members,) + values.shape``.
    """
    if axis_index_groups is not None:
        return _sum_into_slots(values, axis_name, axis_index_groups)
    names = axis_name if isinstance(axis_name, tuple) else (axis_name,)
    varying = varying_axes(values)
    stacked = values
    for name in reversed([n for n in names if n not in varying]):
        stacked = lax.all_gather(stacked, name)  # one name at a time, as vmap batches it
    stacked = stacked.reshape((-1,) + values.shape)
    slotted = tuple(n for n in names if n in varying)
    if slotted:
        stacked = _sum_into_slots(stacked, slotted, None).reshape((-1,) + values.shape)
    return stacked


def _sum_into_slots(values: jax.Array, axis_name, axis_index_groups) -> jax.Array:
    """``values`` of every member, each written into its own slot and summed (one psum)."""
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
    reduction: Reduction,
    hint: Optional[jax.Array] = None,
) -> Moments:
    """Count, mean and biased variance per feature over the reduced axes.

    Args:
      x: input of any floating or complex dtype; sums accumulate in float32
        (float64 for float64/complex128 input).
      mask: optional bool array of ``x``'s rank, broadcastable to ``x``; only
        True positions enter the statistics.
      reduction: the axes to reduce over, the mapped axis and device groups to
        reduce across, and the method (see ``Reduction``).
      hint: optional per-feature value expected near the mean, known before x
        (the running mean), keepdims-shaped, of ``x``'s shift dtype; XLA:TPU's
        statistics centre their sums on it (see ``local_moments``).

    Returns:
      ``Moments`` with keepdims shapes; ``var`` is the biased variance, real.

    Examples:
      >>> import jax.numpy as jnp
      >>> from bnjax._core.stats import Reduction, batch_moments
      >>> x = jnp.array([[1e6 + 1.0], [1e6 - 1.0], [1e6 + 3.0], [1e6 - 3.0]])
      >>> moments = batch_moments(x, None, Reduction((0,)))
      >>> float(moments.var[0, 0]), float(moments.offset[0, 0] + moments.shift[0, 0] - 1e6)
      (5.0, 0.0)
    """
    if jnp.iscomplexobj(x):
        return _complex_moments(x, mask, reduction, hint)
    local = local_moments(x, mask, reduction.axes, reduction.method, hint)
    if reduction.axis_name is None:
        var = local.m2 / safe_count(local.count)
        return Moments(local.count, local.shift + local.offset, var, local.shift, local.offset)
    gathered = gather_by_sum(jnp.stack(local), reduction.axis_name, reduction.groups)
    total = combine_moments(LocalMoments(*jnp.moveaxis(gathered, 1, 0)))
    var = total.m2 / safe_count(total.count)
    # The same rounded mean on every device; each device normalizes relative to its
    # own shift, μ − K = (μ − reference) + (reference − K).
    offset = total.offset + (total.shift - local.shift)
    return Moments(total.count, total.shift + total.offset, var, local.shift, offset)


def _complex_moments(
    x: jax.Array, mask: Optional[jax.Array], reduction: Reduction, hint: Optional[jax.Array]
) -> Moments:
    """Moments of complex x from those of its real and imaginary parts.

    The parts become a leading kept axis; the mean is re + i·im and the
    variance E|x − μ|² = var(re) + var(im).
    """
    parts = jnp.stack([jnp.real(x), jnp.imag(x)])
    mask = None if mask is None else mask[None]
    axes = tuple(a + 1 for a in reduction.axes)
    hint = None if hint is None else jnp.stack([jnp.real(hint), jnp.imag(hint)])
    real = batch_moments(parts, mask, reduction._replace(axes=axes), hint)

    def fold(values):
        return lax.complex(values[0], values[1])

    return Moments(
        real.count[0], fold(real.mean), real.var[0] + real.var[1], fold(real.shift),
        fold(real.offset),
    )  # fmt: skip


def global_sum(values: jax.Array, reduction: Reduction) -> jax.Array:
    """Sums across ``reduction.axis_name`` (one all-reduce) when given; identity otherwise."""
    if reduction.axis_name is None:
        return values
    return lax.psum(values, reduction.axis_name, axis_index_groups=reduction.groups)


def typed_as_barrier(values):
    """``values`` typed as ``lax.optimization_barrier`` types them (identity in value).

    Under ``shard_map`` a barrier makes every output varying over the mesh axes
    that any input varies over; code that has a barrier on one backend only,
    or values that meet in the branches of a ``lax.cond``, must agree on it.
    """
    leaves, tree = jax.tree.flatten(values)
    varying = [varying_axes(leaf) for leaf in leaves]
    union = frozenset().union(*varying)
    leaves = [
        lax.pcast(leaf, tuple(sorted(union - axes)), to="varying") if union - axes else leaf
        for leaf, axes in zip(leaves, varying, strict=True)
    ]
    return jax.tree.unflatten(tree, leaves)


def varying_axes(value: jax.Array) -> frozenset:
    """The mesh axes ``shard_map`` types ``value`` as varying over (empty outside it)."""
    return jax.typeof(value).mat.varying
