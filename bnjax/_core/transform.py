"""The normalize-scale-shift transform and its differentiation rule.

Training mode is a ``jax.custom_jvp`` whose tangent is linear in
(dx, dγ, dβ) and touches x only through products with per-feature vectors,
computed inside ``jax.checkpoint`` so that the full-size ``x − μ`` is
recomputed rather than stored. JAX's transposition of that tangent is the
optimal backward, dx = a·dy + (x−μ̃)·k₁ + k₀ with per-feature a, k₁, k₀ from
two fused reductions (Σdy, Σdy·(x−μ̃)); the residuals are x and per-feature
vectors only. Forward mode and higher-order derivatives keep working because
the rule is an ordinary differentiable JAX function.

One rule serves every backend; only its optimization barriers depend on the
platform the program is lowered for (``cpu_barrier``, ``lax.platform_dependent``):

- **XLA:CPU** does not fuse sibling reductions; barriers (where
  ``jax.checkpoint`` would place its own, and one in the forward) keep each
  reduction reading x itself and stop a converted or centred copy of x from
  being written and shared (see ``stats``).
- **XLA:GPU and XLA:TPU** fuse sibling reductions over the same input into
  one kernel, and barriers would split them: there the checkpoints place none
  (``prevent_cse=False``), so the forward is one statistics pass and one
  output pass (3|x|) and the backward two fused reductions and one output
  pass.

The backward's reductions centre x on the rounded mean μ̃ rather than on the
forward's shift K (exact all the same: μ − μ̃ is known without rounding), so
that nothing makes XLA fuse them with the statistics' own reductions instead
of with each other.
"""

import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from .stats import (
    Moments,
    Reduction,
    batch_moments,
    global_sum,
    masked_sum,
    safe_count,
    typed_as_barrier,
    varying_axes,
)


def _centered_product(x: jax.Array, shift: jax.Array, factor: jax.Array) -> jax.Array:
    """(x − shift)·factor in the dtype of ``shift``."""
    return (x.astype(shift.dtype) - shift) * factor.astype(shift.dtype)


# Recomputed (not stored) for gradients: the evaluation transform's product.
centered_product = jax.checkpoint(_centered_product)


def _pack(values) -> jax.Array:
    """Per-feature sums, some complex, as one real stack (one all-reduce for all)."""
    parts = []
    for value in values:
        parts += [jnp.real(value), jnp.imag(value)] if jnp.iscomplexobj(value) else [value]
    return jnp.stack(parts)


def _unpack(packed: jax.Array, like) -> list:
    """The inverse of ``_pack``: values shaped and typed like ``like``."""
    values, i = [], 0
    for value in like:
        if jnp.iscomplexobj(value):
            values.append(lax.complex(packed[i], packed[i + 1]))
            i += 2
        else:
            values.append(packed[i])
            i += 1
    return values


@functools.partial(jax.checkpoint, static_argnums=(5,), prevent_cse=False)
def _tangent_sums(
    dx: jax.Array,
    x: jax.Array,
    shift: jax.Array,
    offset: jax.Array,
    mask: Optional[jax.Array],
    reduce_axes: Tuple[int, ...],
) -> Tuple[jax.Array, jax.Array]:
    """[Σdx, Σ Re(conj(x−μ)·dx)] over this device's valid elements, recomputing x − K.

    Σdx·(x − μ) = Σdx·(x − K) − (μ − K)·Σdx: both reductions read x − K, which
    is exact, and the per-feature correction comes after the sums.
    """
    x, shift, offset, mask = cpu_barrier((x, shift, offset, mask))
    centered = x.astype(shift.dtype) - shift
    sum_dx = masked_sum(dx, mask, reduce_axes)
    sum_dx_centered = masked_sum(jnp.real(jnp.conj(centered) * dx), mask, reduce_axes)
    return sum_dx, sum_dx_centered - jnp.real(jnp.conj(offset) * sum_dx)


def normalize_eval(
    x: jax.Array, scale: jax.Array, bias: jax.Array, mean: jax.Array, var: jax.Array, epsilon: float
) -> jax.Array:
    """Y = (x − mean)·scale/√(var + ε) + bias with given (population) statistics.

    All per-feature arguments are broadcastable to ``x`` and already in the
    accumulation dtype (``mean`` complex for complex x); the result has ``x``'s
    dtype.
    """
    factor = scale_over_std(scale, var, epsilon)
    return (centered_product(x, mean, factor) + bias.astype(mean.dtype)).astype(x.dtype)


