"""The package as a user gets it: the wheel's contents and metadata, and a fresh install of it.

The wheel is built as ``pip wheel . --no-deps`` builds it, offline: with the hatchling of the
test environment (``--no-build-isolation``; the ``test`` extra installs it) where there is one,
else with pip's isolated build (which downloads hatchling).

The fresh virtual environment gets bnjax from the wheel and from nowhere else. Its
dependencies (jax, flax, ..., and the ``demo`` extra) are not downloaded again, which takes
minutes and the network: a ``.pth`` file appends the test environment's site-packages to the
fresh environment's path, after its own site-packages and as a plain path, so that the ``.pth``
files in there (among them the editable install of this checkout) do not run. The tests assert
that bnjax is imported from the fresh environment and that the reused packages satisfy what the
wheel requires. A fresh environment with a real ``pip install .`` from the package index was
checked by hand (README, Development); it is too slow for the suite.
"""

import ast
import email
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import subprocess
import sys
import sysconfig
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

import bnjax

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bnjax"
APPLICATIONS = {"demo", "bench"}  # the packages of the programs: may use the extras
EXTRA_FRONT_ENDS = {"equinox.py": "equinox"}  # a front end may import its own extra
EXTRAS_ONLY = {"optax", "sklearn", "matplotlib", "haiku", "equinox", "keras", "torch"}
DEPENDENCIES = {"jax", "jaxlib", "flax", "chex", "numpy", "tqdm"}  # pyproject's, as modules


def run(args, **kwargs):
    """Runs a command outside this checkout, without PYTHONPATH; fails with its output."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)
    assert done.returncode == 0, f"{args} failed:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    offline = ["--no-build-isolation"] if importlib.util.find_spec("hatchling") else []
    pip = [sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-q", "-w", str(out)]
    run(pip + offline, cwd=out)
    (path,) = out.glob("bnjax-*.whl")
    return path


@pytest.fixture(scope="module")
def fresh_python(wheel, tmp_path_factory):
    """The python of a new virtual environment holding the wheel (dependencies reused)."""
    venv = tmp_path_factory.mktemp("venv")
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    run([*pip, "--no-deps", "--no-index", str(wheel)], cwd=venv)
    site = run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    reused = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (pathlib.Path(site.stdout.strip()) / "zz_reused_dependencies.pth").write_text(
        "".join(f"{path}\n" for path in reused)
    )
    return python


def test_wheel_holds_the_package_license_and_types_and_nothing_from_tests(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert "bnjax/py.typed" in names
    assert "bnjax/bench/targets/h200.txtpb" in names  # the H200 that --target h200 compiles for
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    # Every module of the checkout, the applications included, and nothing outside bnjax/.
    modules = {p.relative_to(ROOT).as_posix() for p in PACKAGE.rglob("*.py")}
    assert modules == {n for n in names if n.endswith(".py")}
    assert {n.split("/")[0] for n in names} == {"bnjax", wheel.name.split("-py")[0] + ".dist-info"}


def test_wheel_metadata_has_version_license_author_and_dependencies(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(name))
    assert metadata["Version"] == bnjax.__version__  # one source: bnjax/__init__.py
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Author"] == "bnjax developers"
    assert "Typing :: Typed" in metadata.get_all("Classifier")
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    plain = {r.name for r in requirements if r.marker is None}
    assert plain == DEPENDENCIES
    demo = {r.name for r in requirements if r.marker and r.marker.evaluate({"extra": "demo"})}
    assert demo == {"optax", "matplotlib", "scikit-learn"}


def test_library_imports_only_its_dependencies():
    # bnjax/*.py other than the applications import the standard library, the declared
    # dependencies and bnjax only; optax, scikit-learn, matplotlib are the applications'.
    imported = set()
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in APPLICATIONS:
            continue
        own = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                own |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                own.add(node.module.split(".")[0])
        imported |= own - {EXTRA_FRONT_ENDS.get(str(path.relative_to(PACKAGE)))}
    third_party = imported - set(sys.stdlib_module_names) - {"bnjax"}
    assert third_party <= DEPENDENCIES and not third_party & EXTRAS_ONLY


def test_reused_packages_satisfy_the_wheel(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        requires = email.message_from_bytes(archive.read(name)).get_all("Requires-Dist")
    for requirement in map(Requirement, requires):
        if requirement.marker is None or requirement.marker.evaluate({"extra": "demo"}):
            version = importlib.metadata.version(requirement.name)
            assert requirement.specifier.contains(version, prereleases=True), (requirement, version)


# Every public library function, with the applications' extras absent (optax stays: Flax
# imports it).
LIBRARY_WITHOUT_EXTRAS = """
import sys
for name in ("sklearn", "matplotlib", "haiku", "equinox", "keras", "torch"):
    sys.modules[name] = None
import jax, jax.numpy as jnp, flax.linen as nn
from flax import nnx
import bnjax, bnjax.demo
x = jax.random.normal(jax.random.key(0), (16, 4))
params, state = bnjax.init(4)
y, state = bnjax.batch_norm(x, params, state, train=True)
y, _ = bnjax.batch_norm(x, params, state, train=False)
y, _ = bnjax.batch_renorm(x, params, state, train=True)
kernel, bias = bnjax.fold_into_linear(jnp.ones((3, 4)), None, params, state)
class Net(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool):
        return bnjax.BatchNorm(use_running_average=not train)(nn.Dense(4)(x))
net = Net()
variables = net.init(jax.random.key(0), x[:, :3], train=False)
variables = bnjax.recompute_population_stats(net, variables, [x[:, :3]], train=True, progress=False)
layer = bnjax.nnx.BatchNorm(4, rngs=nnx.Rngs(0))
y = layer(x)
bnjax.nnx.recompute_population_stats(layer, [x], progress=False)
print(bnjax.__file__)
"""


@pytest.mark.slow
def test_fresh_install_runs_the_library_without_the_extras(fresh_python, tmp_path):
    done = run([str(fresh_python), "-c", LIBRARY_WITHOUT_EXTRAS], cwd=tmp_path)
    location = pathlib.Path(done.stdout.strip())
    assert fresh_python.parents[1] in location.parents  # the wheel's bnjax, not this checkout


@pytest.mark.slow
def test_fresh_install_runs_the_demo(fresh_python, tmp_path):
    out = tmp_path / "out"
    # cwd: `python -m` puts the working directory first on the path; this checkout must not be.
    done = run(
        [str(fresh_python), "-m", "bnjax.demo", "--steps", "50", "--out", str(out)], cwd=tmp_path
    )
    assert "on digits: 1437 training and 360 test examples; 50 SGD steps" in done.stdout

    def reject(constant):
        raise ValueError(constant)

    results = json.loads((out / "results.json").read_text(), parse_constant=reject)
    assert results["bn"]["step"][-1] == 50 and results["bn"]["train_loss"][0] is None
    assert (out / "figure1.png").read_bytes()[:4] == b"\x89PNG"


def test_minimum_versions_pin_the_declared_lower_bounds():
    # CI's second run installs these pins (.github/workflows/ci.yml): the oldest releases
    # that pyproject.toml claims to support must be the ones tested.
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    lower = {}
    for text in project["dependencies"]:
        requirement = Requirement(text)
        bounds = [s.version for s in requirement.specifier if s.operator == ">="]
        if bounds:
            lower[requirement.name] = Version(bounds[0])
    pins = {}
    for line in (ROOT / ".ci" / "minimum-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[requirement.name] = Version(spec.version)
    assert pins == lower
    assert {"jax", "jaxlib", "flax", "chex"} <= set(pins)
