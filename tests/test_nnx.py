"""bnjax.nnx.BatchNorm against flax.nnx.BatchNorm, and inside NNX training."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import random_array
from flax import nnx

import bnjax


def state_of(module):
    return {"mean": module.mean[...], "var": module.var[...]}


@pytest.mark.parametrize("momentum", [0.99, 0.5])
def test_same_outputs_and_statistics_as_flax_nnx(momentum):
    ours = bnjax.nnx.BatchNorm(3, momentum=momentum, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(3, momentum=momentum, rngs=nnx.Rngs(0))
    for seed in range(3):
        x = random_array((6, 4, 3), seed=50 + seed, loc=seed, scale=2.0)
        np.testing.assert_allclose(ours(x), theirs(x), atol=2e-5)
        chex.assert_trees_all_close(state_of(ours), state_of(theirs), atol=1e-6, rtol=1e-6)
    ours.eval()
    theirs.eval()
    x = random_array((6, 4, 3), seed=60)
    np.testing.assert_allclose(ours(x), theirs(x), atol=2e-5)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        nnx.state(ours, nnx.Param), nnx.state(theirs, nnx.Param)
    )


def test_train_eval_switching_and_call_time_override():
    bn = bnjax.nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    x = random_array((5, 2), loc=3.0)
    bn.eval()
    bn(x)
    np.testing.assert_array_equal(bn.mean[...], np.zeros(2))  # eval: untouched
    bn(x, use_running_average=False)  # the call's value wins
    assert np.all(np.asarray(bn.mean[...]) != 0)
    bn.train()
    assert bn.use_running_average is False


def test_a_padding_mask_gives_finite_outputs():
    bn = bnjax.nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    x = random_array((4, 6, 3))
    mask = np.arange(6)[None, :, None] < np.array([6, 2, 4, 1])[:, None, None]
    y = bn(x, mask=mask)
    assert np.all(np.isfinite(y))


class CNN(nnx.Module):
    def __init__(self, norm, rngs):
        self.conv1 = nnx.Conv(1, 8, (3, 3), use_bias=False, rngs=rngs)
        self.bn1 = norm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 8, (3, 3), use_bias=False, rngs=rngs)
        self.bn2 = norm(8, rngs=rngs)
        self.head = nnx.Linear(8, 10, rngs=rngs)

    def __call__(self, x):
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)) + x)
        return self.head(jnp.mean(x, axis=(1, 2)))


@nnx.jit
def train_step(model, optimizer, images, labels):
    def loss_fn(model):
        logits = model(images)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def train(norm, steps=4):
    model = CNN(norm, nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.sgd(0.1, momentum=0.9), wrt=nnx.Param)
    rng = np.random.default_rng(7)
    for _ in range(steps):
        images = rng.normal(size=(16, 6, 6, 1)).astype(np.float32)
        labels = rng.integers(0, 10, size=16)
        train_step(model, optimizer, images, labels)
    return model


@pytest.mark.slow
def test_nnx_training_matches_flax_nnx_and_updates_statistics_in_place():
    ours, theirs = train(bnjax.nnx.BatchNorm), train(nnx.BatchNorm)
    assert np.all(np.asarray(ours.bn1.var[...]) != 1.0)  # updated in place inside nnx.jit
    chex.assert_trees_all_close(nnx.state(ours), nnx.state(theirs), atol=2e-4, rtol=2e-4)
    ours.eval()
    theirs.eval()
    images = random_array((4, 6, 6, 1), seed=61)
    np.testing.assert_allclose(ours(images), theirs(images), atol=1e-3)


@pytest.mark.slow
def test_nnx_vmap_ensemble_eval_shape_and_scan():
    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make_ensemble(rngs):
        return bnjax.nnx.BatchNorm(2, rngs=rngs)

    ensemble = make_ensemble(nnx.Rngs(0))
    assert ensemble.mean.shape == (3, 2)
    x = random_array((3, 8, 2), seed=62)

    @nnx.vmap(in_axes=(0, 0), out_axes=0)
    def apply(bn, x):
        return bn(x)

    y = apply(ensemble, x)
    for i in range(3):
        single = bnjax.nnx.BatchNorm(2, rngs=nnx.Rngs(0))
        np.testing.assert_allclose(y[i], single(x[i]), atol=1e-6)
        np.testing.assert_allclose(ensemble.mean[...][i], single.mean[...], atol=1e-7)

    abstract = nnx.eval_shape(lambda: bnjax.nnx.BatchNorm(5, rngs=nnx.Rngs(0)))
    assert abstract.var.shape == (5,)

    class Layer(nnx.Module):
        def __init__(self, rngs):
            self.dense = nnx.Linear(4, 4, use_bias=False, rngs=rngs)
            self.bn = bnjax.nnx.BatchNorm(4, rngs=rngs)

        def __call__(self, h):
            return nnx.relu(self.bn(self.dense(h)))

    @nnx.split_rngs(splits=3)
    @nnx.vmap(in_axes=0, out_axes=0)
    def make_stack(rngs):
        return Layer(rngs)

    stack = make_stack(nnx.Rngs(1))

    @nnx.scan(in_axes=(0, nnx.Carry), out_axes=nnx.Carry)
    def run(layer, h):
        return layer(h)

    h = run(stack, jnp.asarray(random_array((8, 4), seed=63)))
    assert h.shape == (8, 4) and stack.bn.mean.shape == (3, 4)
    assert np.all(np.asarray(stack.bn.mean[...]) != 0)


def test_eval_view_updates_nothing_bfloat16_params_promote_and_late_momentum_none_is_refused():
    bn = bnjax.nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    x = random_array((5, 2), loc=3.0)
    view = nnx.view(bn, use_running_average=True)
    view(x)
    np.testing.assert_array_equal(bn.mean[...], np.zeros(2))  # the eval view updates nothing
    half = bnjax.nnx.BatchNorm(2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(2, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    xb = jnp.asarray(x).astype(jnp.bfloat16)
    with jax.numpy_dtype_promotion("standard"):  # Flax's own bfloat16 path needs it
        theirs_dtype = theirs(xb).dtype
    assert half(xb).dtype == theirs_dtype == jnp.float32  # promoted with the statistics
    bn.momentum = None
    with pytest.raises(ValueError, match=r"momentum=None keeps an exact average and needs a count"):
        bn(x)
