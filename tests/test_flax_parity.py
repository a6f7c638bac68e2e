"""bnjax's Flax modules against Flax's own BatchNorm classes, as users combine them.

Every test runs Flax's class and bnjax's on the same input and compares outputs, variables
and gradients within float32 tolerance (the two agree to ~5e-7, not bit for bit: their
variance algorithms differ).
"""

import dataclasses
import inspect

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_array
from flax import nnx, serialization
from flax.nnx import bridge

import bnjax

TOL = dict(atol=2e-5, rtol=2e-5)  # outputs and statistics
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)  # gradients of sums over a batch (float32 rounding)

# -- every Flax argument is accepted with Flax's default ------------------------------------


def _defaults(signature):
    return {
        name: p.default
        for name, p in signature.parameters.items()
        if name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _same_default(ours, theirs):
    if ours is theirs:
        return True
    if callable(theirs) and not isinstance(theirs, type):  # initializers: same behaviour
        key = jax.random.key(0)
        return np.array_equal(ours(key, (3,), jnp.float32), theirs(key, (3,), jnp.float32))
    return ours == theirs


def test_every_linen_field_and_call_argument_with_flax_default():
    theirs = {f.name: f for f in dataclasses.fields(nn.BatchNorm) if f.init}
    ours = {f.name: f for f in dataclasses.fields(bnjax.BatchNorm) if f.init}
    assert set(theirs) <= set(ours), f"missing fields: {set(theirs) - set(ours)}"
    for name, field in theirs.items():
        assert _same_default(ours[name].default, field.default), name
    call_theirs = _defaults(inspect.signature(nn.BatchNorm.__call__))
    call_ours = _defaults(inspect.signature(bnjax.BatchNorm.__call__))
    assert call_theirs == {k: call_ours[k] for k in call_theirs}


@pytest.mark.parametrize("method", ["__init__", "__call__"])
def test_every_nnx_argument_with_flax_default(method):
    theirs = inspect.signature(getattr(nnx.BatchNorm, method))
    ours = inspect.signature(getattr(bnjax.nnx.BatchNorm, method))
    missing = set(theirs.parameters) - set(ours.parameters)
    assert not missing, f"bnjax.nnx.BatchNorm.{method} lacks {missing}"
    for name, default in _defaults(theirs).items():
        assert _same_default(ours.parameters[name].default, default), name
        assert ours.parameters[name].kind == theirs.parameters[name].kind, name


def test_nnx_custom_and_default_promote_dtype_behave_as_flax():
    calls = []

    def to_bfloat16(args, *, dtype=None):
        calls.append((len(args), dtype))
        return tuple(None if a is None else jnp.asarray(a, jnp.bfloat16) for a in args)

    x = random_array((8, 3), seed=1, loc=1.0)
    ours = bnjax.nnx.BatchNorm(3, promote_dtype=to_bfloat16, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(3, promote_dtype=to_bfloat16, rngs=nnx.Rngs(0))
    y_ours = ours(x)
    with jax.numpy_dtype_promotion("standard"):  # Flax's own bfloat16 path needs it
        y_theirs = theirs(x)
    assert calls == [(5, None), (5, None)]
    assert y_ours.dtype == y_theirs.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.float32(y_ours), np.float32(y_theirs), atol=2e-2)
    assert ours.mean[...].dtype == theirs.mean[...].dtype == jnp.float32
    np.testing.assert_allclose(ours.mean[...], theirs.mean[...], atol=1e-6)
    # The default promotes x to `dtype` before the statistics, as Flax's default does.
    x = random_array((8, 3), seed=2, loc=3.0)
    ours = bnjax.nnx.BatchNorm(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    y_ours = ours(x)
    with jax.numpy_dtype_promotion("standard"):
        y_theirs = theirs(x)
    assert y_ours.dtype == y_theirs.dtype == jnp.bfloat16
    np.testing.assert_allclose(ours.mean[...], theirs.mean[...], atol=1e-6)
    np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-5)


# -- linen ----------------------------------------------------------------------------------


class ConvBlock(nn.Module):
    norm: type

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(4, (3, 3), use_bias=False)(x)
        return nn.relu(self.norm(use_running_average=not train)(x))


class CNN(nn.Module):
    norm: type

    @nn.compact
    def __call__(self, x, train=False):
        block = ConvBlock(self.norm)  # one block called three times (module reuse)
        for _ in range(3):
            x = block(x, train)
        return nn.Dense(2)(x.mean((1, 2)))


X_IMG = random_array((4, 5, 5, 4), seed=3, loc=0.5)


@pytest.mark.slow
@pytest.mark.parametrize("flops", [False, True])
def test_tabulate_of_a_reused_block_matches_flax(flops):
    kwargs = dict(show_repeated=True, compute_flops=flops, compute_vjp_flops=flops)
    theirs = CNN(nn.BatchNorm).tabulate(jax.random.key(0), X_IMG, **kwargs)
    ours = CNN(bnjax.BatchNorm).tabulate(jax.random.key(0), X_IMG, **kwargs)
    if flops:  # the same table, up to the operation counts of the BatchNorm rows
        assert ours.splitlines()[-3:] == theirs.splitlines()[-3:]  # parameter totals
    else:  # the same rows, shapes and parameter counts
        assert ours == theirs


def _linen_step(model):
    def loss(params, batch_stats, x):
        y, updates = model.apply(
            {"params": params, "batch_stats": batch_stats}, x, True, mutable=["batch_stats"]
        )
        return jnp.sum(y**2), updates["batch_stats"]

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _compare_linen(make, x, *, both_ways=True):
    """Init with Flax, run both, compare outputs, statistics and gradients."""
    theirs, ours = make(nn.BatchNorm), make(bnjax.BatchNorm)
    variables = theirs.init(jax.random.key(0), x, False)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.key(0), x, False), variables)
    results = [
        _linen_step(m)(variables["params"], variables["batch_stats"], x) for m in (theirs, ours)
    ]
    chex.assert_trees_all_close(results[1], results[0], **GRAD_TOL)
    np.testing.assert_allclose(
        ours.apply(variables, x, False), theirs.apply(variables, x, False), **TOL
    )


