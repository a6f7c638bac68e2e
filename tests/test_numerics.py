"""Extreme numerics: huge offsets, float16 overflow, zero variance, NaN batches."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm, random_array, random_params
from oracle import batch_stats, reference

import bnjax


def test_offset_1e4_times_std_is_exact_in_float32():
    offsets = np.array([1e4, -1e4, 5e3, 0.0])
    x = (offsets + random_array((256, 4), seed=10, dtype=np.float64)).astype(np.float32)
    params, state = bnjax.init(4)
    y, new_state = jit_batch_norm(x, params, state, True, momentum=0.0)
    y_ref, mean_ref, var_ref = reference(x, None, None, state.mean, state.var, True, momentum=0.0)
    assert np.abs(np.asarray(y, np.float64) - y_ref).max() < 2e-3
    np.testing.assert_allclose(new_state.var, var_ref.ravel(), rtol=1e-3)
    np.testing.assert_allclose(new_state.mean, mean_ref.ravel(), rtol=1e-6)


def test_offset_with_a_mask_whose_first_element_is_padding_keeps_y_exact():
    x = (1e4 + random_array((64, 2), seed=11, dtype=np.float64)).astype(np.float32)
    x[0] = 0.0  # padding far from the data
    mask = np.ones((64, 1), bool)
    mask[0] = False
    params, state = bnjax.init(2)
    y, _ = jit_batch_norm(x, params, state, True, mask=mask)
    y_ref, _, _ = reference(x, None, None, state.mean, state.var, True, mask=mask)
    assert np.abs(np.asarray(y, np.float64) - y_ref)[1:].max() < 2e-3


def test_float16_whose_squares_overflow_normalizes_finitely_and_exactly():
    x = (1e3 + 30 * random_array((128, 3), seed=12, dtype=np.float64)).astype(np.float16)
    assert float(x.max()) ** 2 > float(np.finfo(np.float16).max)
    params, state = bnjax.init(3)
    y, new_state = jit_batch_norm(x, params, state, True)
    y_ref, _, var_ref = reference(
        np.asarray(x, np.float64), None, None, state.mean, state.var, True
    )
    assert y.dtype == jnp.float16 and np.all(np.isfinite(np.asarray(y, np.float32)))
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, atol=4e-3)
    np.testing.assert_allclose(new_state.var, var_ref.ravel(), rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "x",
    [
        pytest.param(np.full((1, 3), 7.0, np.float32), id="batch-of-one"),
        pytest.param(np.full((5, 3), -2.5, np.float32), id="constant-feature"),
        pytest.param(np.full((3,), 4.0, np.float32), id="no-batch-axis"),
    ],
)
def test_zero_variance_outputs_bias_with_finite_gradients(x):
    params, state = random_params(3)
    y, new_state = jit_batch_norm(x, params, state, True)
    np.testing.assert_array_equal(y, np.broadcast_to(params.bias, x.shape))
    np.testing.assert_allclose(new_state.var, 0.99 * state.var, rtol=1e-6)

    def loss(x, params):
        y, _ = bnjax.batch_norm(x, params, state, True)
        return jnp.sum(jnp.sin(y))

    grads = jax.grad(loss, argnums=(0, 1))(jnp.asarray(x), params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def test_nan_in_one_feature_freezes_that_feature_only():
    x = random_array((8, 3), seed=13)
    x[2, 1] = np.nan
    params, state = random_params(3)
    y, new_state = jit_batch_norm(x, params, state, True)
    assert np.all(np.isnan(np.asarray(y)[:, 1]))  # the output still shows the NaN
    assert np.all(np.isfinite(np.asarray(y)[:, [0, 2]]))
    _, mean_ref, var_ref = reference(x, None, None, state.mean, state.var, True)
    expected_mean = np.where([False, True, False], state.mean, mean_ref.ravel())
    expected_var = np.where([False, True, False], state.var, var_ref.ravel())
    np.testing.assert_allclose(new_state.mean, expected_mean, rtol=1e-6)
    np.testing.assert_allclose(new_state.var, expected_var, rtol=1e-6)
    assert int(new_state.count) == int(state.count) + 1


def test_inf_in_every_feature_leaves_running_statistics_unchanged():
    x = random_array((8, 3), seed=14)
    x[0] = np.inf
    params, state = random_params(3)
    _, new_state = jit_batch_norm(x, params, state, True, momentum=None)
    chex.assert_trees_all_equal(new_state, state)


def test_unbiased_variance_of_one_element_leaves_state_unchanged():
    params, state = random_params(3)
    _, new_state = jit_batch_norm(random_array((1, 3)), params, state, True, unbiased=True)
    chex.assert_trees_all_equal(new_state, state)


@pytest.mark.parametrize("with_mask", [False, True])
def test_moments_are_exact_at_large_offsets(with_mask):
    """The mean within an ulp or so, the variance to float32 rounding, at |mean|/std = 1e4."""
    from bnjax._core.stats import local_moments

    offsets = np.array([1e4, -1e4, 3.0])
    x = (offsets + random_array((6, 50, 3), seed=15, dtype=np.float64)).astype(np.float32)
    mask = None
    if with_mask:
        mask = np.random.default_rng(16).random((6, 50, 1)) < 0.5
        mask[0] = False  # the first example is all padding: the shift falls back
    moments = jax.jit(local_moments, static_argnums=2)(x, mask, (0, 1))
    count, mean_ref, var_ref = batch_stats(x, mask=mask)
    offset_ref = mean_ref - np.asarray(moments.shift, np.float64)
    np.testing.assert_allclose(moments.offset, offset_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(moments.m2) / count, var_ref, rtol=1e-5)
