"""Each of the README's Python examples runs on its own and prints what it shows.

The examples that used to follow these in the README (checked mode, scale-out) are on the
documentation site's "Behaviour in detail" page, whose code the strict docs build executes
and checks (tests/test_docs.py).
"""

import contextlib
import io
import pathlib
import re

import jax
import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
# A line `print(...)  # text` promises that `text` is what the call prints.
PRINTED = re.compile(r"^\s*print\(.*\)  # (.*)$", flags=re.M)


def test_one_example_per_front_end():
    fronts = [
        "bnjax.batch_norm(",
        "bnjax.BatchNorm(",
        "bnjax.nnx.BatchNorm(",
        "bnjax.equinox.BatchNorm(",
    ]
    assert [sum(front in block for block in BLOCKS) for front in fronts] == [1, 1, 1, 1]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_each_python_block_runs_alone_and_prints_what_it_shows(index):
    block = BLOCKS[index]
    namespace: dict = {}
    printed = io.StringIO()
    # The README is user code: run it with JAX's default (standard) dtype promotion,
    # under which optax.adam's bias correction is written.
    with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(printed):
        exec(compile(block, f"{README}, block {index}", "exec"), namespace)  # noqa: S102
    promised = PRINTED.findall(block)
    assert promised, "every example shows what it prints"
    assert promised == printed.getvalue().splitlines()
    if "bnjax.nnx.BatchNorm(" in block:
        assert namespace["model"].bn.use_running_average is True  # model.eval() reached the layer
    if "bnjax.batch_norm(" in block:
        assert int(namespace["state"].count[0]) == 2  # two training calls folded in
