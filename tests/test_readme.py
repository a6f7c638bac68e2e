"""The README's Python examples run, in order, as one script."""

import pathlib
import re

import jax

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4
    namespace: dict = {}
    # The README is user code: run it with JAX's default (standard) dtype promotion,
    # under which optax.adam's bias correction is written.
    with jax.numpy_dtype_promotion("standard"):
        exec(compile("\n".join(blocks), str(README), "exec"), namespace)  # noqa: S102
    assert namespace["y"].shape == (32, 8, 8, 64)
    assert "first offending feature index: 3" in str(namespace["err"].get())
    assert namespace["model"].bn.use_running_average is True
    assert namespace["y_mapped"].shape == namespace["y_global"].shape
