"""The benchmark's accelerator mode: programs compiled for an absent H200 and TPU v5e.

The figures of a compiled program are deterministic, so they are asserted exactly (or to the
bytes' last percent). Only flax.linen's are asserted here: it is the reference every ratio is
taken against.
"""

import importlib.util
import json

import jax
import pytest

from bnjax import bench
from bnjax.bench import _hlo, _targets

COMPILERS = {
    "h200": importlib.util.find_spec("jax_plugins") is not None
    and importlib.util.find_spec(_targets.CUDA_PLUGIN) is not None,
    "tpu-v5e": importlib.util.find_spec("libtpu") is not None,
}
needs_compilers = pytest.mark.skipif(
    not all(COMPILERS.values()), reason='the compilers of the test extra: pip install -e ".[test]"'
)

HLO = """\
HloModule jit_f, is_scheduled=true

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %sum = f32[] add(%a, %b)
}

%fused_reduce (p: f32[8,128]) -> f32[128] {
  %p = f32[8,128]{1,0} parameter(0)
  %zero = f32[] constant(0)
  ROOT %r = f32[128]{0} reduce(%p, %zero), dimensions={0}, to_apply=%add
}

%body (t: (s32[], f32[8,128])) -> (s32[], f32[8,128]) {
  %t = (s32[], f32[8,128]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %v = f32[8,128]{1,0} get-tuple-element(%t), index=1
  %w = f32[8,128]{1,0} fusion(%v), kind=kLoop, calls=%fused_reduce
  ROOT %out = (s32[], f32[8,128]{1,0}) tuple(%i, %w)
}

%cond (t: (s32[], f32[8,128])) -> pred[] {
  %t.1 = (s32[], f32[8,128]{1,0}) parameter(0)
  %i.1 = s32[] get-tuple-element(%t.1), index=0
  %n = s32[] constant(4)
  ROOT %lt = pred[] compare(%i.1, %n), direction=LT
}

%wrapped_reduce_scatter (q: f32[8,128]) -> f32[1,128] {
  %q = f32[8,128]{1,0} parameter(0)
  ROOT %rs = f32[1,128]{1,0} reduce-scatter(%q), dimensions={0}, to_apply=%add
}

ENTRY %main (x: f32[8,128], y: bf16[4,128]) -> f32[128] {
  %x = f32[8,128]{1,0} parameter(0)
  %y = bf16[4,128]{1,0} parameter(1)
  %c = f32[] constant(1)
  %view = f32[1024]{0} bitcast(%x)
  %barrier = (f32[8,128]{1,0}) opt-barrier(%x)
  %conv = (f32[8,128]{1,0}, u8[4096]{0}) custom-call(%x, %y), custom_call_target="__cudnn$conv"
  %g = f32[8,128]{1,0} get-tuple-element(%conv), index=0
  %ar = f32[8,128]{1,0} all-reduce-start(%g), replica_groups={}, to_apply=%add
  %ard = f32[8,128]{1,0} all-reduce-done(%ar)
  %cs = (f32[8,128]{1,0}, f32[8,128]{1,0}, u32[]) copy-start(%ard)
  %cd = f32[8,128]{1,0} copy-done(%cs)
  %as = ((f32[8,128]{1,0}), f32[1,128]{1,0}) async-start(%cd), calls=%wrapped_reduce_scatter
  %ad = f32[1,128]{1,0} async-done(%as)
  %zero = s32[] constant(0)
  %init = (s32[], f32[8,128]{1,0}) tuple(%zero, %cd)
  %loop = (s32[], f32[8,128]{1,0}) while(%init), condition=%cond, body=%body
  %cp = bf16[4,128]{1,0} collective-permute(%y), source_target_pairs={{0,1}}
  %r = f32[8,128]{1,0} get-tuple-element(%loop), index=1
  ROOT %f = f32[128]{0} fusion(%r), kind=kInput, calls=%fused_reduce
}
"""


def test_kernels_count_what_launches_work():
    assert _hlo.kernels(HLO) == {
        "custom-call": 1,  # a cuDNN convolution
        "all-reduce-start": 1,  # an asynchronous pair counts once
        "copy-start": 1,
        "reduce-scatter": 1,  # inside async-start's wrapped computation
        "while": 1,  # the loop itself, and what its body and condition launch:
        "fusion": 2,  # the body's fusion and the root fusion (fused computations not entered)
        "compare": 1,  # the condition's unfused compare
        "collective-permute": 1,
    }  # no parameter, constant, bitcast, opt-barrier, tuple or get-tuple-element


def test_collectives_and_their_bytes():
    assert _hlo.collectives(HLO) == {
        "all-reduce": {"count": 1, "bytes": 8 * 128 * 4},
        "reduce-scatter": {"count": 1, "bytes": 8 * 128 * 4},
        "collective-permute": {"count": 1, "bytes": 4 * 128 * 2},
    }