def normalize_relative(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    moments: Moments,
    epsilon: float,
    product=centered_product,
) -> jax.Array:
    """Y = (x − K)·a + (β − (μ − K)·a), a = γ/√(σ² + ε): batch norm relative to the shift.

    Equal to (x − μ)·a + β, but x − K is exact where K is near x and μ − K is
    known without rounding, so y keeps full precision at any offset.
    """
    factor = scale_over_std(scale, moments.var, epsilon)
    dtype = moments.shift.dtype
    shifted_bias = bias.astype(dtype) - moments.offset * factor.astype(dtype)
    return (product(x, moments.shift, factor) + shifted_bias).astype(x.dtype)


def scale_over_std(scale: jax.Array, var: jax.Array, epsilon: float) -> jax.Array:
    """γ/√(σ² + ε), the per-feature factor of the normalization."""
    return scale * lax.rsqrt(var + epsilon)


def cpu_barrier(values):
    """``lax.optimization_barrier(values)`` on XLA:CPU, the identity elsewhere.

    XLA:CPU does not fuse sibling reductions: a barrier keeps each reduction
    reading x itself instead of sharing a converted or centred copy written to
    memory. XLA:GPU and XLA:TPU fuse sibling reductions into one kernel, which
    a barrier would split. Chosen when the program is lowered.
    """
    return lax.platform_dependent(values, cpu=lax.optimization_barrier, default=typed_as_barrier)


# The checkpoints place no barrier of their own (``prevent_cse=False``): the
# functions place XLA:CPU's on their non-tangent inputs (``cpu_barrier``).
_remat = functools.partial(jax.checkpoint, prevent_cse=False)


@_remat
def _product(x: jax.Array, shift: jax.Array, factor: jax.Array) -> jax.Array:
    """``_centered_product`` recomputed for gradients, with XLA:CPU's barrier on x and shift."""
    x, shift = cpu_barrier((x, shift))
    return _centered_product(x, shift, factor)


@functools.partial(jax.custom_jvp, nondiff_argnums=(5, 6))
def normalize_train(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    mask: Optional[jax.Array],
    hint: Optional[jax.Array],
    reduction: Reduction,
    epsilon: float,
) -> Tuple[jax.Array, Moments]:
    """Normalizes ``x`` with its own batch statistics.

    Args:
      x: input, any floating or complex dtype.
      scale: γ, broadcastable to ``x``, in the accumulation dtype.
      bias: β, broadcastable to ``x``, in the accumulation dtype.
      mask: optional bool array of ``x``'s rank; only True positions enter
        the statistics (every position is normalized).
      hint: optional per-feature value expected near the batch mean (the
        running mean), keepdims-shaped; the statistics may centre on it (see
        ``stats.batch_moments``). Not differentiated.
      reduction: what the statistics reduce over and across (``stats.Reduction``).
      epsilon: added to the variance (a scalar, possibly traced).

    Returns:
      ``(y, moments)``: the output in ``x``'s dtype and the batch ``Moments``,
      keepdims-shaped.

    """
    moments = batch_moments(x, mask, reduction, hint)
    # XLA:CPU: keeps XLA from sharing x − K between the variance reduction and the
    # output, which would write it to memory instead of fusing it into both.
    x_out, shift = cpu_barrier((x, moments.shift))
    y = normalize_relative(x_out, scale, bias, moments._replace(shift=shift), epsilon, _product)
    return y, moments


@normalize_train.defjvp
def _normalize_train_jvp(reduction: Reduction, epsilon, primals, tangents):
    x, scale, bias, mask, hint = primals
    dx, dscale, dbias, _, _ = tangents
    y, moments = normalize_train(x, scale, bias, mask, hint, reduction, epsilon)
    dy, dmoments = _train_tangent(reduction, epsilon, x, mask, moments, scale, dx, dscale, dbias)
    return (y, moments), (dy.astype(y.dtype), dmoments)