@pytest.mark.slow
def test_linen_module_reuse_matches_flax():
    _compare_linen(CNN, X_IMG)


@pytest.mark.slow
@pytest.mark.parametrize("lift", ["remat", "jit"])
def test_linen_remat_and_jit_match_flax(lift):
    def make(norm):
        block = getattr(nn, lift)(ConvBlock, static_argnums=(2,))  # train

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, train):
                return block(norm)(block(norm)(x, train), train)

        return Net()

    _compare_linen(make, X_IMG)


@pytest.mark.slow
def test_linen_vmap_and_scan_match_flax():
    x = random_array((3, 6, 4), seed=4, loc=1.0)

    def make_vmap(norm):
        class Ensemble(nn.Module):
            @nn.compact
            def __call__(self, x, train):
                layer = nn.vmap(
                    ConvDense,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True},
                    in_axes=(0, None),
                )
                return layer(norm)(x, train)

        return Ensemble()

    def make_scan(norm):
        class Stack(nn.Module):
            @nn.compact
            def __call__(self, x, train):
                layer = nn.scan(
                    ScanDense,
                    variable_axes={"params": 0, "batch_stats": 0},
                    split_rngs={"params": True},
                    length=3,
                    in_axes=nn.broadcast,
                )
                return layer(norm)(x, train)[0]

        return Stack()

    _compare_linen(make_vmap, x)
    _compare_linen(make_scan, x[0])


class ConvDense(nn.Module):
    norm: type

    @nn.compact
    def __call__(self, x, train):
        return nn.relu(self.norm(use_running_average=not train)(nn.Dense(4)(x)))


