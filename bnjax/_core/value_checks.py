"""Opt-in value checks (``check_values=True``), built on ``jax.experimental.checkify``.

They run inside ``jit`` once the function is functionalized with
``checkify.checkify`` (or ``chex.chexify``), and name the offending features.
With ``check_values=False`` (the default) none of this is traced.
"""

from typing import Tuple

import jax
import jax.numpy as jnp
from jax.experimental import checkify


def _check_features(bad: jax.Array, message: str) -> None:
    """Fails with ``message`` when any entry of the per-feature ``bad`` is True."""
    bad = bad.reshape(-1)
    checkify.check(
        ~jnp.any(bad),
        message + " in {count} feature(s); first offending feature index: {first}",
        count=jnp.sum(bad, dtype=jnp.int32),
        first=jnp.argmax(bad),
    )


def check_input_values(x: jax.Array, reduce_axes: Tuple[int, ...]) -> None:
    """X must be finite everywhere."""
    _check_features(~jnp.all(jnp.isfinite(x), axis=reduce_axes), "bnjax: x has NaN/Inf values")


def check_batch_stats(mean: jax.Array, var: jax.Array) -> None:
    """The batch mean and variance must be finite."""
    bad = ~(jnp.isfinite(mean) & jnp.isfinite(var))
    _check_features(bad, "bnjax: the batch statistics are not finite")


def check_running_stats(mean: jax.Array, var: jax.Array, count: jax.Array) -> None:
    """The running mean must be finite, the variance finite and >= 0, the count >= 0."""
    bad = ~(jnp.isfinite(mean) & jnp.isfinite(var) & (var >= 0))
    _check_features(bad, "bnjax: state.mean/state.var are not finite or state.var is negative")
    _check_features(jnp.broadcast_to(count < 0, jnp.shape(var)), "bnjax: state.count is negative")
