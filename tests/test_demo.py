"""The main job (python -m bnjax.demo), its experiment and its data readers."""

import gzip
import json
import pathlib
import re
import struct
import subprocess
import sys

import numpy as np
import pytest

from bnjax import demo
from bnjax._extras import install_command

IDX_CODES = {np.dtype("u1"): 0x08, np.dtype(">i4"): 0x0C, np.dtype(">f4"): 0x0D}


def write_idx(path, array):
    """Writes an IDX file from the format's definition (independent of the reader)."""
    array = np.asarray(array)
    big_endian = array.dtype.newbyteorder(">") if array.dtype.itemsize > 1 else array.dtype
    header = bytes([0, 0, IDX_CODES[big_endian], array.ndim])
    header += struct.pack(f">{array.ndim}I", *array.shape)
    content = header + array.astype(big_endian).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(content)


def write_mnist(directory, train=48, test=24, seed=0, gz=False):
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for split, n in (("train", train), ("t10k", test)):
        write_idx(
            directory / f"{split}-images-idx3-ubyte{suffix}",
            rng.integers(0, 256, (n, 28, 28), np.uint8),
        )
        write_idx(
            directory / f"{split}-labels-idx1-ubyte{suffix}", np.arange(n, dtype=np.uint8) % 10
        )


@pytest.mark.parametrize("dtype", ["u1", "i4", "f4"])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_round_trips(tmp_path, dtype, name):
    array = (np.arange(24).reshape(2, 3, 4) * 7).astype(dtype)
    write_idx(tmp_path / name, array)
    read = demo.read_idx(str(tmp_path / name))
    assert read.dtype == np.dtype(dtype) and read.dtype.isnative
    np.testing.assert_array_equal(read, array)


def test_read_idx_rejects_what_is_not_idx(tmp_path):
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n")
    with pytest.raises(ValueError, match=r"png is not an IDX file: it must start with two zero"):
        demo.read_idx(str(tmp_path / "png"))
    (tmp_path / "code").write_bytes(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(ValueError, match=r"unknown IDX type code 0x07; expected one of 0x08"):
        demo.read_idx(str(tmp_path / "code"))
    (tmp_path / "header").write_bytes(bytes([0, 0, 0x08, 3, 0, 0, 0, 2]))
    with pytest.raises(
        ValueError, match=r"announces 3 dimensions \(16 bytes of header\), .* 8 bytes"
    ):
        demo.read_idx(str(tmp_path / "header"))
    (tmp_path / "fake.gz").write_bytes(bytes([0, 0, 0x08, 1, 0, 0, 0, 1, 5]))
    with pytest.raises(ValueError, match=r"fake.gz ends in .gz but is not gzip-compressed"):
        demo.read_idx(str(tmp_path / "fake.gz"))
    write_idx(tmp_path / "short", np.zeros((4, 5), np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "short").read_bytes()[:-3])
    with pytest.raises(ValueError, match=r"announces shape \(4, 5\) \(20 bytes of uint8\), but 17"):
        demo.read_idx(str(tmp_path / "short"))


@pytest.mark.parametrize("gz", [False, True])
def test_load_mnist_reads_the_four_files(tmp_path, gz):
    write_mnist(tmp_path, gz=gz)
    data = demo.load_mnist(str(tmp_path))
    assert data.name == "mnist" and data.num_classes == 10
    assert data.train_x.shape == (48, 784) and data.test_x.shape == (24, 784)
    assert data.train_x.dtype == np.float32 and 0 <= data.train_x.min() <= data.train_x.max() <= 1
    images = demo.read_idx(str(tmp_path / f"train-images-idx3-ubyte{'.gz' if gz else ''}"))
    np.testing.assert_allclose(data.train_x[5], images[5].reshape(-1) / 255.0, rtol=1e-7)
    np.testing.assert_array_equal(data.test_y, np.arange(24) % 10)


def test_load_mnist_errors_name_the_problem(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=r"MNIST folder .*: no train-images-idx3-ubyte there"
    ):
        demo.load_mnist(str(tmp_path))
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(23, np.uint8))
    with pytest.raises(ValueError, match=r"test images .* got \(24, 28, 28\) and \(23,\)"):
        demo.load_mnist(str(tmp_path))


