"""Batch statistics across 8 simulated devices and across 2 processes.

The checks live in multidevice_checks.py and run in a process of their own,
because the device count must be set before JAX starts.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import chex
import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
CHECKS = [
    "pmap", "shard_map", "sharded_jit", "axis_index_groups", "axis_index_groups_errors",
    "axis_index_groups_shard_map",
    "one_collective_forward_one_backward", "flax_modules", "outlier_on_one_device",
]  # fmt: skip


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(HERE.parent), env.get("PYTHONPATH", "")])
    env["JAX_PLATFORMS"] = "cpu"
    return env


@pytest.fixture(scope="module")
def results():
    done = subprocess.run(
        [sys.executable, str(HERE / "multidevice_checks.py"), *CHECKS],
        env=_env(8), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("name", CHECKS)
def test_check_passes_on_eight_devices(results, name):
    assert results[name] == "ok", results[name]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_over_loopback_equal_one_global_batch(tmp_path):
    port, out = _free_port(), tmp_path / "result.npz"
    workers = [
        subprocess.Popen(
            [sys.executable, str(HERE / "multiprocess_worker.py"), str(i), str(port), str(out)],
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    try:
        logs = [w.communicate(timeout=240)[0] for w in workers]
    finally:
        for w in workers:
            w.kill()
    assert all(w.returncode == 0 for w in workers), "\n".join(log[-2000:] for log in logs)

    sys.path.insert(0, str(HERE))
    from multidevice_checks import MASK, X, global_reference

    y_ref, state_ref, grad_ref = global_reference(X, MASK)
    got = np.load(out)
    np.testing.assert_allclose(got["y"].reshape(X.shape), y_ref, atol=3e-4)
    np.testing.assert_allclose(got["grad"].reshape(X.shape), grad_ref, atol=1e-3)
    chex.assert_trees_all_close((got["mean"], got["var"]), (state_ref.mean, state_ref.var),
                                rtol=1e-5, atol=1e-4)  # fmt: skip
