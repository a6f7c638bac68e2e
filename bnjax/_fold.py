"""Folding an inference-mode batch norm into the linear layer before it."""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from ._stats import accumulation_dtype
from ._transform import scale_over_std
from ._types import BatchNormParams, BatchNormState


def fold_into_linear(
    kernel: jax.Array,
    bias: Optional[jax.Array],
    params: BatchNormParams,
    state: BatchNormState,
    *,
    epsilon: float = 1e-5,
) -> Tuple[jax.Array, jax.Array]:
    """Returns the kernel and bias of one layer equal to a linear layer followed by BN in eval.

    With w = γ/√(σ² + ε) per output feature, BN(x·K + b) = x·(K·w) + ((b − μ)·w + β).
    Works for a Dense kernel ``(in, out)`` and a Conv kernel ``(..., in, out)``
    (Flax's layouts), batch norm being over the ``out`` features.

    Args:
      kernel: the linear layer's kernel, output features last.
      bias: its bias ``(out,)``, or None for a bias-free layer (a new bias is
        returned).
      params: the batch norm's ``BatchNormParams``.
      state: its ``BatchNormState`` (population statistics).
      epsilon: the batch norm's epsilon.

    Returns:
      ``(kernel, bias)`` of the folded layer, in the kernel's dtype.

    Examples:
      >>> import jax.numpy as jnp, bnjax
      >>> params, state = bnjax.init(2)
      >>> state = state._replace(mean=jnp.array([1.0, 2.0]), var=jnp.array([4.0, 1.0]))
      >>> kernel, bias = bnjax.fold_into_linear(jnp.ones((3, 2)), None, params, state, epsilon=0.0)
      >>> kernel[0], bias
      (Array([0.5, 1. ], dtype=float32), Array([-0.5, -2. ], dtype=float32))
    """
    kernel = jnp.asarray(kernel)
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have shape (..., in, out), got {kernel.shape}")
    features = kernel.shape[-1]
    for name, value in (("params.scale", params.scale), ("params.bias", params.bias),
                        ("state.mean", state.mean), ("state.var", state.var)):  # fmt: skip
        if value is not None and jnp.shape(value) != (features,):
            raise ValueError(
                f"{name} must have shape ({features},), the kernel's output features "
                f"(kernel.shape={kernel.shape}), got {jnp.shape(value)}"
            )
    if bias is not None and jnp.shape(bias) != (kernel.shape[-1],):
        raise ValueError(
            f"bias must have shape ({kernel.shape[-1]},) (kernel's output features), "
            f"got {jnp.shape(bias)}"
        )
    acc = accumulation_dtype(kernel.dtype)
    scale = jnp.ones((), acc) if params.scale is None else params.scale.astype(acc)
    shift = jnp.zeros((), acc) if params.bias is None else params.bias.astype(acc)
    weight = scale_over_std(scale, state.var.astype(acc), epsilon)
    old_bias = jnp.zeros((), acc) if bias is None else jnp.asarray(bias).astype(acc)
    new_bias = (old_bias - state.mean.astype(acc)) * weight + shift
    new_bias = jnp.broadcast_to(new_bias, (kernel.shape[-1],))
    return (kernel.astype(acc) * weight).astype(kernel.dtype), new_bias.astype(kernel.dtype)