class ScanDense(nn.Module):
    norm: type

    @nn.compact
    def __call__(self, x, train):
        return ConvDense(self.norm)(x, train), None


def test_linen_checkpoint_from_flax_round_trips_through_orbax_or_serialization(tmp_path):
    model_theirs, model_ours = CNN(nn.BatchNorm), CNN(bnjax.BatchNorm)
    variables = model_theirs.init(jax.random.key(0), X_IMG)
    variables = jax.tree.map(lambda v: v + 0.1, variables)
    try:
        import orbax.checkpoint as ocp

        path = tmp_path / "checkpoint"
        with ocp.StandardCheckpointer() as checkpointer:
            checkpointer.save(path, variables)
        with ocp.StandardCheckpointer() as checkpointer:
            restored = checkpointer.restore(path, jax.tree.map(jnp.zeros_like, variables))
    except ImportError:  # pragma: no cover - orbax is optional
        blob = serialization.to_bytes(variables)
        restored = serialization.from_bytes(jax.tree.map(jnp.zeros_like, variables), blob)
    chex.assert_trees_all_equal(restored, variables)
    np.testing.assert_allclose(
        model_ours.apply(restored, X_IMG), model_theirs.apply(variables, X_IMG), **TOL
    )


# -- NNX ------------------------------------------------------------------------------------


class NNXNet(nnx.Module):
    def __init__(self, norm, rngs):
        self.linear = nnx.Linear(3, 4, rngs=rngs)
        self.bn = norm(4, rngs=rngs)
        self.out = nnx.Linear(4, 2, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.bn(self.linear(x))))


X = random_array((8, 3), seed=5, loc=1.0, scale=2.0)
Y = random_array((8, 2), seed=6)


def _pair():
    return NNXNet(nnx.BatchNorm, nnx.Rngs(0)), NNXNet(bnjax.nnx.BatchNorm, nnx.Rngs(0))


def _stats(model):
    return {"mean": model.bn.mean[...], "var": model.bn.var[...]}


def _loss(model, x):
    return jnp.mean((model(x) - Y) ** 2)


@nnx.jit
def _nnx_train_step(model, optimizer, x):
    loss, grads = nnx.value_and_grad(_loss)(model, x)
    optimizer.update(model, grads)
    return loss, grads


@pytest.mark.slow
def test_nnx_split_merge_state_update_and_optimizer_match_flax():
    theirs, ours = _pair()
    chex.assert_trees_all_equal_shapes_and_dtypes(nnx.state(ours), nnx.state(theirs))
    merged = []
    for model in (theirs, ours):  # split/merge makes an equal copy; training it trains the copy
        graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
        copy = nnx.merge(graphdef, params, stats)
        merged.append((copy(X), _stats(copy), _stats(model)))
    chex.assert_trees_all_close(merged[1], merged[0], **TOL)
    results = []
    for model in (theirs, ours):
        optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
        results.append([_nnx_train_step(model, optimizer, X * s) for s in (1.0, 0.5)])
    chex.assert_trees_all_close(results[1], results[0], **TOL)
    chex.assert_trees_all_close(nnx.state(ours), nnx.state(theirs), **TOL)
    # A Flax NNX model's state loads into a bnjax one (nnx.update) and evaluates the same.
    fresh = NNXNet(bnjax.nnx.BatchNorm, nnx.Rngs(1))
    nnx.update(fresh, nnx.state(theirs))
    fresh.eval()
    theirs.eval()
    np.testing.assert_allclose(fresh(X), theirs(X), **TOL)
    # A checkpoint of the state round-trips (flax.serialization on the pure state dict).
    blob = serialization.to_bytes(nnx.to_pure_dict(nnx.state(ours)))
    restored = serialization.from_bytes(nnx.to_pure_dict(nnx.state(fresh)), blob)
    state = nnx.state(fresh)
    nnx.replace_by_pure_dict(state, restored)
    nnx.update(fresh, state)
    chex.assert_trees_all_equal(nnx.state(fresh), nnx.state(ours))


