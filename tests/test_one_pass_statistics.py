"""The accelerators' statistics, run here on the CPU.

XLA:GPU programs use ``method="median"`` (one fused pass around a sample median), XLA:TPU
programs ``method="running"`` (a checked pass around the running mean, again where its bound
breaks) or, without a running mean, ``method="pairwise"`` (a variadic reduction with Chan's
combination), chosen when the program is lowered; the arithmetic is the same on every backend,
so their exactness is checked here on the data of tests/test_exactness.py, at the same
tolerances, plus the cases aimed at the median's sample. The running mean given to
``"running"`` is, by the suffix: 0 (``init``'s, before the first step), near the data's mean
(half a std off), far from it (1e4 std off) or NaN (a corrupt state). Targets: variance
relative error <= 1e-4, y error <= 1e-3 relative to max(1, |y|);
at offsets of 1e5 and 1e6 std, y error <= 2e-3. All against the float64 oracle.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle import batch_stats, normalize
from test_exactness import _heavy_tailed_nhwc, _outlier_first

from bnjax._core.stats import Reduction, _median_of_9, batch_moments, local_moments
from bnjax._core.transform import normalize_relative

RUNNING = ["running:zero", "running:near", "running:far", "running:nan"]
ACCELERATORS = pytest.mark.parametrize("method", ["median", "pairwise", *RUNNING])


@functools.partial(jax.jit, static_argnames=("axis", "method"))
def _one_pass(x, mask=None, hint=None, axis=-1, method="median"):
    """(y, variance) with an accelerator's statistics, γ = 1 and β = 0."""
    axis = axis % x.ndim
    reduce_axes = tuple(a for a in range(x.ndim) if a != axis)
    moments = batch_moments(x, mask, Reduction(reduce_axes, method=method), hint)
    one = jnp.ones((), jnp.float32)
    y = normalize_relative(x, one, jnp.zeros((), jnp.float32), moments, 1e-5)
    return y, moments.var


def _running_mean(x, kind, axis=-1):
    """A running mean for ``"running"``, keepdims-shaped, from the data's own statistics."""
    axis = axis % x.ndim
    axes = tuple(a for a in range(x.ndim) if a != axis)
    data = np.asarray(x, np.float64)
    mean, std = data.mean(axes, keepdims=True), data.std(axes, keepdims=True)
    hint = {
        "zero": np.zeros_like(mean),
        "near": mean + 0.5 * std,
        "far": mean + 1e4 * std,
        "nan": np.full_like(mean, np.nan),
    }[kind]
    return hint.astype(np.float32)


def _errors(x, method, axis=-1, mask=None):
    hint = None
    if method.startswith("running:"):
        method, kind = method.split(":")
        hint = _running_mean(x, kind, axis)
    y, var = _one_pass(x, mask, hint, axis=axis, method=method)
    _, mean_ref, var_ref = batch_stats(np.asarray(x, np.float32), axis=axis, mask=mask)
    y_ref = normalize(np.asarray(x, np.float32), mean_ref, var_ref, 1.0, 0.0, 1e-5)
    var_err = np.max(np.abs(np.asarray(var, np.float64) - var_ref) / var_ref)
    valid = np.ones(x.shape, bool) if mask is None else np.broadcast_to(mask, x.shape)
    y64 = np.asarray(y, np.float64)
    y_err = np.max((np.abs(y64 - y_ref) / np.maximum(1.0, np.abs(y_ref)))[valid])
    return var_err, y_err


@ACCELERATORS
def test_outlier_at_the_first_position_keeps_variance_and_y_exact(method):
    var_err, y_err = _errors(_outlier_first(), method)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


