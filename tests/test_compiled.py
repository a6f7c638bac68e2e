"""The compiled program's structure and temporary memory (deterministic, no timing)."""

import jax
import jax.numpy as jnp
import pytest

import bnjax

SHAPE = (8, 8, 8, 16)


def _temp_fraction(fn, *args):
    """Temporary bytes of the compiled ``fn`` as a fraction of the first argument's bytes."""
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / args[0].nbytes


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_writes_nothing_full_size(dtype):
    """No converted copy of x and no x − K is written: each reduction reads x itself."""
    x = jnp.ones(SHAPE, dtype)
    params, state = bnjax.init(SHAPE[-1])
    fraction = _temp_fraction(lambda x, p: bnjax.batch_norm(x, p, state, True)[0], x, params)
    assert fraction < 0.05, fraction


@pytest.mark.parametrize("dtype, limit", [(jnp.float32, 0.05), (jnp.bfloat16, 2.05)])
def test_forward_and_backward_write_nothing_full_size_but_a_float32_cotangent(dtype, limit):
    """float32: nothing full-size. bfloat16: one float32 copy of the cotangent (2× its bytes),
    shared by the backward's two reductions on XLA:CPU; nothing else."""
    x = jnp.ones(SHAPE, dtype)
    params, state = bnjax.init(SHAPE[-1])

    def forward_backward(x, params, cotangent):
        _, pullback = jax.vjp(lambda x, p: bnjax.batch_norm(x, p, state, True)[0], x, params)
        return pullback(cotangent)

    fraction = _temp_fraction(forward_backward, x, params, x)
    assert fraction < limit, fraction
