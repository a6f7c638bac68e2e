"""Folding an inference-mode batch norm into the linear layer before it."""

from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from .._core.containers import BatchNormParams, BatchNormState
from .._core.options import check_epsilon
from .._core.stats import accumulation_dtype
from .._core.transform import scale_over_std
from .._core.validate import check_containers, check_floating


def fold_into_linear(
    kernel: ArrayLike,
    bias: Optional[ArrayLike],
    params: BatchNormParams,
    state: BatchNormState,
    *,
    epsilon: Any = 1e-5,
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

    Raises:
      TypeError: params/state that are not ``bnjax.BatchNormParams`` /
        ``bnjax.BatchNormState``, a non-floating kernel, bias or statistic
        (an integer kernel would be truncated), a non-numeric epsilon.
      ValueError: a negative or non-finite epsilon, shapes that do not match
        the kernel's output features.

    Examples:
      >>> import jax.numpy as jnp, bnjax
      >>> params, state = bnjax.init(2)
      >>> state = state._replace(mean=jnp.array([1.0, 2.0]), var=jnp.array([4.0, 1.0]))
      >>> kernel, bias = bnjax.fold_into_linear(jnp.ones((3, 2)), None, params, state, epsilon=0.0)
      >>> kernel[0], bias
      (Array([0.5, 1. ], dtype=float32), Array([-0.5, -2. ], dtype=float32))
    """
    check_containers(params, state)
    epsilon = check_epsilon(epsilon)
    kernel = check_floating(kernel, "kernel")
    if kernel.ndim < 2:
        raise ValueError(f"kernel must have shape (..., in, out), got {kernel.shape}")
    features = kernel.shape[-1]
    named = {"bias": bias, "params.scale": params.scale, "params.bias": params.bias,
             "state.mean": state.mean, "state.var": state.var}  # fmt: skip
    vectors = {}
    for name, value in named.items():
        if value is None:
            continue
        vectors[name] = check_floating(value, name)
        if vectors[name].shape != (features,):
            raise ValueError(
                f"{name} must have shape ({features},), the kernel's output features "
                f"(kernel.shape={kernel.shape}), got {vectors[name].shape}"
            )
    acc = accumulation_dtype(kernel.dtype)

    def per_feature(name, fill):
        return vectors[name].astype(acc) if name in vectors else jnp.full((), fill, acc)

    weight = scale_over_std(
        per_feature("params.scale", 1.0), per_feature("state.var", 1.0), epsilon
    )
    new_bias = (per_feature("bias", 0.0) - per_feature("state.mean", 0.0)) * weight
    new_bias = jnp.broadcast_to(new_bias + per_feature("params.bias", 0.0), (features,))
    return (kernel.astype(acc) * weight).astype(kernel.dtype), new_bias.astype(kernel.dtype)
