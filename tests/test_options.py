"""The options' one object: the public signatures, the module attributes and its fields in step.

A new option is added in three places: the public signatures (each passing the keyword on),
a field of ``Options`` and the code that uses it. These tests fail while one of them lags:
a field that a signature does not offer, an attribute that ``core_options`` does not pass
on, or a function inside the library that takes its options one by one instead of as
``Options`` or the static ``Reduction``.
"""

import ast
import dataclasses
import inspect
import pathlib

import pytest
from flax import nnx

import bnjax
import bnjax.linen
import bnjax.nnx
from bnjax._core.options import Options
from bnjax._frontend import core_options

# population is set by the tools that recompute population statistics, not by a signature
FIELDS = {field.name for field in dataclasses.fields(Options)} - {"population"}
# renorm_limits is (r_max, d_max) in batch_renorm's signature and (renorm, r_max, d_max)
# in the modules'; virtual batches and renorm do not combine, so batch_renorm lacks one.
SPELLED_OUT = {"renorm_limits": ("r_max", "d_max")}

# A value of each option that is not its default, and what Options holds for it.
NOT_DEFAULT = {
    "axis": 1,
    "momentum": 0.5,
    "epsilon": 0.25,
    "unbiased": True,
    "axis_name": "devices",
    "axis_index_groups": ((0, 1), (2, 3)),
    "virtual_batch_size": 4,
    "check_values": True,
}
RENORM = {"renorm": True, "r_max": 2.0, "d_max": 1.5}


def keywords(function):
    return {
        name
        for name, p in inspect.signature(function).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }


def spelled(fields):
    return set().union(*({f} if f not in SPELLED_OUT else set(SPELLED_OUT[f]) for f in fields))


def test_every_option_is_a_keyword_of_the_functional_api():
    assert keywords(bnjax.batch_norm) == spelled(FIELDS - {"renorm_limits"}) | {"mask"}
    assert keywords(bnjax.batch_renorm) == spelled(FIELDS - {"virtual_batch_size"}) | {"mask"}
    assert set(NOT_DEFAULT) == FIELDS - {"renorm_limits"}


@pytest.mark.parametrize("function", [bnjax.batch_norm, bnjax.batch_renorm])
def test_the_signature_defaults_are_the_options_defaults(function):
    defaults = {f.name: f.default for f in dataclasses.fields(Options)}
    for name, p in inspect.signature(function).parameters.items():
        if name in defaults:
            assert p.default == defaults[name], name


def _linen(**attributes):
    return bnjax.linen.BatchNorm(**attributes)


def _nnx(**attributes):
    return bnjax.nnx.BatchNorm(4, **attributes, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("make", [_linen, _nnx], ids=["linen", "nnx"])
def test_the_modules_pass_every_option_on(make):
    expected = Options(**NOT_DEFAULT, renorm_limits=(RENORM["r_max"], RENORM["d_max"]))
    options = core_options(make(**NOT_DEFAULT, **RENORM))
    assert options == expected
    # one option at a time: none is read from another attribute
    for name, value in NOT_DEFAULT.items():
        assert core_options(make(**{name: value})) == Options(**{name: value}), name


@pytest.mark.parametrize("make", [_linen, _nnx], ids=["linen", "nnx"])
def test_population_mode_and_init_override_what_they_must(make):
    module = make(**NOT_DEFAULT, **RENORM)
    population = core_options(module, population=True)
    assert population == dataclasses.replace(core_options(module), population=True)
    checked = core_options(make(momentum=0.5, epsilon=0.25, **RENORM), population=True).check()
    assert (checked.momentum, checked.unbiased, checked.renorm_limits) == (None, True, None)
    assert checked.epsilon == NOT_DEFAULT["epsilon"] and not checked.population
    initializing = core_options(module, initializing=True)
    assert (initializing.axis_name, initializing.axis_index_groups) == (None, None)
    assert initializing.virtual_batch_size is None


LIBRARY = pathlib.Path(bnjax.__file__).resolve().parent
# The public signatures mirror Flax's and Equinox's, one keyword per option.
PUBLIC_SIGNATURES = {
    ("_core/functional.py", "batch_norm"),
    ("_core/functional.py", "batch_renorm"),
    ("nnx.py", "__init__"),
    ("equinox.py", "__init__"),
}
MOST_NON_ARRAY_PARAMETERS = 5


def _non_array_parameters(function: ast.FunctionDef):
    arguments = function.args
    every = arguments.posonlyargs + arguments.args + arguments.kwonlyargs
    annotated_array = lambda a: a.annotation is not None and "Array" in ast.unparse(a.annotation)  # noqa: E731
    return [a.arg for a in every if a.arg not in ("self", "cls") and not annotated_array(a)]


def test_no_function_inside_the_library_takes_more_than_five_options():
    applications = {"bench", "demo"}
    library = [
        p for p in LIBRARY.rglob("*.py") if not applications & set(p.relative_to(LIBRARY).parts)
    ]
    assert len(library) > 15
    crowded = []
    for path in library:
        relative = path.relative_to(LIBRARY).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and (relative, node.name) not in PUBLIC_SIGNATURES:
                non_arrays = _non_array_parameters(node)
                if len(non_arrays) > MOST_NON_ARRAY_PARAMETERS:
                    crowded.append((relative, node.name, non_arrays))
    assert not crowded