def test_custom_call_bytes_leave_out_the_workspace():
    assert _hlo.custom_call_bytes(HLO) == 2 * 8 * 128 * 4 + 4 * 128 * 2


def test_array_bytes():
    assert _hlo.array_bytes("(f32[2,3]{1,0:T(8,128)}, bf16[4]{0}, pred[], token[])") == 24 + 8 + 1
    assert _hlo.array_bytes("s4[4]{0}") == 2


# flax.linen.BatchNorm's training forward, float32, x (64, 56, 56, 256): at the pass floor
# on both targets. H200: five fusions (the two sums as one multi-output row reduction in two
# stages, two finishing reductions, the per-feature scale and shift, the normalizing pass);
# TPU v5e: three fusions (the sums, the per-feature vectors, the normalizing pass) and two
# asynchronous copies of the parameters into faster memory.
FLAX_FORWARD = {
    "h200": {"kernels": 5, "seconds": None},
    "tpu-v5e": {"kernels": 5, "seconds": pytest.approx(835.9e-6, rel=1e-3)},
}


@needs_compilers
@pytest.mark.parametrize("target", ["h200", "tpu-v5e"])
def test_flax_linen_forward_is_at_the_floor_and_deterministic(target):
    found = bench.layer_figures(target, "flax.linen", "float32", "fwd")
    assert found["bytes_per_x"] == pytest.approx(3.0, abs=0.01)
    assert found["bytes_total"] == found["bytes"]  # no custom calls
    assert found["x_bytes"] == 64 * 56 * 56 * 256 * 4
    assert found["temp_per_x"] < 0.01  # per-feature vectors only
    assert {k: found[k] for k in FLAX_FORWARD[target]} == FLAX_FORWARD[target]
    assert bench.layer_figures(target, "flax.linen", "float32", "fwd") == found


@needs_compilers
def test_flax_linen_forward_backward_on_the_h200():
    found = bench.layer_figures("h200", "flax.linen", "float32", "fwd+bwd")
    # Flax's autodiff backward: 6|x| in one program (the floor is 5), nine fusions.
    assert found["bytes_per_x"] == pytest.approx(6.0, abs=0.02)
    assert found["kernels"] == 9 and found["temp_per_x"] < 0.01


def _no_constants(name):
    raise ValueError(f"not strict JSON: {name}")


@pytest.mark.slow
@needs_compilers
def test_cli_compiles_for_both_targets_and_writes_strict_json(tmp_path, capsys):
    path = tmp_path / "accelerators.json"
    args = ["--target", "h200", "--target", "tpu-v5e,h200", "--layers", "--quick"]
    with jax.numpy_dtype_promotion("standard"):  # flax needs it; the suite sets strict
        assert bench.main([*args, "--impls", "flax.linen", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "Compiled programs, not timings on a device" in out
    assert "layer, x 64×56×56×256: HBM bytes / |x|" in out
    result = json.loads(path.read_text(), parse_constant=_no_constants)["accelerators"]
    assert set(result["targets"]) == {"h200", "tpu-v5e"} and "step" not in result
    records = result["layer"]
    configs = {(r["target"], r["dtype"], r["mode"], r["impl"]) for r in records}
    assert configs == {
        (t, d, m, i)
        for t in ("h200", "tpu-v5e")
        for d in ("float32", "bfloat16")
        for m in ("fwd", "fwd+bwd")
        for i in ("bnjax", "flax.linen")
    } | {  # bnjax's TPU program once more without its statistics' rare second pass
        ("tpu-v5e", d, m, bench.COMMON_PATH)
        for d in ("float32", "bfloat16")
        for m in ("fwd", "fwd+bwd")
    }
    assert "'bnjax, common path': bnjax's TPU program" in out
    for r in records:
        assert r["floor_per_x"] == {"fwd": 3, "fwd+bwd": 5}[r["mode"]]
        assert r["bytes_vs_floor"] == pytest.approx(r["bytes_per_x"] / r["floor_per_x"])
        if r["impl"] == "flax.linen":
            assert r["bytes_vs_flax"] == 1.0 and r["kernels_vs_flax"] == 1.0
        assert (r["seconds"] is None) == (r["target"] == "h200" or r["seconds"] is None)


def test_missing_compilers_stop_before_any_work(monkeypatch, capsys):
    absent = _targets.Target("tpu", "v5e:2x2", (), "no_such_compiler", "pip install it")
    monkeypatch.setitem(_targets.TARGETS, "tpu-v5e", absent)
    monkeypatch.setattr(bench, "load_impls", None)  # nothing past the check may run
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--target", "tpu-v5e", "--impls", "flax.linen"])
    assert exit_info.value.code == 2
    assert "tpu-v5e needs its compiler: pip install it" in capsys.readouterr().err


def test_unknown_targets_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--target", "h100"])
    assert exit_info.value.code == 2 and "unknown ['h100']" in capsys.readouterr().err
