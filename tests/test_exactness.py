"""Exact for every input: outliers first, heavy tails, huge offsets, both layouts (issue: order).

Targets: variance relative error <= 1e-4 and y error <= 1e-3 relative to max(1, |y|); at
offsets of 1e5 and 1e6 std, y error <= 2e-3. All against the float64 oracle.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm
from oracle import batch_stats, reference

import bnjax
from bnjax._core.stats import MAX_CANCELLATION, local_moments


def _errors(x, axis=-1, mask=None, **kwargs):
    """(variance relative error, y error relative to max(1, |y|)) of one training call."""
    features = x.shape[axis]
    params, state = bnjax.init(features)
    y, new_state = jit_batch_norm(x, params, state, True, axis=axis, momentum=0.0, mask=mask,
                                  **kwargs)  # fmt: skip
    y_ref, _, var_ref = reference(x, None, None, state.mean, state.var, True, axis=axis,
                                  momentum=0.0, mask=mask)  # fmt: skip
    var_ref = var_ref.ravel()
    var_err = np.max(np.abs(np.asarray(new_state.var, np.float64) - var_ref) / var_ref)
    y64 = np.asarray(y, np.float64)
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    y_err = np.max((np.abs(y64 - y_ref) / np.maximum(1.0, np.abs(y_ref)))[valid])
    return var_err, y_err


def _outlier_first(rows=20_000, seed=0):
    x = np.random.default_rng(seed).normal(size=(rows, 2)).astype(np.float32)
    x[0] = (3e3, -2e3)
    return x


def _heavy_tailed_nhwc(seed=1):
    """lognormal(0, 2.5) activations with each channel's largest value moved to index 0."""
    x = np.random.default_rng(seed).lognormal(0.0, 2.5, (16, 16, 16, 4)).astype(np.float32)
    flat = x.reshape(-1, 4)
    top = np.argmax(flat, axis=0)
    for c in range(4):
        flat[[0, top[c]], c] = flat[[top[c], 0], c]
    return flat.reshape(x.shape)


def test_outlier_at_the_first_position_keeps_variance_and_y_exact():
    var_err, y_err = _errors(_outlier_first())
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


def test_outlier_at_the_first_valid_position_under_a_mask_keeps_variance_and_y_exact():
    x = _outlier_first(seed=2)
    x[:3] = 0.0  # padding first
    x[3] = (4e3, -5e3)
    mask = np.ones((x.shape[0], 1), bool)
    mask[:3] = False
    var_err, y_err = _errors(x, mask=mask)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_heavy_tails_with_the_largest_value_first_keep_variance_and_y_exact(layout):
    x = _heavy_tailed_nhwc()
    axis = -1
    if layout == "NCHW":
        x, axis = np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1
    var_err, y_err = _errors(x, axis=axis)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6, -1e6])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_huge_offsets_keep_variance_and_y_exact(offset, layout):
    rng = np.random.default_rng(3)
    x = (offset + rng.normal(size=(8, 4, 4, 3))).astype(np.float32)
    axis = -1
    if layout == "NCHW":
        x, axis = np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1
    var_err, y_err = _errors(x, axis=axis)
    assert y_err <= 2e-3, y_err
    # float32 holds x to 1/16 of a std at 1e6; the variance is exact for those values.
    assert var_err <= 1e-4, var_err


def test_bfloat16_input_with_an_outlier_first_keeps_variance_exact_and_y_to_its_rounding():
    x = _outlier_first(rows=4096, seed=4).astype(jnp.bfloat16)
    var_err, y_err = _errors(np.asarray(x, np.float32).astype(jnp.bfloat16))
    assert var_err <= 1e-4, var_err
    assert y_err <= 1e-2, y_err  # bfloat16 output rounding: 2^-8 relative


def test_ghost_batches_with_an_outlier_first_in_a_group_keep_variance_and_y_exact():
    x = _outlier_first(rows=4000, seed=5)
    x[2000] = (-3e3, 2.5e3)  # first element of the second group
    params, state = bnjax.init(2)
    y, new_state = jit_batch_norm(x, params, state, True, momentum=0.0, virtual_batch_size=2000)
    groups = x.reshape(2, 2000, 2)
    y_ref = np.concatenate([
        reference(g, None, None, state.mean, state.var, True)[0] for g in groups
    ])  # fmt: skip
    var_ref = np.mean([batch_stats(g)[2].ravel() for g in groups], axis=0)
    np.testing.assert_allclose(new_state.var, var_ref, rtol=1e-4)
    assert np.max(np.abs(np.asarray(y, np.float64) - y_ref)) <= 1e-3


@pytest.mark.slow
def test_renorm_with_an_outlier_first_keeps_variance_and_y_exact():
    x = _outlier_first(rows=4000, seed=6)
    params, state = bnjax.init(2)
    y, new_state = bnjax.batch_renorm(x, params, state, True, r_max=1.0, d_max=0.0, momentum=0.0)
    y_ref, _, var_ref = reference(x, None, None, state.mean, state.var, True, momentum=0.0)
    np.testing.assert_allclose(new_state.var, var_ref.ravel(), rtol=1e-4)
    assert np.max(np.abs(np.asarray(y, np.float64) - y_ref)) <= 1e-3


def test_second_pass_runs_only_where_the_error_bound_asks_for_it():
    """The shift stays the first rows' mean on ordinary data and moves to the mean otherwise."""
    moments = jax.jit(local_moments, static_argnums=2)
    ordinary = np.random.default_rng(7).normal(5.0, 1.0, (64, 3)).astype(np.float32)
    first_rows_mean = ordinary[:8].astype(np.float64).mean(0, keepdims=True)
    np.testing.assert_allclose(moments(ordinary, None, (0,)).shift, first_rows_mean, rtol=1e-6)

    outlier = np.random.default_rng(8).normal(5.0, 1.0, (4096, 3)).astype(np.float32)
    outlier[0] = 1e4  # the first rows' mean lands ~8 std from the mean: q ~ 65
    result = moments(outlier, None, (0,))
    _, mean_ref, var_ref = batch_stats(outlier)
    first_q = 1 + np.square(outlier[:8].mean(0) - mean_ref) / var_ref
    assert np.all(first_q > MAX_CANCELLATION)
    q = 1 + np.square(np.asarray(result.shift) - mean_ref) / var_ref
    assert np.all(q < 1.001)  # recentred on the first pass's mean
    np.testing.assert_allclose(result.m2 / 4096, var_ref, rtol=1e-5)


def test_second_pass_is_a_conditional_in_the_compiled_program():
    """On XLA:CPU, one conditional (not an unconditional third and fourth reduction).

    The compiled program is read: the choice between the CPU and the accelerator
    statistics (``lax.platform_dependent``) is resolved at lowering.
    """
    x = np.zeros((16, 3), np.float32)
    params, state = bnjax.init(3)
    text = (
        jax.jit(bnjax.batch_norm, static_argnames="train")
        .lower(x, params, state, train=True)
        .compile()
        .as_text()
    )
    assert text.count(" conditional(") == 1
