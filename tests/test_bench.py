"""The benchmark program runs end to end on a tiny shape (timings are not asserted)."""

import dataclasses
import importlib.util
import json
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bnjax import bench
from bnjax._extras import install_command

TINY = (16, 4, 4, 8)  # big enough that per-feature vectors are < 5% of x
TOP_MODULE = {name: impl.module.split(".")[0] for name, impl in bench.IMPLS.items()}
INSTALLED = {name for name, module in TOP_MODULE.items() if importlib.util.find_spec(module)}


def run_main(monkeypatch, capsys, *args):
    """Runs ``bench.main`` on TINY with 2 repetitions; returns the printed text."""
    monkeypatch.setattr(bench, "SHAPES_QUICK", [TINY])
    with jax.numpy_dtype_promotion("standard"):  # flax and optax need it; the suite sets strict
        assert bench.main(["--layers", "--quick", "--repeats", "2", *args]) == 0
    return capsys.readouterr().out


def _no_constants(name):
    raise ValueError(f"not strict JSON: {name}")


@pytest.mark.slow
def test_bench_writes_records_table_and_plot(tmp_path, monkeypatch, capsys):
    path, png = tmp_path / "bench.json", tmp_path / "bench.png"
    out = run_main(monkeypatch, capsys, "--json", str(path), "--plot", str(png))
    result = json.loads(path.read_text(), parse_constant=_no_constants)
    records = result["records"]
    assert "model" not in result  # --layers: the training-step benchmark did not run
    assert {r["impl"] for r in records} == INSTALLED  # every installed peer ran
    assert {r["mode"] for r in records} == {"fwd", "fwd+bwd", "eval"}
    for impl in ("bnjax", "flax.linen", "flax.nnx"):
        configs = {(r["dtype"], r["mode"]) for r in records if r["impl"] == impl}
        assert configs == {(d, m) for d in ("float32", "bfloat16") for m in bench.MODES}
    assert all(r["shape"] == list(TINY) and r["median_ms"] > 0 for r in records)
    assert all(0 < r["bandwidth_fraction"] <= 1 and r["copy_gbps"] > 0 for r in records)
    assert result["copy_bandwidth_method"] == bench.COPY_METHOD and result["device"]
    assert {"jax", "jaxlib", "flax"} <= set(result["versions"])
    saved = {(r["impl"], r["dtype"]): r["saved_bytes_ratio"] for r in records}
    assert saved[("flax.linen", "float32")] >= 1.9  # Flax keeps two float32 copies of x
    assert saved[("bnjax", "float32")] < 0.05 and saved[("bnjax", "bfloat16")] < 0.05
    ratio = {(r["impl"], r["dtype"], r["mode"]): r["ratio_vs_bnjax"] for r in records}
    assert ratio[("bnjax", "float32", "fwd")] == 1.0 and ratio[("flax.nnx", "float32", "eval")] > 0
    for text in ("median flax.linen/bnjax ratio, fwd+bwd:", "flax.nnx/bnjax ratio, eval:"):
        assert text in out
    assert "fwd+bwd (1 jit)" in out and "fraction of copy bandwidth" in out
    assert png.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_failing_peers_are_noted(tmp_path, monkeypatch, capsys):
    other_backend = types.SimpleNamespace(backend=types.SimpleNamespace(backend=lambda: "torch"))
    monkeypatch.setitem(sys.modules, "keras", other_backend)

    def no_bfloat16(x, cotangent):
        if x.dtype == jnp.bfloat16:
            raise TypeError("no bfloat16 here")
        return bench.IMPLS["bnjax"].timed(x, cotangent)

    monkeypatch.setitem(bench.IMPLS, "flaky", bench.Impl("bnjax", "bnjax", no_bfloat16))
    path = tmp_path / "bench.json"
    out = run_main(monkeypatch, capsys, "--impls", "keras,flaky", "--json", str(path))
    assert "skipped keras: keras was imported with the torch backend" in out
    assert "flaky: nothing recorded on [16, 4, 4, 8] bfloat16: TypeError: no bfloat16 here" in out
    records = json.loads(path.read_text())["records"]
    assert {(r["impl"], r["dtype"]) for r in records} == {
        ("bnjax", "float32"),
        ("bnjax", "bfloat16"),
        ("flaky", "float32"),
    }


@pytest.mark.parametrize(
    "args, missing",
    [
        ([], "haiku_is_not_installed"),  # every JAX peer is needed by default
        (["--impls", "haiku"], "haiku_is_not_installed"),
        (["--impls", "flax.linen", "--plot", "b.png"], "matplotlib"),
        (["--model", "--impls", "flax.linen"], "optax"),
    ],
)
def test_missing_dependencies_stop_before_any_work(args, missing, monkeypatch, capsys):
    missing_peer = dataclasses.replace(bench.IMPLS["haiku"], module="haiku_is_not_installed")
    monkeypatch.setitem(bench.IMPLS, "haiku", missing_peer)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "optax", None)
    monkeypatch.setattr(bench, "load_impls", None)  # nothing past the check may run
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1
    assert missing in err and err.endswith(install_command("bench"))
    assert 'pip install -e "' in err  # this checkout: an editable install of the extra


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--model" in out and "training step" in out
    assert "``" not in out and "::" not in out
    assert "_PASSES" not in out and install_command("bench") in out
    assert "bnjax[bench]" not in out  # not published: that command cannot work


