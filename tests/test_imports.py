"""What ``import bnjax`` loads: the functional core without Flax, the Flax front ends on use."""

import importlib.util
import pathlib
import subprocess
import sys

import pytest

import bnjax

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAZY = ("BatchNorm", "linen", "nnx", "recompute_population_stats")
# Modules that the functional core must not load: Flax, the extras', and bnjax's own front ends
# and applications.
NOT_FOR_THE_CORE = (
    "flax",
    "optax",
    "sklearn",
    "matplotlib",
    "tqdm",
    "equinox",
    "bnjax.linen",
    "bnjax.equinox",
    "bnjax.nnx",
    "bnjax._tools.population",
    "bnjax.demo",
    "bnjax.bench",
    "torch",
)


def python(code):
    """Runs ``code`` in a fresh interpreter (nothing imported yet); fails with its output."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return done.stdout


CORE_WITHOUT_FLAX = f"""
import sys
import jax, jax.numpy as jnp
import bnjax
x = jax.random.normal(jax.random.key(0), (16, 4))
params, state = bnjax.init(4)
assert isinstance(params, bnjax.BatchNormParams) and isinstance(state, bnjax.BatchNormState)
y, state = bnjax.batch_norm(x, params, state, train=True)
y, _ = jax.jit(bnjax.batch_norm, static_argnames="train")(x, params, state, train=False)
y, _ = bnjax.batch_renorm(x, params, state, train=True)
kernel, bias = bnjax.fold_into_linear(jnp.ones((3, 4)), None, params, state)
torch_layer = {{"weight": params.scale, "bias": params.bias, "running_mean": state.mean,
               "running_var": state.var}}
assert bnjax.from_torch(torch_layer)["batch_stats"]["var"].shape == (4,)
loaded = [m for m in {NOT_FOR_THE_CORE!r} if sys.modules.get(m) is not None]
assert not loaded, loaded
"""


@pytest.mark.slow
def test_the_core_runs_without_flax_and_the_front_ends_load_on_first_use():
    out = python(CORE_WITHOUT_FLAX + "print(bnjax.BatchNorm.__module__, 'flax' in sys.modules)\n")
    assert out.split() == ["bnjax.linen", "True"]


@pytest.mark.slow
def test_the_core_imports_where_flax_cannot_be_imported():
    # sys.modules[name] = None is what a missing package looks like to `import`.
    blocked = "import sys\nfor name in ('flax', 'optax', 'tqdm'):\n    sys.modules[name] = None\n"
    python(blocked + CORE_WITHOUT_FLAX)


def test_lazy_names_are_public_listed_and_the_same_objects():
    assert set(LAZY) <= set(bnjax.__all__)
    assert set(bnjax.__all__) <= set(dir(bnjax))
    assert all(getattr(bnjax, name) is not None for name in bnjax.__all__)
    assert bnjax.BatchNorm is bnjax.linen.BatchNorm
    assert bnjax.nnx is importlib.import_module("bnjax.nnx")
    assert bnjax.recompute_population_stats.__module__ == "bnjax._tools.population"
    from bnjax import BatchNorm, nnx  # from-imports go through the same lookup

    assert BatchNorm is bnjax.BatchNorm and nnx is bnjax.nnx


def test_star_import_gives_every_public_name():
    namespace = {}
    exec("from bnjax import *", namespace)
    assert set(bnjax.__all__) <= set(namespace)


def test_unknown_names_raise_attribute_error():
    with pytest.raises(AttributeError, match="module 'bnjax' has no attribute 'Batchnorm'"):
        _ = bnjax.Batchnorm
    assert not hasattr(bnjax, "demo_")


def test_the_demo_is_a_package_of_its_own():
    import bnjax.demo

    assert hasattr(bnjax.demo, "__path__")  # a package, like bnjax.bench
    assert importlib.util.find_spec("bnjax.demo.__main__") is not None
    assert sorted(bnjax.demo.__all__) == [
        "Dataset",
        "ExperimentConfig",
        "accuracy_floor",
        "check_config",
        "figure1",
        "format_table",
        "load_digits",
        "load_mnist",
        "main",
        "missing_requirements",
        "plot_figure1",
        "read_idx",
        "run_experiment",
        "strict_json",
    ]
    assert all(hasattr(bnjax.demo, name) for name in bnjax.demo.__all__)
    for old in ("bnjax._data", "bnjax._experiment"):  # moved into bnjax/demo/
        assert importlib.util.find_spec(old) is None


@pytest.mark.slow
def test_the_equinox_front_end_and_its_tools_need_no_flax():
    blocked = "import sys\nfor name in ('flax', 'optax', 'tqdm'):\n    sys.modules[name] = None\n"
    out = python(blocked + "import bnjax.equinox\nprint(' '.join(bnjax.equinox.__all__))\n")
    assert out.split() == ["BatchNorm", "fold_into_linear", "recompute_population_stats"]


@pytest.mark.parametrize("name", ["bnjax.linen", "bnjax.nnx", "bnjax.equinox", "bnjax.demo"])
def test_every_public_module_lists_its_public_names(name):
    module = importlib.import_module(name)
    defined_here = {
        attribute
        for attribute, value in vars(module).items()
        if not attribute.startswith("_")
        and callable(value)
        and getattr(value, "__module__", "").startswith(name)
    }
    assert set(module.__all__) >= defined_here
    assert all(hasattr(module, attribute) for attribute in module.__all__)
