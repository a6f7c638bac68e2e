"""bnjax's lowering for the accelerators, compiled for an absent H200 and TPU v5e.

The figures of a compiled program are deterministic (see tests/test_accelerators.py for how
they are read), so they are asserted: the layer x (64, 56, 56, 256) NHWC, training forward
and forward+backward (``jax.vjp`` and the pullback of a given cotangent, one program).
"""

import jax
import pytest
from test_accelerators import needs_compilers

from bnjax import bench

TARGETS = ["h200", "tpu-v5e"]
DTYPES = ["float32", "bfloat16"]
# The TPU v5e keeps a bfloat16 x of (64, 56, 56, 256) (98 MiB) in its 128 MiB of on-chip
# memory for the output pass, a copy its cost model counts (7|x|; flax.linen.BatchNorm with a
# bfloat16 output gets the same). At batch 128 x does not fit, and the figure is the
# program's own.
FORWARD_SHAPE = {("tpu-v5e", "bfloat16"): (128, 56, 56, 256)}


def _bnjax(target, dtype, mode, shape=bench.LAYER_SHAPE, common=False):
    """bnjax's layer figures; ``common``: without the TPU statistics' rare second pass."""
    if common:
        with bench.common_path():
            return bench.layer_figures(target, "bnjax", dtype, mode, shape)
    return bench.layer_figures(target, "bnjax", dtype, mode, shape)


@pytest.mark.slow
@needs_compilers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_forward_moves_three_passes_and_has_no_conditional_on_its_path(target, dtype):
    """Read x for the statistics, read x and write y: 3|x| (≤ 3.05|x| with the per-feature
    vectors and the median's sample), no data-dependent control flow, no full-size temporary.
    On the TPU, the path that runs while the running mean is near the batch mean."""
    shape = FORWARD_SHAPE.get((target, dtype), bench.LAYER_SHAPE)
    found = _bnjax(target, dtype, "fwd", shape, common=target == "tpu-v5e")
    assert found["bytes_per_x"] <= 3.05, found
    assert "conditional" not in found["kernel_ops"] and "while" not in found["kernel_ops"]
    assert found["temp_per_x"] < 0.01, found


@needs_compilers
@pytest.mark.parametrize("dtype", DTYPES)
def test_the_tpu_second_pass_is_one_conditional_reading_x_once(dtype):
    """The whole TPU program: the common path plus one conditional whose branch reads x once
    more (the compiled figures count it as if it ran)."""
    shape = FORWARD_SHAPE.get(("tpu-v5e", dtype), bench.LAYER_SHAPE)
    whole = _bnjax("tpu-v5e", dtype, "fwd", shape)
    common = _bnjax("tpu-v5e", dtype, "fwd", shape, common=True)
    assert whole["kernel_ops"]["conditional"] == 1, whole
    assert whole["bytes_per_x"] <= common["bytes_per_x"] + 1.02, (whole, common)
    assert whole["temp_per_x"] < 0.01, whole


@pytest.mark.slow
@needs_compilers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_forward_backward_moves_no_more_than_flax_and_keeps_nothing_full_size(target, dtype):
    found = _bnjax(target, dtype, "fwd+bwd", common=target == "tpu-v5e")
    with jax.numpy_dtype_promotion("standard"):  # flax needs it; the suite sets strict
        flax = bench.layer_figures(target, "flax.linen", dtype, "fwd+bwd")
    # float32: 6|x| like Flax (statistics 1, the backward's two fused sums 2, dx 3);
    # bfloat16: 6|x| on the H200 (Flax 8) and 10|x| on the TPU v5e (Flax 11).
    assert found["bytes"] <= flax["bytes"] * 1.001, (found, flax)
    assert found["temp_per_x"] < 0.01, found
    assert "conditional" not in found["kernel_ops"]


@needs_compilers
@pytest.mark.parametrize("target", TARGETS)
def test_kernel_counts_do_not_grow(target):
    """Pinned where they are. H200: one kernel more than Flax's (5 and 9), the sample median,
    which reads nine elements per feature. TPU v5e, on the common path: as many as Flax's
    forward (5) and one fewer than its forward+backward (7)."""
    expected = {"h200": (6, 10), "tpu-v5e": (5, 6)}[target]
    found = tuple(
        _bnjax(target, "float32", mode, common=target == "tpu-v5e")["kernels"]
        for mode in ("fwd", "fwd+bwd")
    )
    assert all(f <= e for f, e in zip(found, expected, strict=True)), found


@needs_compilers
def test_tpu_cost_model_time_equals_flax_on_the_common_path():
    """The compiler's own cost model: the same time as Flax's, forward and forward+backward."""
    for mode in ("fwd", "fwd+bwd"):
        found = _bnjax("tpu-v5e", "float32", mode, common=True)["seconds"]
        flax = bench.layer_figures("tpu-v5e", "flax.linen", "float32", mode)["seconds"]
        assert found <= flax * 1.001, (mode, found, flax)


@pytest.mark.slow
@needs_compilers
def test_tpu_training_step_matches_flax_on_the_common_path():
    """A whole jitted ResNet-8 training step on the TPU v5e: the statistics' sums centred on the
    running mean fuse into the convolutions that produce x, as Flax's plain sums do, so the
    step moves Flax's bytes in Flax's cost-model time (before: 1.2× through the pairwise
    reduction)."""
    with jax.numpy_dtype_promotion("standard"):  # flax needs it; the suite sets strict
        flax = bench.step_figures("tpu-v5e", "flax.linen", "float32", "resnet8", 16)
        with bench.common_path():
            found = bench.step_figures("tpu-v5e", "bnjax", "float32", "resnet8", 16)
    assert found["bytes"] <= flax["bytes"] * 1.001, (found["bytes"], flax["bytes"])
    assert found["seconds"] <= flax["seconds"] * 1.001, (found["seconds"], flax["seconds"])
    assert found["temp"] <= flax["temp"] * 1.001, (found["temp"], flax["temp"])