def test_load_mnist_wants_uint8(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((48, 28, 28), ">f4"))
    with pytest.raises(ValueError, match=r"must be uint8 \(IDX type 0x08\); got float32 and uint8"):
        demo.load_mnist(str(tmp_path))


def test_digits_split_is_stratified_and_scaled():
    data = demo.load_digits()
    assert data.train_x.shape == (1437, 64) and data.test_x.shape == (360, 64)
    assert data.train_x.max() == 1.0 and data.train_x.min() == 0.0
    assert np.bincount(data.test_y).min() >= 35  # about 36 of each digit


# One short run per network, shared by the tests below.
SHORT = demo.ExperimentConfig(steps=600, num_records=3, learning_rate=0.5)


@pytest.fixture(scope="module")
def short_runs():
    return demo.figure1(demo.load_digits(), SHORT, progress=False)


@pytest.mark.slow
def test_experiment_records_on_schedule(short_runs):
    for run in short_runs.values():
        assert run["step"] == [0, 200, 400, 600]
        assert np.isnan(run["train_loss"][0]) and np.all(np.isfinite(run["train_loss"][1:]))
        p15, p50, p85 = (np.asarray(run["percentiles"][k]) for k in ("15", "50", "85"))
        assert np.all(p15 <= p50) and np.all(p50 <= p85)


def test_both_networks_start_from_the_same_weights(short_runs):
    # Before training, eval-mode BN with mean 0, var 1, γ 1, β 0 divides by √(1 + ε) only.
    for k in ("15", "50", "85"):
        bn, baseline = (
            short_runs["bn"]["percentiles"][k][0],
            short_runs["baseline"]["percentiles"][k][0],
        )
        np.testing.assert_allclose(bn, baseline / np.sqrt(1 + 1e-5), rtol=1e-5)
    assert short_runs["bn"]["test_accuracy"][0] == short_runs["baseline"]["test_accuracy"][0]


def test_batch_norm_trains_faster(short_runs):
    # The paper's Figure 1a on digits: after 200 steps BN is far ahead of the same network without.
    bn, baseline = short_runs["bn"]["test_accuracy"], short_runs["baseline"]["test_accuracy"]
    assert bn[1] > 0.8 and bn[1] > baseline[1] + 0.5
    assert bn[-1] > 0.93


def reject_constant(name):
    raise ValueError(f"not strict JSON: {name}")


