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


@needs_compilers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_forward_moves_three_passes_and_has_no_conditional(target, dtype):
    """Read x for the statistics, read x and write y: 3|x| (≤ 3.05|x| with the per-feature
    vectors and the median's sample), no data-dependent control flow, no full-size temporary."""
    shape = FORWARD_SHAPE.get((target, dtype), bench.LAYER_SHAPE)
    found = bench.layer_figures(target, "bnjax", dtype, "fwd", shape)
    assert found["bytes_per_x"] <= 3.05, found
    assert "conditional" not in found["kernel_ops"] and "while" not in found["kernel_ops"]
    assert found["temp_per_x"] < 0.01, found


@needs_compilers
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("target", TARGETS)
def test_forward_backward_moves_no_more_than_flax_and_keeps_nothing_full_size(target, dtype):
    found = bench.layer_figures(target, "bnjax", dtype, "fwd+bwd")
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
    which reads nine elements per feature. TPU v5e: as many as Flax's forward (5) and one
    fewer than its forward+backward (7)."""
    expected = {"h200": (6, 10), "tpu-v5e": (5, 6)}[target]
    found = tuple(
        bench.layer_figures(target, "bnjax", "float32", mode)["kernels"]
        for mode in ("fwd", "fwd+bwd")
    )
    assert all(f <= e for f, e in zip(found, expected, strict=True)), found


@needs_compilers
def test_tpu_cost_model_time_equals_flax():
    """The compiler's own cost model: the same time as Flax's, forward and forward+backward."""
    for mode in ("fwd", "fwd+bwd"):
        found = bench.layer_figures("tpu-v5e", "bnjax", "float32", mode)["seconds"]
        flax = bench.layer_figures("tpu-v5e", "flax.linen", "float32", mode)["seconds"]
        assert found <= flax * 1.001, (mode, found, flax)