def test_bandwidth_fractions_never_exceed_one():
    nbytes = 4 << 20
    medians = {("bnjax", "fwd"): 2.0, ("bnjax", "eval"): 1.0, ("peer", "fwd+bwd"): 8.0}
    # The copy (2 passes in 1 ms) is the fastest: fractions are each rate over the copy's.
    fractions, reference, faster = bench.bandwidth_fractions(medians, 1.0, nbytes)
    assert reference == 2 * nbytes / 1e-3 and faster is None
    assert fractions == {("bnjax", "fwd"): 0.75, ("bnjax", "eval"): 1.0, ("peer", "fwd+bwd"): 0.5}
    # A forward that moves its 3 passes faster than the copy moves 2 sets the reference.
    medians = {("bnjax", "fwd"): 2.0, ("bnjax", "eval"): 2.0}
    fractions, reference, faster = bench.bandwidth_fractions(medians, 1.6, nbytes)
    assert faster == ("bnjax", "fwd") and reference == 3 * nbytes / 2e-3
    assert fractions == {("bnjax", "fwd"): 1.0, ("bnjax", "eval"): pytest.approx(2 / 3)}


def test_notes_keep_whole_sentences():
    error = TypeError(
        "lax.select requires arguments to have the same dtypes, got float32, bfloat16. (Tip: "
        "jnp.where is a similar function that does automatic type promotion on inputs).\nmore"
    )
    assert bench._loading.error_text(error) == (
        "TypeError: lax.select requires arguments to have the same dtypes, got float32, bfloat16."
    )
    long = ValueError("word " * 50)
    text = bench._loading.error_text(long, limit=40)
    assert text == "ValueError: " + "word " * 7 + "word …"


@pytest.mark.parametrize("low, high", [(0.7, 3.5), (0.45, 8.0), (0.1, 50.0), (0.9, 1.3)])
def test_ratio_ticks_are_apart(low, high):
    ticks = bench._report.ratio_ticks(low, high)
    assert 1 in ticks and all(low <= t <= high for t in ticks)
    gaps = np.diff(np.log10(ticks))
    assert gaps.min() >= np.log10(high / low) / bench._report.MAX_RATIO_TICKS - 1e-12


@pytest.mark.parametrize(
    "args, message",
    [
        (["--impls", "bnjax,nope"], "unknown ['nope']"),
        (["--repeats", "0"], "--repeats: must be a positive integer, got 0"),
        (["--json", "/no/such/folder/b.json"], "--json: the folder of '/no/such/folder/b.json'"),
        (["--plot", "/no/such/folder/b.png"], "--plot: the folder of '/no/such/folder/b.png'"),
    ],
)
def test_bad_arguments_are_usage_errors(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_impls_are_timed_once_each():
    assert bench._parse_impls("flax.linen,bnjax,flax.linen") == ["bnjax", "flax.linen"]


JAX_PEERS = {
    "flax.linen": bench.flax_linen_peer,
    "flax.nnx": bench.flax_nnx_peer,
    "haiku": bench.haiku_peer,
    "equinox": bench.equinox_peer,
    "bnjax.equinox": bench.bnjax_equinox_peer,
    "keras": bench.keras_peer,
}


# Running statistics as the peers start them: Haiku's init call (is_training=True) already averaged
# one batch, Equinox's "ema" mode starts at variance 0; the others (bnjax.equinox's "ema" mode
# too) at mean 0, variance 1 as bnjax.
EVAL_MATCHES_BNJAX = {"flax.linen", "flax.nnx", "bnjax.equinox", "keras"}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(JAX_PEERS))
@pytest.mark.parametrize("train", [True, False])
def test_jax_peers_compute_batch_norm(name, train):
    """Each adapter computes batch norm: bnjax's output, in the peer's layout."""
    pytest.importorskip(TOP_MODULE[name])
    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, TINY), jnp.float32)
    with jax.numpy_dtype_promotion("standard"):
        peer, reference = JAX_PEERS[name](x), bench.bnjax_peer(x)
        y = jax.jit(peer.forward, static_argnums=2)(peer.layout(x), peer.params, train)
        expected = peer.layout(reference.forward(x, reference.params, train))
    assert y.shape == expected.shape and bool(jnp.isfinite(y).all())
    if train or name in EVAL_MATCHES_BNJAX:
        tolerance = 2e-3 if name == "keras" else 1e-4  # Keras's epsilon is 1e-3, the others' 1e-5
        np.testing.assert_allclose(y, expected, rtol=tolerance, atol=tolerance)


def test_torch_adapter_runs_and_saves_little():
    x = jnp.asarray(np.random.default_rng(0).normal(3.0, 2.0, TINY), jnp.float32)
    calls, saved = bench.IMPLS["torch"].timed(x, jnp.ones_like(x))
    assert set(calls) == set(bench.MODES)
    for call in calls.values():
        call()
    assert saved < 0.2  # autograd keeps x and per-channel vectors
