"""bnjax.BatchNorm (linen) against flax.linen.BatchNorm: variables, outputs, training."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_array
from flax import serialization
from oracle import reference

import bnjax


def both(**kwargs):
    return nn.BatchNorm(**kwargs), bnjax.BatchNorm(**kwargs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, axis", [((4, 3, 3, 6), -1), ((4, 6, 3, 3), 1), ((4, 3, 5, 2), (1, 3))]
)
def test_same_variable_tree_and_outputs_as_flax(shape, axis):
    x = random_array(shape, seed=40, loc=2.0, scale=3.0)
    theirs, ours = both(use_running_average=False, axis=axis, momentum=0.9)
    variables = theirs.init(jax.random.key(0), x)
    chex.assert_trees_all_equal_shapes_and_dtypes(ours.init(jax.random.key(0), x), variables)
    # Flax-initialized (or Flax-trained) variables load into bnjax unchanged.
    variables = jax.tree.map(lambda v: v + 0.25 * jnp.ones_like(v), variables)
    y_theirs, new_theirs = theirs.apply(variables, x, mutable=["batch_stats"])
    y_ours, new_ours = ours.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_ours, y_theirs, atol=2e-5)
    chex.assert_trees_all_close(new_ours, new_theirs, atol=1e-6, rtol=1e-6)
    eval_theirs, eval_ours = both(use_running_average=True, axis=axis)
    np.testing.assert_allclose(
        eval_ours.apply(variables, x), eval_theirs.apply(variables, x), atol=2e-5
    )


def test_statistics_not_updated_while_initializing():
    x = random_array((8, 3), loc=5.0)
    variables = bnjax.BatchNorm(use_running_average=False).init(jax.random.key(0), x)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], np.zeros(3))
    np.testing.assert_array_equal(variables["batch_stats"]["var"], np.ones(3))


def test_momentum_none_keeps_count_and_exact_average():
    bn = bnjax.BatchNorm(use_running_average=False, momentum=None, unbiased=True)
    batches = [random_array((10, 2), seed=s, loc=s) for s in range(3)]
    variables = bn.init(jax.random.key(0), batches[0])
    assert set(variables["batch_stats"]) == {"mean", "var", "count"}
    for x in batches:
        _, updates = bn.apply(variables, x, mutable=["batch_stats"])
        variables = {**variables, **updates}
    expected = [
        reference(x, None, None, None, None, True, momentum=0.0, unbiased=True) for x in batches
    ]
    np.testing.assert_allclose(
        variables["batch_stats"]["mean"], np.mean([e[1].ravel() for e in expected], 0), rtol=1e-6
    )
    np.testing.assert_allclose(
        variables["batch_stats"]["var"], np.mean([e[2].ravel() for e in expected], 0), rtol=1e-5
    )
    np.testing.assert_array_equal(variables["batch_stats"]["count"], [3, 3])  # per feature


def test_bfloat16_dtype_gives_bfloat16_output_with_float32_params_and_statistics():
    x = random_array((8, 4), seed=41).astype(jnp.bfloat16)
    bn = bnjax.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    variables = bn.init(jax.random.key(0), x)
    y, updates = bn.apply(variables, x, mutable=["batch_stats"])
    assert y.dtype == jnp.bfloat16
    assert variables["params"]["scale"].dtype == jnp.float32
    assert updates["batch_stats"]["var"].dtype == jnp.float32
    # dtype=None promotes bfloat16 input with float32 parameters, as Flax does.
    y32, _ = bnjax.BatchNorm(use_running_average=False).apply(variables, x, mutable=True)
    assert y32.dtype == jnp.float32


class Block(nn.Module):
    features: int
    norm: type

    @nn.compact
    def __call__(self, x, train):
        y = nn.Conv(self.features, (3, 3), use_bias=False)(x)  # β subsumes the bias
        y = self.norm(use_running_average=not train)(y)
        y = nn.relu(y)
        y = nn.Conv(self.features, (3, 3), use_bias=False)(y)
        y = self.norm(use_running_average=not train)(y)
        return nn.relu(y + x)


class SmallResNet(nn.Module):
    norm: type

    @nn.compact
    def __call__(self, x, train):
        x = nn.Conv(8, (3, 3), use_bias=False)(x)
        x = nn.relu(self.norm(use_running_average=not train)(x))
        x = Block(8, self.norm)(x, train)
        x = Block(8, self.norm)(x, train)
        return nn.Dense(10)(jnp.mean(x, axis=(1, 2)))


def make_train_step(model, tx):
    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), batch_stats, opt_state, loss

    return step


def digits_like_data(steps, batch=16):
    rng = np.random.default_rng(42)
    images = rng.normal(size=(steps, batch, 6, 6, 1)).astype(np.float32)
    labels = rng.integers(0, 10, size=(steps, batch))
    return images, labels


def train(norm, steps=4, variables=None, opt_state=None, data=None):
    model, tx = SmallResNet(norm), optax.sgd(0.1, momentum=0.9)
    images, labels = digits_like_data(steps) if data is None else data
    if variables is None:
        variables = model.init(jax.random.key(0), images[0], False)
    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params) if opt_state is None else opt_state
    step = make_train_step(model, tx)
    for i in range(len(images)):
        params, batch_stats, opt_state, _ = step(
            params, batch_stats, opt_state, images[i], labels[i]
        )
    return {"params": params, "batch_stats": batch_stats}, opt_state


@pytest.mark.slow
def test_swapping_flax_batchnorm_for_bnjax_gives_the_same_training():
    ours, _ = train(bnjax.BatchNorm)
    theirs, _ = train(nn.BatchNorm)
    chex.assert_trees_all_close(ours, theirs, atol=2e-4, rtol=2e-4)
    images, _ = digits_like_data(1)
    logits_ours = SmallResNet(bnjax.BatchNorm).apply(ours, images[0], False)
    logits_theirs = SmallResNet(nn.BatchNorm).apply(theirs, images[0], False)
    np.testing.assert_allclose(logits_ours, logits_theirs, atol=1e-3)


@pytest.mark.slow
def test_checkpoint_round_trip_resumes_bit_identically():
    data = digits_like_data(6)
    straight, _ = train(bnjax.BatchNorm, data=data)
    first = (data[0][:3], data[1][:3])
    rest = (data[0][3:], data[1][3:])
    variables, opt_state = train(bnjax.BatchNorm, data=first)
    blob = serialization.to_bytes({"variables": variables, "opt_state": opt_state})
    template = {"variables": variables, "opt_state": opt_state}
    template = jax.tree.map(jnp.zeros_like, template)
    restored = serialization.from_bytes(template, blob)
    chex.assert_trees_all_equal(restored["variables"], variables)
    resumed, _ = train(
        bnjax.BatchNorm, variables=restored["variables"], opt_state=restored["opt_state"], data=rest
    )
    chex.assert_trees_all_equal(resumed, straight)


def test_training_without_mutable_batch_stats_says_what_to_do():
    x = random_array((4, 3))
    bn = bnjax.BatchNorm(use_running_average=False)
    variables = bn.init(jax.random.key(0), x)
    with pytest.raises(
        ValueError,
        match=r"updates the 'batch_stats' collection: call "
        r"model\.apply\(variables, x, mutable=\['batch_stats'\]\)",
    ):
        bn.apply(variables, x)
    bnjax.BatchNorm(use_running_average=True).apply(variables, x)  # eval needs no mutability


def test_use_running_average_given_twice_or_never_is_refused():
    x = random_array((4, 3))
    variables = bnjax.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    with pytest.raises(
        ValueError,
        match=r"use_running_average was given twice: True to the "
        r"constructor and False to the call",
    ):
        bnjax.BatchNorm(use_running_average=True).apply(variables, x, False)
    with pytest.raises(ValueError, match=r"use_running_average was given neither"):
        bnjax.BatchNorm().apply(variables, x)


@pytest.mark.slow
def test_nn_vmap_ensemble_members_are_independent_and_nested_vmap_runs():
    x = random_array((3, 8, 2), seed=43)
    Ensemble = nn.vmap(
        bnjax.BatchNorm,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        in_axes=0,
    )
    ensemble = Ensemble(use_running_average=False)
    variables = ensemble.init(jax.random.key(0), x)
    assert variables["batch_stats"]["mean"].shape == (3, 2)
    y, updates = ensemble.apply(variables, x, mutable=["batch_stats"])
    for i in range(3):
        y_i, up_i = bnjax.BatchNorm(use_running_average=False).apply(
            jax.tree.map(lambda v, i=i: v[i], variables), x[i], mutable=["batch_stats"]
        )
        np.testing.assert_allclose(y[i], y_i, atol=1e-6)
        chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], updates), up_i)
    Nested = nn.vmap(
        Ensemble, variable_axes={"params": 0, "batch_stats": 0}, split_rngs={"params": True}
    )
    nested = Nested(use_running_average=False)
    xx = jnp.stack([x, 2 * x])
    nested_vars = nested.init(jax.random.key(1), xx)
    y2, _ = nested.apply(nested_vars, xx, mutable=["batch_stats"])
    assert y2.shape == xx.shape and nested_vars["batch_stats"]["var"].shape == (2, 3, 2)


def test_eval_shape_of_init_and_apply():
    x = jax.ShapeDtypeStruct((4, 5, 5, 3), jnp.float32)
    bn = bnjax.BatchNorm(use_running_average=False)
    shapes = jax.eval_shape(bn.init, jax.random.key(0), x)
    assert shapes["batch_stats"]["mean"].shape == (3,)
    out, _ = jax.eval_shape(lambda v, x: bn.apply(v, x, mutable=["batch_stats"]), shapes, x)
    assert out.shape == (4, 5, 5, 3)


class DenseBN(nn.Module):
    @nn.compact
    def __call__(self, x, _):
        x = nn.Dense(4, use_bias=False)(x)
        return nn.relu(bnjax.BatchNorm(use_running_average=False)(x)), None


@pytest.mark.slow
def test_nn_scan_over_stacked_layers_equals_the_layers_in_turn():
    Stack = nn.scan(
        DenseBN,
        variable_axes={"params": 0, "batch_stats": 0},
        split_rngs={"params": True},
        length=3,
    )
    x = random_array((8, 4), seed=44)
    variables = Stack().init(jax.random.key(0), x, None)
    assert variables["batch_stats"]["BatchNorm_0"]["mean"].shape == (3, 4)
    (y, _), updates = Stack().apply(variables, x, None, mutable=["batch_stats"])
    h = jnp.asarray(x)
    for i in range(3):
        layer_vars = jax.tree.map(lambda v, i=i: v[i], variables)
        (h, _), up = DenseBN().apply(layer_vars, h, None, mutable=["batch_stats"])
        chex.assert_trees_all_close(jax.tree.map(lambda v, i=i: v[i], updates), up, atol=1e-6)
    np.testing.assert_allclose(y, h, atol=1e-5)


def test_flax_checkpoint_evaluates_with_momentum_none_and_missing_stats_are_named():
    x = random_array((8, 3), seed=45)
    flax_vars = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), x)
    y = bnjax.BatchNorm(use_running_average=True, momentum=None).apply(flax_vars, x)
    np.testing.assert_allclose(y, nn.BatchNorm(use_running_average=True).apply(flax_vars, x))
    with pytest.raises(ValueError, match=r"found no 'batch_stats' in the variables"):
        bnjax.BatchNorm(use_running_average=True).apply({"params": flax_vars["params"]}, x)


def test_init_skips_training_only_checks_and_bfloat16_output_uses_float32_statistics():
    x = random_array((1, 3), seed=46)
    bnjax.BatchNorm(use_running_average=False, virtual_batch_size=4).init(jax.random.key(0), x)
    x = random_array((16, 3), seed=47, loc=300.0)
    ours = bnjax.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    theirs = nn.BatchNorm(use_running_average=False, dtype=jnp.bfloat16)
    with jax.numpy_dtype_promotion("standard"):  # Flax's own bfloat16 path needs it
        variables = theirs.init(jax.random.key(0), x)
        y_theirs, _ = theirs.apply(variables, x, mutable=["batch_stats"])
    y_ours, _ = ours.apply(variables, x, mutable=["batch_stats"])
    assert y_ours.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(y_ours, np.float32), np.asarray(y_theirs, np.float32),
                               atol=0.05)  # fmt: skip
