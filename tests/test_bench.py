"""The benchmark program runs end to end on a tiny shape (timings are not asserted)."""

import json

import jax

from bnjax import bench


def test_bench_writes_records_and_table(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(bench, "SHAPES_QUICK", [(8, 2, 2, 4)])
    path = tmp_path / "bench.json"
    with jax.numpy_dtype_promotion("standard"):  # flax.linen.BatchNorm needs it for bfloat16
        assert bench.main(["--quick", "--repeats", "2", "--json", str(path)]) == 0
    records = json.loads(path.read_text())["records"]
    assert {r["impl"] for r in records} == {"bnjax", "flax.linen"}
    assert {r["mode"] for r in records} == {"fwd", "fwd+bwd"}
    assert {r["dtype"] for r in records} == {"float32", "bfloat16"}
    assert all(r["shape"] == [8, 2, 2, 4] and r["median_ms"] > 0 for r in records)
    saved = {r["impl"]: r["saved_bytes_ratio"] for r in records if r["dtype"] == "float32"}
    assert saved["flax.linen"] >= 1.9  # Flax keeps two float32 copies of x
    out = capsys.readouterr().out
    assert "median flax/bnjax ratio, fwd+bwd:" in out and "fwd+bwd (1 jit)" in out
