"""What the Flax modules share: argument resolution and the call into the core.

The linen and NNX modules only hold variables; everything they compute goes
through ``call_core`` and from there through ``batch_norm``.
"""

from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from . import _validate
from ._core import batch_norm, batch_renorm
from ._types import BatchNormParams, BatchNormState


class CoreOptions(NamedTuple):
    """The keyword arguments a module forwards to ``batch_norm``."""

    axis: Union[int, Sequence[int]]
    momentum: Optional[float]
    epsilon: float
    unbiased: bool
    axis_name: Any
    axis_index_groups: Any
    virtual_batch_size: Optional[int]
    check_values: bool


def resolve_use_running_average(
    attribute: Optional[bool], argument: Optional[bool], *, call_overrides: bool
) -> bool:
    """Merges the constructor's and the call's ``use_running_average``.

    Args:
      attribute: the module's attribute.
      argument: the call's argument.
      call_overrides: True for NNX (the call's value wins, as in
        ``flax.nnx.BatchNorm``); False for linen, where giving both is an error
        (``flax.linen.merge_param``).

    Returns:
      The resolved value as a bool.
    """
    if attribute is None and argument is None:
        raise ValueError(
            "use_running_average was given neither to the constructor nor to the call: pass "
            "BatchNorm(use_running_average=...) or bn(x, use_running_average=...) "
            "(False trains with batch statistics, True evaluates with the running ones)"
        )
    if attribute is not None and argument is not None and not call_overrides:
        raise ValueError(
            f"use_running_average was given twice: {attribute} to the constructor and "
            f"{argument} to the call; pass it in one place only"
        )
    return bool(attribute if argument is None else argument)


def feature_shape_of(x: jax.Array, axis) -> Tuple[int, ...]:
    """The shape of the feature axes of ``x`` (raises for a bad ``axis``)."""
    x = jnp.asarray(x)
    return tuple(x.shape[a] for a in _validate.canonical_axes(axis, x.ndim, x.shape))


def check_feature_shape(expected: Tuple[int, ...], x: jax.Array, axis) -> None:
    """Raises if ``x`` has other features than the module was created for."""
    actual = feature_shape_of(x, axis)
    if tuple(expected) != actual:
        raise ValueError(
            f"BatchNorm was created for feature shape {tuple(expected)} but x with shape "
            f"{tuple(jnp.shape(x))} has feature shape {actual} at axis={axis!r}; use one "
            "BatchNorm per layer width (or check the axis argument)"
        )


def compute_dtype(x: jax.Array, dtype, *params: Optional[jax.Array]):
    """Flax's rule: ``dtype`` when given, else the promotion of x and the parameters.

    Written out for floating dtypes (the widest wins; two different ones of the
    same width, bfloat16 and float16, give float32) so that it also holds under
    ``jax_numpy_dtype_promotion="strict"``. Non-floating x is left to the core,
    which rejects it.
    """
    x_dtype = jnp.asarray(x).dtype
    if dtype is not None:
        return jnp.dtype(dtype)
    if not jnp.issubdtype(x_dtype, jnp.floating):
        return x_dtype
    dtypes = [x_dtype] + [jnp.dtype(p.dtype) for p in params if p is not None]
    widest = max(dtypes, key=lambda d: d.itemsize)
    if any(d.itemsize == widest.itemsize and d != widest for d in dtypes):
        return jnp.dtype(jnp.float32)
    return widest


def call_core(
    x: jax.Array,
    scale: Optional[jax.Array],
    bias: Optional[jax.Array],
    mean: jax.Array,
    var: jax.Array,
    count: Optional[jax.Array],
    train: bool,
    dtype,
    options: CoreOptions,
    mask: Optional[jax.Array] = None,
    renorm: Optional[Tuple[float, float]] = None,
) -> Tuple[jax.Array, BatchNormState]:
    """Casts x to the computation dtype and runs ``batch_norm`` on module variables.

    ``count`` may be None (modes that do not store it); the returned state's
    count is then meaningless. ``renorm=(r_max, d_max)`` runs ``batch_renorm``.
    """
    x = jnp.asarray(x)
    x = x.astype(compute_dtype(x, dtype, scale, bias))
    state = BatchNormState(mean, var, jnp.zeros((), jnp.int32) if count is None else count)
    kwargs = options._asdict()
    if renorm is None:
        return batch_norm(x, BatchNormParams(scale, bias), state, train, mask=mask, **kwargs)
    if kwargs.pop("virtual_batch_size") is not None:
        raise ValueError("renorm=True and virtual_batch_size cannot be combined")
    r_max, d_max = renorm
    return batch_renorm(
        x, BatchNormParams(scale, bias), state, train, r_max=r_max, d_max=d_max, mask=mask, **kwargs
    )
