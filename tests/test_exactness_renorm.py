"""batch_renorm is as exact as batch_norm for every input: offsets, outliers, heavy tails, masks.

d = (μ_B − μ)/σ is computed from the moments' shift and exact offset, (K − μ) + (μ_B − K),
never from the float32-rounded μ_B (which errs by up to 1/32 std at an offset of 1e6).
Targets as for batch_norm (tests/test_exactness.py): y within 2e-3 of the float64 closed
form at offsets up to 1e6 std, 1e-3 relative to max(1, |y|) otherwise.
"""

import jax
import numpy as np
import pytest
from oracle import batch_stats
from oracle import renorm as oracle_renorm

import bnjax

renorm = jax.jit(bnjax.batch_renorm, static_argnames=("train", "axis"))


def _state_near(x, axis, shift, var):
    """Running statistics a given distance (in std) from x's batch mean: d is not clipped."""
    _, mean, batch_var = batch_stats(x, axis)
    features = mean.size
    params = bnjax.BatchNormParams(
        np.linspace(0.5, 2.0, features, dtype=np.float32),
        np.linspace(-1.0, 1.0, features, dtype=np.float32),
    )
    state = bnjax.BatchNormState(
        (mean.ravel() - shift * np.sqrt(batch_var.ravel())).astype(np.float32),
        (var * batch_var.ravel()).astype(np.float32),
        np.full(features, 5, np.int32),
    )
    return params, state


def _y_error(x, axis=-1, mask=None, r_max=3.0, d_max=5.0, shift=0.7, var=1.6):
    params, state = _state_near(x, axis, shift, var)
    y, _ = renorm(x, params, state, True, r_max=r_max, d_max=d_max, axis=axis, mask=mask)
    y_ref, _, d = oracle_renorm(x, params, state, r_max, d_max, axis, mask)
    assert np.all(np.abs(d) < d_max) and np.all(np.abs(d) > 0.1)  # d in play, not clipped
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    err = np.abs(np.asarray(y, np.float64) - y_ref) / np.maximum(1.0, np.abs(y_ref))
    return float(np.max(err[valid]))


@pytest.mark.parametrize("offset", [1e3, 1e4, 1e5, 1e6, -1e6])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_huge_offsets_keep_y_exact(offset, layout):
    x = (offset + np.random.default_rng(3).normal(size=(8, 4, 4, 3))).astype(np.float32)
    axis = -1
    if layout == "NCHW":
        x, axis = np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1
    assert _y_error(x, axis) <= 2e-3


def test_huge_offset_d_equals_the_closed_form():
    """At 1e6, d itself is exact (the rounded μ_B alone would be off by up to 1/32 std)."""
    x = (1e6 + np.random.default_rng(4).normal(size=(4096, 2))).astype(np.float32)
    params, state = _state_near(x, -1, 0.7, 1.6)
    y, _ = renorm(x, params, state, True, r_max=1.0, d_max=5.0)  # r = 1: y − batch_norm's = γ·d
    y_bn, _ = jax.jit(bnjax.batch_norm, static_argnames="train")(x, params, state, True)
    d = (np.asarray(y, np.float64) - np.asarray(y_bn, np.float64)) / np.asarray(params.scale)
    _, _, d_ref = oracle_renorm(x, params, state, 1.0, 5.0)
    np.testing.assert_allclose(d.mean(0), d_ref.ravel(), atol=1e-5)


def test_outlier_first_and_heavy_tails_keep_y_exact():
    x = np.random.default_rng(5).normal(size=(20_000, 2)).astype(np.float32)
    x[0] = (3e3, -2e3)
    assert _y_error(x) <= 1e-3
    tails = np.random.default_rng(6).lognormal(0.0, 2.5, (16, 16, 16, 4)).astype(np.float32)
    flat = tails.reshape(-1, 4)
    top = np.argmax(flat, axis=0)
    for c in range(4):
        flat[[0, top[c]], c] = flat[[top[c], 0], c]
    assert _y_error(tails) <= 1e-3


def test_padding_first_under_a_mask_at_an_offset_keeps_y_exact():
    x = (1e5 + np.random.default_rng(7).normal(size=(4000, 2))).astype(np.float32)
    x[:3] = 0.0  # padding first, far from the data
    mask = np.ones((x.shape[0], 1), bool)
    mask[:3] = False
    params, state = _state_near(x[3:], -1, 0.7, 1.6)
    y, _ = renorm(x, params, state, True, mask=mask)
    y_ref, _, _ = oracle_renorm(x, params, state, 3.0, 5.0, mask=mask)
    err = np.abs(np.asarray(y, np.float64) - y_ref)[3:] / np.maximum(1.0, np.abs(y_ref[3:]))
    assert np.max(err) <= 2e-3