@ACCELERATORS
def test_outliers_at_four_of_the_nine_sampled_positions_keep_variance_and_y_exact(method):
    """The median ignores up to four sampled outliers: q stays near 1."""
    x = _outlier_first(rows=20_001, seed=9)
    rows = [i * 20_000 // 8 for i in range(9)]
    x[rows[:4]] = (3e3, -2e3)
    var_err, y_err = _errors(x, method)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


@ACCELERATORS
def test_outlier_at_the_first_valid_position_under_a_mask_keeps_variance_and_y_exact(method):
    x = _outlier_first(seed=2)
    x[:3] = 0.0  # padding first
    x[3] = (4e3, -5e3)
    mask = np.ones((x.shape[0], 1), bool)
    mask[:3] = False
    var_err, y_err = _errors(x, method, mask=mask)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


def test_a_mask_that_hides_every_sampled_row_falls_back_to_the_first_valid_rows():
    """At an offset of 1e4 std a shift of 0 would cost ~1e8 eps; the first valid rows' is exact."""
    x = (1e4 + np.random.default_rng(10).normal(size=(64, 3))).astype(np.float32)
    mask = np.zeros((64, 1), bool)
    mask[1:7] = True  # none of rows 0, 7, 15, …, 63 (the sample) is valid
    moments = jax.jit(local_moments, static_argnums=(2, 3))(x, mask, (0,), "median")
    np.testing.assert_allclose(moments.shift, x[1:7].mean(0, keepdims=True), rtol=1e-6)
    var_err, y_err = _errors(x, "median", mask=mask)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@ACCELERATORS
def test_heavy_tails_with_the_largest_value_first_keep_variance_and_y_exact(layout, method):
    x = _heavy_tailed_nhwc()
    axis = -1
    if layout == "NCHW":
        x, axis = np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1
    var_err, y_err = _errors(x, method, axis=axis)
    assert var_err <= 1e-4 and y_err <= 1e-3, (var_err, y_err)


@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6, -1e6])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@ACCELERATORS
def test_huge_offsets_keep_variance_and_y_exact(offset, layout, method):
    x = (offset + np.random.default_rng(3).normal(size=(8, 4, 4, 3))).astype(np.float32)
    axis = -1
    if layout == "NCHW":
        x, axis = np.ascontiguousarray(np.moveaxis(x, -1, 1)), 1
    var_err, y_err = _errors(x, method, axis=axis)
    assert y_err <= 2e-3 and var_err <= 1e-4, (var_err, y_err)


@ACCELERATORS
def test_bfloat16_input_with_an_outlier_first_keeps_variance_exact_and_y_to_its_rounding(method):
    x = jnp.asarray(_outlier_first(rows=4096, seed=4)).astype(jnp.bfloat16)
    var_err, y_err = _errors(x, method)
    assert var_err <= 1e-4, var_err
    assert y_err <= 1e-2, y_err  # bfloat16 output rounding: 2^-8 relative


