"""jax.export with symbolic batch, height and width, in every entry point (issue: export).

The exported function must give the jitted one's results at several sizes.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import export

import bnjax
import bnjax.linen
import bnjax.nnx

PARAMS, STATE = bnjax.init(5)
FUNCTIONS = {
    "eval": lambda x: bnjax.batch_norm(x, PARAMS, STATE, False),
    "train": lambda x: bnjax.batch_norm(x, PARAMS, STATE, True, momentum=0.9),
    "mask": lambda x: bnjax.batch_norm(x, PARAMS, STATE, True, mask=x[..., :1] > 0),
    "renorm": lambda x: bnjax.batch_renorm(x, PARAMS, STATE, True, r_max=2.0, d_max=1.0),
    "ghost": lambda x: bnjax.batch_norm(x, PARAMS, STATE, True, virtual_batch_size=2),
}


def _same(exported, function, shapes):
    for i, shape in enumerate(shapes):
        x = np.random.default_rng(i).normal(3.0, 2.0, shape).astype(np.float32)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
            exported.call(x),
            jax.jit(function)(x),
        )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eval", "train", "mask", "renorm"])
def test_functional_api_exports_with_symbolic_batch_height_and_width(name):
    b, h, w = export.symbolic_shape("b, h, w")
    exported = export.export(jax.jit(FUNCTIONS[name]))(
        jax.ShapeDtypeStruct((b, h, w, 5), jnp.float32)
    )
    _same(exported, FUNCTIONS[name], [(2, 3, 4, 5), (5, 1, 7, 5)])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eval", "train"])
def test_dense_input_exports_with_a_symbolic_batch(name):
    (b,) = export.symbolic_shape("b")
    exported = export.export(jax.jit(FUNCTIONS[name]))(jax.ShapeDtypeStruct((b, 5), jnp.float32))
    _same(exported, FUNCTIONS[name], [(3, 5), (17, 5)])


def test_ghost_batches_export_when_the_batch_is_declared_a_multiple_of_the_group():
    b, h = export.symbolic_shape("2*k, h")
    exported = export.export(jax.jit(FUNCTIONS["ghost"]))(
        jax.ShapeDtypeStruct((b, h, 5), jnp.float32)
    )
    _same(exported, FUNCTIONS["ghost"], [(4, 3, 5), (8, 2, 5)])


def test_ghost_batches_with_a_batch_not_known_to_divide_name_the_fix():
    (b,) = export.symbolic_shape("b")
    with pytest.raises(ValueError, match=r"virtual_batch_size=2 must divide .* symbolic .*2\*k"):
        export.export(jax.jit(FUNCTIONS["ghost"]))(jax.ShapeDtypeStruct((b, 5), jnp.float32))


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True])
def test_linen_module_exports_with_symbolic_batch_and_height(train):
    module = bnjax.linen.BatchNorm(use_running_average=not train)
    variables = module.init(jax.random.key(0), jnp.zeros((2, 5)))

    def apply(x):
        return module.apply(variables, x, mutable=["batch_stats"] if train else False)

    b, h = export.symbolic_shape("b, h")
    exported = export.export(jax.jit(apply))(jax.ShapeDtypeStruct((b, h, 5), jnp.float32))
    _same(exported, apply, [(2, 3, 5), (6, 1, 5)])


def test_flax_linen_exports_with_a_symbolic_batch_for_comparison():
    module = nn.BatchNorm(use_running_average=False)
    variables = module.init(jax.random.key(0), jnp.zeros((2, 5)))
    (b,) = export.symbolic_shape("b")

    def apply(x):
        return module.apply(variables, x, mutable=["batch_stats"])

    exported = export.export(jax.jit(apply))(jax.ShapeDtypeStruct((b, 5), jnp.float32))
    _same(exported, apply, [(3, 5), (17, 5)])


def test_nnx_module_exports_with_a_symbolic_batch():
    layer = bnjax.nnx.BatchNorm(5, rngs=nnx.Rngs(0))
    graph, state = nnx.split(layer)

    def apply(state, x):
        model = nnx.merge(graph, state)
        y = model(x)
        return y, nnx.split(model)[1]

    (b,) = export.symbolic_shape("b")
    exported = export.export(jax.jit(apply))(state, jax.ShapeDtypeStruct((b, 5), jnp.float32))
    for i, n in enumerate((3, 9)):
        x = np.random.default_rng(i).normal(3.0, 2.0, (n, 5)).astype(np.float32)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6),
            exported.call(state, x),
            jax.jit(apply)(state, x),
        )


def test_one_export_for_every_backend_runs_here_as_the_cpu_lowering():
    """platforms=("cpu", "cuda", "tpu"): each backend's statistics are lowered into the one
    artifact (chosen at lowering, lax.platform_dependent); the CPU's, run here, matches jit,
    and so does the exported gradient."""
    b, h = export.symbolic_shape("b, h")
    spec = jax.ShapeDtypeStruct((b, h, 5), jnp.float32)
    platforms = ("cpu", "cuda", "tpu")
    exported = export.export(jax.jit(FUNCTIONS["train"]), platforms=platforms)(spec)
    assert exported.platforms == platforms
    _same(exported, FUNCTIONS["train"], [(4, 3, 5)])

    def loss(x):
        return jnp.sum(FUNCTIONS["train"](x)[0] ** 3)

    gradient = export.export(jax.jit(jax.grad(loss)), platforms=platforms)(spec)
    x = np.random.default_rng(5).normal(3.0, 2.0, (6, 2, 5)).astype(np.float32)
    np.testing.assert_allclose(gradient.call(x), jax.jit(jax.grad(loss))(x), rtol=1e-5, atol=1e-5)
