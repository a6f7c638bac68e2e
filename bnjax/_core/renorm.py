"""Batch Renormalization (Ioffe, 2017): the per-feature correction r, d.

In training, y = γ·(x̂_B·r + d) + β with r = clip(σ_B/σ, 1/r_max, r_max) and
d = clip((μ_B − μ)/σ, −d_max, d_max), σ = √(running var + ε),
σ_B = √(σ²_B + ε); r and d are constants for the gradient. That is batch norm
with scale γ·r and bias β + γ·d, so the transform, its differentiation rule
and the running statistics are batch_norm's own.
"""

from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from .stats import Reduction, batch_moments


def renorm_scale_and_bias(
    x: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    running_mean: jax.Array,
    running_var: jax.Array,
    mask: Optional[jax.Array],
    reduction: Reduction,
    epsilon: float,
    limits: Tuple[float, float],
) -> Tuple[jax.Array, jax.Array]:
    """Returns (γ·r, β + γ·d), with r and d under ``stop_gradient``.

    All per-feature arguments broadcast against ``x`` and are in the
    accumulation dtype; ``limits`` is ``(r_max, d_max)``. The batch moments
    computed here are the ones the transform computes again; XLA merges the
    two. μ_B − μ is taken relative to the moments' shift K,
    (K − μ) + (μ_B − K), with μ_B − K computed without rounding μ_B: at an
    offset of 1e6 std the float32-rounded μ_B alone would be off by up to
    1/32 std.
    """
    # r and d are constants for the gradient: nothing differentiates the statistics.
    moments = batch_moments(lax.stop_gradient(x), mask, reduction, hint=running_mean)
    r_max, d_max = limits
    sigma = jnp.sqrt(running_var + epsilon)
    r = jnp.clip(jnp.sqrt(moments.var + epsilon) / sigma, 1 / r_max, r_max)
    # μ_B − μ from the shift and the exact offset: (K − μ) + (μ_B − K), never the
    # rounded μ_B, so d keeps its precision at any offset (as the transform's y does).
    difference = (moments.shift - running_mean) + moments.offset
    d = jnp.clip(difference / sigma, -d_max, d_max)
    r, d = lax.stop_gradient(r), lax.stop_gradient(d)
    return scale * r, bias + scale * d