@pytest.mark.slow
def test_nnx_vmap_scan_remat_eval_shape_match_flax():
    def run(norm):
        @nnx.split_rngs(splits=3)
        @nnx.vmap(in_axes=0, out_axes=0)
        def make(rngs):
            return NNXBlock(norm, rngs)

        stack = make(nnx.Rngs(0))

        @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
        def forward(layer, h):
            return nnx.remat(lambda layer, h: layer(h))(layer, h)

        def loss(stack, x):
            return jnp.sum(forward(stack, x) ** 2)

        value, grads = nnx.jit(nnx.value_and_grad(loss))(stack, jnp.asarray(X))
        shapes = nnx.eval_shape(lambda: NNXBlock(norm, nnx.Rngs(0)))
        return value, grads, nnx.state(stack, nnx.BatchStat), shapes.bn.mean.shape

    ours, theirs = run(bnjax.nnx.BatchNorm), run(nnx.BatchNorm)
    chex.assert_trees_all_close(ours[:3], theirs[:3], **TOL)
    assert ours[3] == theirs[3] == (3,)


class NNXBlock(nnx.Module):
    def __init__(self, norm, rngs):
        self.linear = nnx.Linear(3, 3, rngs=rngs)
        self.bn = norm(3, rngs=rngs)

    def __call__(self, x):
        return nnx.relu(self.bn(self.linear(x)))


@pytest.mark.skipif(
    not hasattr(nnx, "with_vars"),
    reason="Flax's hijax example needs nnx.with_vars (flax >= 0.12.8); the minimum is older",
)
def test_nnx_hijax_variables_match_flax():
    """Flax's hijax example: split, jax.value_and_grad on non-hijax params, update in jit."""

    def run(norm):
        previous = nnx.var_defaults().hijax
        nnx.var_defaults(hijax=True)
        try:
            model = NNXNet(norm, nnx.Rngs(0))
            optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)

            @jax.jit
            def train_step(x):
                graphdef, params, nondiff = nnx.split(model, nnx.Param, ...)

                def loss_fn(params):
                    return _loss(nnx.merge(graphdef, params, nondiff), x)

                loss, grads = jax.value_and_grad(loss_fn)(nnx.with_vars(params, hijax=False))
                optimizer.update(model, grads)
                return loss

            with jax.numpy_dtype_promotion("standard"):  # optax's step count under hijax
                losses = [train_step(X * s) for s in (1.0, 0.5)]
            return losses, _stats(model), nnx.to_pure_dict(nnx.state(model, nnx.Param))
        finally:
            nnx.var_defaults(hijax=previous)

    chex.assert_trees_all_close(run(bnjax.nnx.BatchNorm), run(nnx.BatchNorm), **TOL)


@pytest.mark.slow
def test_nnx_bridge_both_ways_matches_flax():
    # linen BatchNorm inside NNX (ToNNX)
    def to_nnx(norm):
        model = bridge.ToNNX(norm(use_running_average=False), rngs=nnx.Rngs(0))
        bridge.lazy_init(model, X)
        y = model(X, mutable=["batch_stats"])
        return y, nnx.to_pure_dict(nnx.state(model, nnx.Not(nnx.RngState)))

    chex.assert_trees_all_close(to_nnx(bnjax.BatchNorm), to_nnx(nn.BatchNorm), **TOL)

    # NNX BatchNorm inside linen (ToLinen)
    def to_linen(norm):
        model = bridge.ToLinen(norm, args=(3,))
        variables = model.init(jax.random.key(0), X)
        y, updates = model.apply(variables, X, mutable=True)
        grads = jax.grad(lambda v: jnp.sum(model.apply(v, X, mutable=True)[0] ** 2))(variables)
        return y, updates, grads

    chex.assert_trees_all_close(to_linen(bnjax.nnx.BatchNorm), to_linen(nnx.BatchNorm), **TOL)
