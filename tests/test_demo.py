"""The main job (python -m bnjax.demo), its experiment and its data readers."""

import gzip
import json
import struct

import numpy as np
import pytest

from bnjax import demo

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


def test_main_writes_results_figure_and_table(tmp_path, capsys):
    out = tmp_path / "out"
    assert demo.main(["--steps", "40", "--out", str(out), "--seed", "3"]) == 0
    results = json.loads((out / "results.json").read_text())
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
