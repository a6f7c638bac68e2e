"""Writes the intersphinx inventories in ``docs/_inventories`` that the site links through.

The build never fetches an inventory: ``conf.py`` reads these files, which hold only the names
the documentation links to, each with its address on the project's site. Add a name here when a
page links to a new one (the strict build reports a reference it cannot resolve), then run
``python docs/make_inventories.py``; ``tests/test_docs.py`` checks that the committed files are
what this script writes.
"""

import pathlib
import zlib

HERE = pathlib.Path(__file__).resolve().parent / "_inventories"

# site → (project, version, [(domain:role, name, address relative to the site's root)]).
# "$" at the end of an address stands for the name (Sphinx's inventory shorthand).
INVENTORIES = {
    "python": (
        "Python",
        "3.11",
        [
            *(("py:class", t, "library/functions.html#$") for t in ("int", "float", "bool")),
            *(("py:class", t, "library/stdtypes.html#$") for t in ("str", "tuple", "dict", "list")),
            ("py:data", "None", "library/constants.html#$"),
            ("py:data", "True", "library/constants.html#$"),
            ("py:data", "False", "library/constants.html#$"),
            *(
                ("py:exception", e, "library/exceptions.html#$")
                for e in ("ValueError", "TypeError", "NotImplementedError")
            ),
            *(
                ("py:data", f"typing.{t}", "library/typing.html#$")
                for t in ("Any", "Union", "Optional", "Literal", "Tuple", "Callable")
            ),
            *(
                ("py:class", f"collections.abc.{t}", "library/collections.abc.html#$")
                for t in ("Sequence", "Mapping", "Iterable", "Hashable")
            ),
            ("py:class", "typing.Sequence", "library/typing.html#$"),
            ("py:class", "typing.Mapping", "library/typing.html#$"),
            ("py:class", "typing.Iterable", "library/typing.html#$"),
            ("py:class", "typing.Hashable", "library/typing.html#$"),
            ("py:class", "typing.NamedTuple", "library/typing.html#$"),
            ("py:func", "functools.partial", "library/functools.html#$"),
        ],
    ),
    "jax": (
        "JAX",
        "0.10",
        [
            ("py:class", "jax.Array", "_autosummary/$.html#$"),
            # what annotations written jax.Array resolve to at run time
            ("py:class", "jax.jaxlib._jax.Array", "_autosummary/jax.Array.html#jax.Array"),
            *(
                ("py:function", f, "_autosummary/$.html#$")
                for f in (
                    "jax.jit",
                    "jax.vmap",
                    "jax.pmap",
                    "jax.grad",
                    "jax.vjp",
                    "jax.jvp",
                    "jax.checkpoint",
                    "jax.shard_map",
                    "jax.make_mesh",
                    "jax.set_mesh",
                    "jax.device_put",
                    "jax.eval_shape",
                    "jax.lax.scan",
                    "jax.lax.psum",
                    "jax.make_array_from_process_local_data",
                    "jax.distributed.initialize",
                    "jax.export.export",
                    "jax.export.deserialize",
                    "jax.experimental.checkify.checkify",
                    "jax.random.normal",
                )
            ),
            ("py:class", "jax.sharding.NamedSharding", "jax.sharding.html#$"),
            ("py:class", "jax.sharding.PartitionSpec", "jax.sharding.html#$"),
            ("py:class", "jax.export.Exported", "_autosummary/$.html#$"),
            ("py:data", "jax.typing.ArrayLike", "jax.typing.html#$"),
        ],
    ),
    "flax": (
        "Flax",
        "0.12",
        [
            ("py:class", "flax.linen.BatchNorm", "api_reference/flax.linen/layers.html#$"),
            ("py:class", "flax.linen.Module", "api_reference/flax.linen/module.html#$"),
            *(
                (
                    "py:function",
                    f"flax.linen.{f}",
                    "api_reference/flax.linen/transformations.html#$",
                )
                for f in ("scan", "vmap", "remat", "jit")
            ),
            ("py:class", "flax.nnx.BatchNorm", "api_reference/flax.nnx/nn/normalization.html#$"),
            ("py:class", "flax.nnx.Module", "api_reference/flax.nnx/module.html#$"),
            (
                "py:class",
                "flax.nnx.module.Module",
                "api_reference/flax.nnx/module.html#flax.nnx.Module",
            ),
            ("py:class", "flax.nnx.Rngs", "api_reference/flax.nnx/rnglib.html#$"),
            ("py:class", "flax.nnx.Optimizer", "api_reference/flax.nnx/training/optimizer.html#$"),
            *(
                ("py:function", f"flax.nnx.{f}", "api_reference/flax.nnx/transforms.html#$")
                for f in ("vmap", "scan", "remat", "jit", "split_rngs")
            ),
            *(
                ("py:function", f"flax.nnx.{f}", "api_reference/flax.nnx/graph.html#$")
                for f in ("split", "merge", "state", "update")
            ),
            (
                "py:function",
                "flax.serialization.to_bytes",
                "api_reference/flax.serialization.html#$",
            ),
            (
                "py:function",
                "flax.serialization.from_bytes",
                "api_reference/flax.serialization.html#$",
            ),
            (
                "py:function",
                "flax.serialization.msgpack_restore",
                "api_reference/flax.serialization.html#$",
            ),
        ],
    ),
    "optax": (
        "Optax",
        "0.2",
        [("py:function", f"optax.{f}", "api/optimizers.html#$") for f in ("adam", "sgd")],
    ),
    "equinox": (
        "Equinox",
        "0.13",
        [
            ("py:class", "equinox.nn.BatchNorm", "api/nn/normalisation/#$"),
            ("py:class", "equinox.nn.State", "api/nn/stateful/#$"),
            ("py:class", "equinox.nn.StateIndex", "api/nn/stateful/#$"),
            ("py:class", "equinox.nn.StatefulLayer", "api/nn/stateful/#$"),
            ("py:function", "equinox.nn.make_with_state", "api/nn/stateful/#$"),
            ("py:function", "equinox.nn.inference_mode", "api/nn/inference/#$"),
            ("py:class", "equinox.nn.Sequential", "api/nn/sequential/#$"),
            ("py:function", "equinox.filter_jit", "api/transformations/#$"),
            ("py:function", "equinox.filter_vmap", "api/transformations/#$"),
        ],
    ),
    "numpy": (
        "NumPy",
        "2",
        [("py:class", "numpy.ndarray", "reference/generated/$.html#$")],
    ),
}


def render(project: str, version: str, entries) -> bytes:
    """One inventory in Sphinx's format (version 2: a header, then zlib-compressed lines)."""
    header = (
        "# Sphinx inventory version 2\n"
        f"# Project: {project}\n# Version: {version}\n"
        "# The remainder of this file is compressed using zlib.\n"
    )
    lines = "".join(f"{name} {role} 1 {address} -\n" for role, name, address in sorted(entries))
    return header.encode() + zlib.compress(lines.encode(), 9)


def main() -> None:
    """Writes every inventory."""
    HERE.mkdir(exist_ok=True)
    for site, (project, version, entries) in INVENTORIES.items():
        (HERE / f"{site}.inv").write_bytes(render(project, version, entries))


if __name__ == "__main__":
    main()
