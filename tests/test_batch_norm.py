"""batch_norm against the float64 oracle: layouts, modes, masks, running statistics."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm, random_array, random_params
from oracle import batch_stats, reference

import bnjax

LAYOUTS = [
    pytest.param((8, 5), -1, id="dense"),
    pytest.param((4, 3, 3, 6), -1, id="nhwc"),
    pytest.param((4, 6, 3, 3), 1, id="nchw"),
    pytest.param((4, 3, 5, 2), (1, 3), id="two-feature-axes"),
    pytest.param((3, 7, 4), (-1,), id="sequence"),
]


def feature_shape(shape, axis):
    axes = sorted(a % len(shape) for a in ((axis,) if isinstance(axis, int) else axis))
    return tuple(shape[a] for a in axes)


def check_against_oracle(bn, x, params, state, train, atol=2e-5, **kwargs):
    y, new_state = bn(x, params, state, train, **kwargs)
    kw = {
        k: v for k, v in kwargs.items() if k in ("axis", "momentum", "epsilon", "unbiased", "mask")
    }
    seen = np.asarray(state.count)  # batches folded in, per feature
    y_ref, mean_ref, var_ref = reference(
        x, params.scale, params.bias, state.mean, state.var, train, seen=seen, **kw
    )
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, atol=atol, rtol=1e-5)
    fs = state.mean.shape
    np.testing.assert_allclose(new_state.mean, mean_ref.reshape(fs), atol=1e-6, rtol=1e-6)
    np.testing.assert_allclose(new_state.var, var_ref.reshape(fs), atol=1e-6, rtol=1e-6)
    return y, new_state


@pytest.mark.slow
@pytest.mark.parametrize("shape, axis", LAYOUTS)
@pytest.mark.parametrize("train", [True, False])
def test_matches_oracle_and_counts_training_calls_across_layouts(bn, shape, axis, train):
    x = random_array(shape, loc=2.0, scale=3.0)
    params, state = random_params(feature_shape(shape, axis))
    _, new_state = check_against_oracle(bn, x, params, state, train, axis=axis)
    assert int(new_state.count) == int(state.count) + train


@pytest.mark.slow
@pytest.mark.parametrize("momentum", [0.99, 0.5, 0.0, 1.0, None])
@pytest.mark.parametrize("unbiased", [False, True])
def test_momentum_and_unbiased_variance_match_oracle(momentum, unbiased):
    x = random_array((6, 4), seed=3)
    params, state = random_params(4)
    check_against_oracle(
        jit_batch_norm, x, params, state, True, momentum=momentum, unbiased=unbiased
    )


def test_init_gives_float32_zero_mean_unit_var_state_and_none_for_disabled_params():
    params, state = bnjax.init((2, 3), use_scale=False, use_bias=False, dtype=jnp.bfloat16)
    assert params == bnjax.BatchNormParams(None, None)
    assert state.mean.shape == (2, 3) and state.mean.dtype == jnp.float32  # never narrower
    np.testing.assert_array_equal(state.mean, np.zeros((2, 3)))
    np.testing.assert_array_equal(state.var, np.ones((2, 3)))
    assert state.count.dtype == jnp.int32  # a count per feature
    np.testing.assert_array_equal(state.count, np.zeros((2, 3)))
    x = random_array((5, 2, 3), seed=4)
    p32, s32 = bnjax.init((2, 3), use_scale=False, use_bias=False)
    check_against_oracle(jit_batch_norm, x, p32, s32, True, axis=(1, 2))


def test_eval_returns_state_unchanged():
    params, state = random_params(4)
    _, new_state = bnjax.batch_norm(random_array((3, 4)), params, state, train=False)
    assert new_state is state


@pytest.mark.slow
@pytest.mark.parametrize(
    "mask_shape",
    [
        pytest.param((6, 5, 1), id="per-token"),
        pytest.param((1, 5, 3), id="per-position-feature"),
        pytest.param((5, 3), id="lower-rank"),
    ],
)
@pytest.mark.parametrize("unbiased", [False, True])
def test_mask_counts_only_valid_elements(bn, mask_shape, unbiased):
    x = random_array((6, 5, 3), seed=5, loc=1.0, scale=2.0)
    mask = np.random.default_rng(6).random(mask_shape) < 0.6
    mask.flat[0] = True  # at least one valid element per feature
    mask.flat[-1] = True
    params, state = random_params(3)
    x_garbage = np.where(np.broadcast_to(mask, x.shape), x, 1e6).astype(np.float32)
    y, _ = check_against_oracle(
        bn, x_garbage, params, state, True, atol=5e-5, mask=mask, unbiased=unbiased
    )
    assert np.all(np.isfinite(y))


def test_padded_sequence_mask_equals_unpadded_batch():
    lengths = np.array([5, 2, 4])
    x = random_array((3, 5, 4), seed=7)
    mask = np.arange(5)[None, :, None] < lengths[:, None, None]
    params, state = random_params(4)
    y, new_state = jit_batch_norm(x, params, state, True, mask=mask, unbiased=True)
    packed = np.concatenate([x[i, : lengths[i]] for i in range(3)])
    y_packed, packed_state = jit_batch_norm(packed, params, state, True, unbiased=True)
    np.testing.assert_allclose(
        np.concatenate([np.asarray(y)[i, : lengths[i]] for i in range(3)]), y_packed, atol=1e-5
    )
    chex.assert_trees_all_close(new_state, packed_state, atol=1e-6)


def test_mask_with_no_valid_element_keeps_state_and_output_finite():
    x = random_array((4, 3))
    params, state = random_params(3)
    y, new_state = jit_batch_norm(x, params, state, True, mask=np.zeros((4, 1), bool))
    assert np.all(np.isfinite(y))
    chex.assert_trees_all_equal(new_state, state)


@pytest.mark.parametrize("momentum", [0.9, None])
def test_running_statistics_in_closed_form_over_several_steps(momentum):
    batches = [random_array((16, 3), seed=s, loc=s, scale=1 + s) for s in range(4)]
    params, state = bnjax.init(3)
    for x in batches:
        _, state = jit_batch_norm(x, params, state, True, momentum=momentum, unbiased=True)
    means = [batch_stats(x)[1].ravel() for x in batches]
    variances = [batch_stats(x)[2].ravel() * 16 / 15 for x in batches]
    if momentum is None:  # the paper's population statistics: plain averages
        expected_mean, expected_var = np.mean(means, 0), np.mean(variances, 0)
    else:  # m^k·init + Σ_i (1 − m)·m^(k−1−i)·batch_i
        k = len(batches)
        weights = [(1 - momentum) * momentum ** (k - 1 - i) for i in range(k)]
        expected_mean = momentum**k * 0.0 + sum(w * m for w, m in zip(weights, means, strict=True))
        expected_var = momentum**k * 1.0 + sum(
            w * v for w, v in zip(weights, variances, strict=True)
        )
    np.testing.assert_allclose(state.mean, expected_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(state.var, expected_var, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.count, [4, 4, 4])


def test_training_loop_compiles_once():
    params, state = bnjax.init(3)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(x, params, state):
        return bnjax.batch_norm(x, params, state, True, momentum=None)

    for seed in range(4):
        _, state = step(jnp.asarray(random_array((8, 3), seed=seed)), params, state)
    np.testing.assert_array_equal(state.count, [4, 4, 4])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_input_gives_low_precision_output_near_oracle_and_float32_state(dtype):
    x = random_array((16, 4), seed=8, loc=3.0).astype(dtype)
    params, state = random_params(4)
    y, new_state = jit_batch_norm(x, params, state, True)
    assert y.dtype == dtype and new_state.mean.dtype == jnp.float32
    y_ref, mean_ref, _ = reference(
        np.asarray(x, np.float64), params.scale, params.bias, state.mean, state.var, True
    )
    tol = 3e-2 if dtype == jnp.bfloat16 else 4e-3
    np.testing.assert_allclose(np.asarray(y, np.float64), y_ref, atol=tol, rtol=tol)
    np.testing.assert_allclose(new_state.mean, mean_ref.ravel(), atol=1e-6, rtol=1e-6)


def test_float64_input_accumulates_in_float64():
    with jax.enable_x64(True):
        x = random_array((32, 3), seed=9, loc=1e8, scale=1.0, dtype=np.float64)
        params, state = bnjax.init(3, dtype=jnp.float64)
        y, new_state = bnjax.batch_norm(x, params, state, True)
        assert y.dtype == jnp.float64
        y_ref, mean_ref, var_ref = reference(x, None, None, state.mean, state.var, True)
        np.testing.assert_allclose(y, y_ref, atol=1e-6)
        np.testing.assert_allclose(new_state.var, var_ref.ravel(), rtol=1e-9)


def test_running_statistics_of_low_precision_params_keep_float32_accuracy():
    params, state = bnjax.init(3, dtype=jnp.bfloat16)
    assert params.scale.dtype == jnp.bfloat16 and state.mean.dtype == jnp.float32
    x = jnp.asarray(random_array((64, 3), seed=11, loc=5.0, scale=2.0))
    step = jax.jit(lambda state: bnjax.batch_norm(x, params, state, True)[1])
    for _ in range(600):
        state = step(state)
    _, mean_ref, _ = reference(x, None, None, None, None, True, momentum=0.0)
    expected = (1 - 0.99**600) * mean_ref.ravel()  # closed form from mean 0
    np.testing.assert_allclose(state.mean, expected, rtol=1e-4)