@pytest.mark.slow
def test_main_writes_results_figure_and_table(tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main(["--steps", "40", "--out", str(out), "--seed", "3"]) == 0
    # Strict JSON: a parser that rejects NaN/Infinity reads it; the missing first loss is null.
    results = json.loads((out / "results.json").read_text(), parse_constant=reject_constant)
    assert results["bn"]["train_loss"][0] is None and results["baseline"]["train_loss"][0] is None
    assert all(isinstance(v, float) for v in results["bn"]["train_loss"][1:])
    assert results["data"] == "digits" and results["config"]["seed"] == 3
    assert "batch_norm" not in results["config"]  # the settings both runs share
    for name in ("bn", "baseline"):
        run = results[name]
        assert run["step"][0] == 0 and run["step"][-1] == 40
        assert len(run["test_accuracy"]) == len(run["step"]) == len(run["percentiles"]["50"])
    assert (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "on digits: 1437 training and 360 test examples; 40 SGD steps of 60" in printed
    assert "acc baseline" in printed and "wrote" in printed


@pytest.mark.slow
def test_main_reads_mnist(tmp_path, capsys):
    write_mnist(tmp_path, train=90, test=30)
    assert demo.main(["--steps", "10", "--out", str(tmp_path / "o"), "--mnist", str(tmp_path)]) == 0
    assert "on mnist: 90 training and 30 test examples" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "results.json").read_text())["data"] == "mnist"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (["--seed", "-1"], "--seed must be an integer in [0, 2**32), got -1"),
        (["--mnist", "/no/such/folder"], "--mnist must be a folder holding the MNIST IDX files"),
        (["--out", __file__], "--out must be a folder (created if missing), got the file"),
    ],
)
def test_main_rejects_bad_arguments_before_training(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(args)
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_record_steps_are_spread_evenly():
    config = demo.ExperimentConfig(steps=7, num_records=3, hidden=(4,), batch_size=5)
    assert demo.run_experiment(config, demo.load_digits(), progress=False)["step"] == [0, 2, 5, 7]


@pytest.mark.parametrize(
    "changes, message",
    [
        (
            {"unit": 100},
            r"ExperimentConfig.unit must index the last hidden layer \(0 … 99\), got 100",
        ),
        ({"hidden": ()}, r"hidden must be a non-empty tuple of positive layer widths, got \(\)"),
        (
            {"activation": "gelu"},
            r"activation must be one of 'sigmoid', 'relu', 'tanh', got 'gelu'",
        ),
        ({"steps": -1}, r"steps must be a non-negative integer, got -1"),
        ({"num_records": 0}, r"num_records must be at least 1, got 0"),
        ({"dropout": 1.0}, r"dropout must be a rate in \[0, 1\), got 1.0"),
        ({"learning_rate": 0.0}, r"learning_rate must be positive, got 0.0"),
    ],
)
def test_bad_experiment_configs_are_named(changes, message):
    with pytest.raises(ValueError, match=message):
        demo.run_experiment(demo.ExperimentConfig()._replace(**changes), demo.load_digits())


def test_strict_json_parser_rejects_what_python_writes_by_default():
    with pytest.raises(ValueError, match="not strict JSON: NaN"):
        json.loads(json.dumps([float("nan")]), parse_constant=reject_constant)
    value = {"a": [float("nan"), float("inf"), -float("inf"), 1.5], "b": (2, "x", None)}
    text = json.dumps(demo.strict_json(value), allow_nan=False)
    assert json.loads(text, parse_constant=reject_constant) == {
        "a": [None, None, None, 1.5],
        "b": [2, "x", None],
    }


@pytest.mark.parametrize(
    "blocked, named",
    [
        (("sklearn",), "scikit-learn"),
        (("matplotlib",), "matplotlib"),
        (("optax",), "optax"),
        (("sklearn", "matplotlib"), "scikit-learn and matplotlib"),
    ],
)
def test_main_without_the_demo_extra_stops_before_any_work(
    tmp_path, capsys, monkeypatch, blocked, named
):
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--steps", "40", "--out", str(out)])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and captured.out == ""
    assert captured.err == (
        f"python -m bnjax.demo needs {named}, not installed here: {install_command('demo')}\n"
    )
    assert not out.exists()  # nothing was done


def _without_cuda_loader_log(stderr):
    """stderr's lines without what the CUDA plugin of the test extra logs at ``import jax``.

    With jax-cuda12-plugin installed (the test extra compiles for an absent H200), importing
    jax on a machine without a driver logs that it found none, before absl is initialized.
    """
    return [
        line
        for line in stderr.splitlines()
        if not line.startswith("WARNING: All log messages before absl::InitializeLog()")
        and not re.match(r"^I\d{4} .*cudart_stub\.cc:\d+\] Could not find cuda drivers", line)
    ]


def test_command_line_without_the_demo_extra(tmp_path):
    # python -m bnjax.demo in a process where scikit-learn cannot be imported: importing
    # bnjax.demo does not need the extra, and the command stops with one line.
    blocked = (
        "import runpy, sys; sys.modules['sklearn'] = None; "
        f"sys.argv = ['bnjax.demo', '--out', {str(tmp_path / 'out')!r}]; "
        "runpy.run_module('bnjax.demo', run_name='__main__', alter_sys=True)"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    assert done.returncode == 2 and done.stdout == ""
    root = pathlib.Path(demo.__file__).resolve().parents[2]  # this checkout, not the cwd
    assert _without_cuda_loader_log(done.stderr) == [
        "python -m bnjax.demo needs scikit-learn, not installed here: "
        f'pip install -e "{root}[demo]"'
    ]
    assert not (tmp_path / "out").exists()


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--help"])
    printed = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "``" not in printed and "::" not in printed  # no reStructuredText markup
    assert "DIR/results.json" in printed and install_command("demo") in printed
    assert 'pip install -e ".[demo]"' in printed and "bnjax[demo]" not in printed
    assert "(default: 50000)" in printed


def test_accuracy_floor_zooms_to_where_the_curves_end():
    def runs(baseline, bn):
        steps = list(range(0, 10 * len(baseline), 10))
        return {
            "baseline": {"step": steps, "test_accuracy": baseline},
            "bn": {"step": steps, "test_accuracy": bn},
        }

    # The digits run: lowest late accuracy 0.958 → 0.908 → rounded down to 0.90.
    assert (
        demo.accuracy_floor(runs([0.1, 0.5, 0.96, 0.958, 0.964], [0.1, 0.9, 0.98, 0.99, 0.992]))
        == 0.9
    )
    # Early records (the climb from chance) do not widen the range; a late dip does.
    assert demo.accuracy_floor(runs([0.1, 0.1, 0.8, 0.85, 0.9], [0.1, 0.1, 0.9, 0.9, 0.9])) == 0.65
    # Room below: at least 60% of the distance to 1, so a poor run shows from 0.
    assert demo.accuracy_floor(runs([0.1, 0.1, 0.1, 0.12, 0.1], [0.1, 0.3, 0.5, 0.7, 0.9])) == 0.0
    # Missing values (null in results.json) are skipped; perfect runs still show a range.
    assert demo.accuracy_floor(runs([0.1, 1.0, None, 1.0, 1.0], [0.1, 1.0, 1.0, 1.0, 1.0])) == 0.95


def test_figure_has_labels_a_zoomed_accuracy_panel_and_the_data_set(tmp_path, short_runs):
    record = demo.strict_json({**short_runs, "data": "digits", "config": {"activation": "sigmoid"}})
    fig = demo.plot_figure1(record, str(tmp_path / "f.png"))
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    assert "digits" in fig.get_suptitle()
    accuracy, without, with_bn = fig.axes
    assert accuracy.get_ylabel() == "test accuracy"
    assert (
        without.get_ylabel() == with_bn.get_ylabel() == "input to one sigmoid (last hidden layer)"
    )
    assert all(ax.get_xlabel() == "training steps" for ax in fig.axes)
    # (a) from 0 to 1: both curves' starts show. The baseline is still climbing after 600 steps:
    # nothing to zoom on (see the next test for the inset).
    assert accuracy.get_ylim() == (0.0, 1.0)
    assert demo.accuracy_floor(short_runs) == 0.0 and accuracy.child_axes == []
    # One style per network in every panel: solid, in the legend's colour.
    for ax in (accuracy, without, with_bn):
        assert {line.get_linestyle() for line in ax.lines} == {"-"}
    assert {line.get_color() for line in without.lines} == {accuracy.lines[0].get_color()}
    assert {line.get_color() for line in with_bn.lines} == {accuracy.lines[1].get_color()}
    # Each percentile line is named at its end, and the caption says why (c) starts as (b).
    for ax in (without, with_bn):
        assert [t.get_text() for t in ax.texts] == ["15th", "50th", "85th"]
    caption = fig.get_supxlabel()
    assert "15th, 50th (thick) and 85th percentiles" in caption
    assert "(c)'s first point is (b)'s" in caption and "momentum 0.99" in caption
    # One legend for the figure, outside the panels: it covers no curve.
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["without BN", "with BN"]
    assert without.get_ylim() == with_bn.get_ylim()  # one scale for (b) and (c)


def test_accuracy_inset_zooms_on_where_the_curves_end():
    steps = [0, 1000, 2000, 3000, 4000]
    runs = {
        name: {
            "step": steps,
            "test_accuracy": accuracy,
            "percentiles": {"15": [-1.0] * 5, "50": [0.0] * 5, "85": [1.0] * 5},
        }
        for name, accuracy in (
            ("baseline", [0.1, 0.9, 0.958, 0.96, 0.964]),
            ("bn", [0.1, 0.97, 0.99, 0.99, 0.992]),
        )
    }
    accuracy = demo.plot_figure1(runs).axes[0]
    assert accuracy.get_ylim() == (0.0, 1.0)  # the starts at 0.1 show
    (inset,) = accuracy.child_axes
    assert inset.get_ylim() == (demo.accuracy_floor(runs), 1.0) == (0.9, 1.0)
    assert inset.get_xlim() == accuracy.get_xlim()
    assert [line.get_color() for line in inset.lines] == ["C0", "C1"]
