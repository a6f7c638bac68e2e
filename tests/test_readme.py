"""The README's Python examples run, in order, as one script, and print what they show."""

import contextlib
import io
import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
# A line `print(...)  # text` promises that `text` is what the call prints.
PRINTED = re.compile(r"^\s*print\(.*\)  # (.*)$", flags=re.M)


def test_readme_python_blocks_run_in_order_and_print_what_they_show():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    script = "\n".join(blocks)
    namespace: dict = {}
    printed = io.StringIO()
    # The README is user code: run it with JAX's default (standard) dtype promotion,
    # under which optax.adam's bias correction is written.
    with jax.numpy_dtype_promotion("standard"), contextlib.redirect_stdout(printed):
        exec(compile(script, str(README), "exec"), namespace)  # noqa: S102
    assert namespace["y"].shape == (32, 8, 8, 64)
    assert "first offending feature index: 3" in str(namespace["err"].get())
    assert namespace["model"].bn.use_running_average is True
    assert namespace["y_mapped"].shape == namespace["y_global"].shape
    promised = PRINTED.findall(script)
    assert promised, "the README shows at least one printed output"
    assert promised == printed.getvalue().splitlines()
