"""Complex input, as Flax normalizes it: complex mean, real variance E|x − μ|²."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm, random_params
from jax.test_util import check_grads
from oracle import reference

import bnjax


def complex_array(shape, seed=0, loc=0.0, dtype=np.complex64):
    rng = np.random.default_rng(seed)
    return (loc + rng.normal(size=shape) + 1j * rng.normal(0.0, 2.0, shape)).astype(dtype)


@pytest.mark.parametrize("axis", [-1, 1])
@pytest.mark.parametrize("loc", [0.0, 1e4 - 3e3j])
def test_training_matches_the_oracle(axis, loc):
    x = complex_array((6, 3, 4, 3), seed=1, loc=loc)
    params, state = random_params(3)
    y, new_state = jit_batch_norm(x, params, state, True, axis=axis, momentum=0.9)
    y_ref, mean_ref, var_ref = reference(
        x, params.scale, params.bias, state.mean, state.var, True, axis=axis, momentum=0.9
    )
    assert y.dtype == jnp.complex64
    assert new_state.mean.dtype == jnp.complex64 and new_state.var.dtype == jnp.float32
    np.testing.assert_allclose(y, y_ref, atol=2e-3 if loc else 2e-5)
    np.testing.assert_allclose(new_state.mean, mean_ref.ravel(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_state.var, var_ref.ravel(), rtol=1e-5)


def test_masked_training_and_evaluation_with_a_complex_running_mean_match_the_oracle():
    x = complex_array((10, 3), seed=2)
    mask = np.random.default_rng(3).random((10, 1)) < 0.6
    params, state = random_params(3)
    _, trained = jit_batch_norm(x, params, state, True, mask=mask, momentum=0.0)
    _, mean_ref, var_ref = reference(x, None, None, state.mean, state.var, True, mask=mask,
                                     momentum=0.0)  # fmt: skip
    np.testing.assert_allclose(trained.mean, mean_ref.ravel(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(trained.var, var_ref.ravel(), rtol=1e-5)
    y, same = jit_batch_norm(x, params, trained, False)
    y_ref, _, _ = reference(x, params.scale, params.bias, trained.mean, trained.var, False)
    np.testing.assert_allclose(y, y_ref, atol=2e-5)
    chex.assert_trees_all_equal(same, trained)


@pytest.mark.slow
def test_gradients_pass_second_order_checks_forward_and_reverse():
    with jax.enable_x64(True):
        x = complex_array((5, 3), seed=4, dtype=np.complex128)
        params, state = random_params(3, dtype=np.float64)

        @jax.jit  # compiled once per derivative, not run op by op
        def f(x, scale, bias):
            return jnp.sin(bnjax.batch_norm(x, bnjax.BatchNormParams(scale, bias), state, True)[0])

        check_grads(f, (x, params.scale, params.bias), order=2, modes=("fwd", "rev"),
                    atol=1e-5, rtol=1e-5)  # fmt: skip


def test_complex_running_statistics_need_complex_input():
    params, state = bnjax.init(2)
    state = state._replace(mean=state.mean.astype(jnp.complex64))
    with pytest.raises(TypeError, match=r"state\.mean is complex \(complex64\) but x is real"):
        bnjax.batch_norm(jnp.ones((3, 2)), params, state, True)


def test_renorm_rejects_complex_input():
    params, state = bnjax.init(2)
    with pytest.raises(TypeError, match="batch_renorm needs real x, got dtype complex64"):
        bnjax.batch_renorm(complex_array((3, 2)), params, state, True)


@pytest.mark.slow
def test_linen_and_nnx_modules_match_flax_linen_on_complex_input():
    import flax.linen as nn
    from flax import nnx

    x = complex_array((8, 3), seed=5, loc=2.0 + 1.0j)
    with jax.numpy_dtype_promotion("standard"):  # Flax promotes complex with its float32 params
        flax_bn = nn.BatchNorm(use_running_average=False, momentum=0.9)
        variables = flax_bn.init(jax.random.key(0), x)
        y_ref, ref = flax_bn.apply(variables, x, mutable=["batch_stats"])
    bn = bnjax.BatchNorm(use_running_average=False, momentum=0.9)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    chex.assert_trees_all_close(updates, ref, atol=1e-6)
    assert updates["batch_stats"]["mean"].dtype == jnp.complex64

    layer = bnjax.nnx.BatchNorm(3, momentum=0.9, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(layer(x), y_ref, atol=1e-5)
    np.testing.assert_allclose(layer.mean[...], ref["batch_stats"]["mean"], atol=1e-6)
    np.testing.assert_allclose(layer.var[...], ref["batch_stats"]["var"], rtol=1e-5)
    layer.eval()
    bn_eval = bnjax.BatchNorm(use_running_average=True)
    evaluated = bn_eval.apply({**variables, **updates}, x)
    np.testing.assert_allclose(layer(x), evaluated, atol=1e-6)