def test_the_shift_is_the_median_of_the_nine_sampled_elements():
    """Rows i·(n−1)//8 for i in 0..8, at the middle of each spatial axis."""
    x = np.random.default_rng(11).normal(size=(20, 5, 6, 3)).astype(np.float32)
    moments = jax.jit(local_moments, static_argnums=(2, 3))(x, None, (0, 1, 2), "median")
    sample = x[[i * 19 // 8 for i in range(9)], 2, 3]
    np.testing.assert_array_equal(np.asarray(moments.shift).reshape(3), np.median(sample, 0))


@pytest.mark.slow
def test_every_method_agrees_with_the_oracle_on_ordinary_data():
    x = np.random.default_rng(12).normal(3.0, 2.0, (16, 4, 4, 8)).astype(np.float32)
    _, mean_ref, var_ref = batch_stats(x)
    hint = np.full((1, 1, 1, 8), 2.5, np.float32)
    for method in ("checked", "median", "pairwise", "running"):
        moments = batch_moments(x, None, Reduction((0, 1, 2), method=method), hint)
        np.testing.assert_allclose(moments.mean, mean_ref, rtol=1e-6)
        np.testing.assert_allclose(moments.var, var_ref, rtol=1e-5)


@pytest.mark.parametrize("method", ["median", "pairwise", "running"])
def test_a_nan_leaves_only_its_own_feature_non_finite(method):
    x = np.random.default_rng(13).normal(size=(32, 3)).astype(np.float32)
    x[5, 1] = np.nan
    moments = batch_moments(x, None, Reduction((0,), method=method), np.zeros((1, 3), np.float32))
    assert np.isnan(np.asarray(moments.var)[0, 1])
    np.testing.assert_allclose(np.asarray(moments.var)[0, [0, 2]], x[:, [0, 2]].var(0), rtol=1e-5)


def test_the_min_max_network_is_the_median_of_nine():
    """Against np.median: draws with many ties and draws of distinct values."""
    rng = np.random.default_rng(14)
    values = np.concatenate([rng.integers(0, 3, (4000, 9)), rng.normal(size=(4000, 9))])
    median = jax.jit(lambda v: _median_of_9(list(v.T)))(jnp.asarray(values, jnp.float32))
    np.testing.assert_array_equal(median, np.median(values, axis=1).astype(np.float32))


def test_the_pairwise_mean_keeps_what_float32_rounds_away():
    """At an offset of 1e6 std the rounded mean is off by up to 1/32 std; mean + its correction
    is exact to far better than that, in any order of the elements."""
    rng = np.random.default_rng(15)
    x = (1e6 + rng.normal(size=(4096, 3))).astype(np.float32)
    moments = jax.jit(local_moments, static_argnums=(2, 3))(x, None, (0,), "pairwise")
    exact = x.astype(np.float64).mean(0)
    total = np.asarray(moments.shift, np.float64) + np.asarray(moments.offset, np.float64)
    np.testing.assert_allclose(total.ravel(), exact, rtol=0, atol=1e-4)
    np.testing.assert_allclose(moments.count.ravel(), 4096)


_local_moments = jax.jit(local_moments, static_argnums=(2, 3))


def test_the_running_mean_is_the_shift_while_its_bound_holds():
    """Near the batch mean, one pass around the running mean itself (no second pass)."""
    x = (50.0 + np.random.default_rng(16).normal(size=(64, 3))).astype(np.float32)
    hint = np.array([[50.5, 49.0, 51.0]], np.float32)  # q = 1 + (K − μ)²/σ² < 8
    moments = _local_moments(x, None, (0,), "running", hint)
    np.testing.assert_array_equal(moments.shift, hint)
    np.testing.assert_allclose(moments.m2 / 64, x.astype(np.float64).var(0, keepdims=True), 1e-5)


@pytest.mark.parametrize("kind", ["far", "nan"])
def test_a_running_mean_far_from_the_data_or_not_finite_takes_the_second_pass(kind):
    """The second pass centres on the first pass's mean: within a fraction of a std of μ."""
    x = (1e4 + np.random.default_rng(17).normal(size=(64, 3))).astype(np.float32)
    hint = _running_mean(x, kind)
    moments = _local_moments(x, None, (0,), "running", hint)
    std = x.astype(np.float64).std(0, keepdims=True)
    assert np.all(np.abs(np.asarray(moments.shift) - x.astype(np.float64).mean(0)) < 0.1 * std)
    assert np.all(np.isfinite(np.asarray(moments.m2)))


def test_a_running_mean_shared_by_ghost_batches_centres_every_group():
    """One running mean for several groups (ghost batches): broadcast to each group's shift."""
    x = np.random.default_rng(18).normal(size=(2, 16, 3)).astype(np.float32)
    moments = _local_moments(x, None, (1,), "running", np.zeros((1, 1, 3), np.float32))
    assert moments.shift.shape == (2, 1, 3)
    np.testing.assert_allclose(moments.m2[:, 0] / 16, x.astype(np.float64).var(1), rtol=1e-5)