@functools.partial(_remat, static_argnums=(0, 1))
def _train_tangent(
    reduction: Reduction,
    epsilon,
    x: jax.Array,
    mask: Optional[jax.Array],
    moments: Moments,
    scale: jax.Array,
    dx: jax.Array,
    dscale: jax.Array,
    dbias: jax.Array,
):
    """The tangent of (y, moments): linear in (dx, dscale, dbias).

    Under ``jax.checkpoint`` so that what reverse mode keeps is exactly its
    primal inputs (x, the mask, the moments and the scale); the per-feature
    products are recomputed in the backward. The barrier that
    ``jax.checkpoint`` would place on the full-size inputs is placed on
    XLA:CPU only.
    """
    x, mask = cpu_barrier((x, mask))
    dtype = moments.shift.dtype  # the accumulation dtype, complex for complex x
    count = safe_count(moments.count)
    inv_std = lax.rsqrt(moments.var + epsilon)
    dx = dx.astype(dtype)
    local = _tangent_sums(dx, x, moments.shift, moments.offset, mask, reduction.axes)
    if reduction.axis_name is not None:  # one all-reduce for both sums
        local = _unpack(global_sum(_pack(local), reduction), local)
    sum_dx, sum_dx_centered = local
    dmean = sum_dx / count.astype(dtype)
    half_dvar = sum_dx_centered / count  # mean of Re(conj(x − μ)·dx) = dσ²/2
    dinv_std = -jnp.square(inv_std) * inv_std * half_dvar
    weight = scale * inv_std  # = scale_over_std(scale, var, epsilon), reusing inv_std
    # Grouped so that the transpose needs exactly two reductions, Σdy and Σdy·(x − μ̃),
    # and, across devices, one all-reduce of both: the per-feature tangents meet the
    # per-device data at a single point.
    offsets = [
        dbias.astype(dtype) - weight.astype(dtype) * dmean,
        (scale * dinv_std + dscale * inv_std).astype(dtype),
    ]
    if reduction.axis_name is not None:  # stacked: one per-device point, one all-reduce
        offsets = _per_device(jnp.stack(offsets), x, reduction.axis_name)
    # x − μ̃ (μ̃ the rounded mean) rather than the forward's x − K: the backward's two
    # reductions then share nothing with the statistics' and fuse with each other.
    rounding = moments.offset - (moments.mean - moments.shift)  # μ − μ̃, exact
    dy = (
        weight.astype(dtype) * dx
        + _product(_finite_where_masked_out(x, mask), moments.mean, offsets[1])
        + (offsets[0] - rounding * offsets[1])
    )
    # shift and offset are per device (typed so under shard_map); so are their tangents.
    zero_shift = _per_device(jnp.zeros_like(moments.shift), x, reduction.axis_name)
    doffset = _per_device(dmean, x, reduction.axis_name)
    return dy, Moments(jnp.zeros_like(moments.count), dmean, 2 * half_dvar, zero_shift, doffset)


def _finite_where_masked_out(x: jax.Array, mask: Optional[jax.Array]) -> jax.Array:
    """x, with 0 at masked-out positions that are not finite (padding filled with NaN).

    Their outputs are not finite whatever the tangent; without this, the
    transpose multiplies their cotangent (0 where a loss ignores padding) by
    x − μ̃ = NaN and every valid element's gradient becomes NaN. Finite
    masked-out positions keep their exact tangent. Without a mask, x itself.
    """
    if mask is None:
        return x
    return jnp.where(mask | jnp.isfinite(x), x, jnp.zeros((), x.dtype))


def _per_device(values: jax.Array, x: jax.Array, axis_name) -> jax.Array:
    """Marks values that are equal on every device as per-device, under ``shard_map``.

    ``shard_map`` types values as varying or not across its mesh axes, and
    transposes each place where an equal-everywhere value meets per-device data
    into an all-reduce. Doing it once, explicitly, for stacked values gives one
    all-reduce in the backward. Elsewhere (``pmap``, ``vmap``, no axis) this is
    the identity.
    """
    if axis_name is None:
        return values
    names = set(axis_name if isinstance(axis_name, tuple) else (axis_name,))
    if not names <= varying_axes(x) or names <= varying_axes(values):
        return values
    return lax.pcast(values, axis_name, to="varying")
