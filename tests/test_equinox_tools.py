"""bnjax.equinox's population statistics and folding, checked against the float64 oracle."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax.equinox
from tests import oracle

BatchNorm = bnjax.equinox.BatchNorm


def forward(model, state, x):
    return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)


def data(shape, seed=0, loc=3.0, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def running_index(bn):
    return bn.batch_state_index if bn.mode == "batch" else bn.ema_state_index


def two_layer_model(mode):
    key1, key2 = jax.random.split(jax.random.key(0))
    return eqx.nn.make_with_state(eqx.nn.Sequential)(
        [
            eqx.nn.Linear(3, 4, key=key1),
            BatchNorm(4, "batch", mode=mode, momentum=0.9),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(4, 2, key=key2),
            BatchNorm(2, "batch", mode=mode, momentum=0.9),
        ]
    )


def linear64(layer, h):
    return h @ np.asarray(layer.weight, np.float64).T + np.asarray(layer.bias, np.float64)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_population_statistics_are_the_float64_average_over_the_batches(mode):
    model, state = two_layer_model(mode)
    _, state = forward(model, state, data((8, 3), seed=9))  # trained statistics, to be replaced
    before = jax.tree.map(np.asarray, state.get(running_index(model[1])))
    batches = [data((6, 3), seed=s, loc=s) for s in range(3)]
    new = bnjax.equinox.recompute_population_stats(forward, model, state, batches, progress=False)
    first, second = [], []
    for x in batches:
        h1 = linear64(model[0], x.astype(np.float64))
        _, mean, var = oracle.batch_stats(h1, axis=1)
        first.append((mean.reshape(-1), var.reshape(-1) * 6 / 5))
        z, _, _ = oracle.reference(h1, None, None, None, None, True, axis=1)
        h2 = linear64(model[3], np.maximum(z, 0.0))
        _, mean, var = oracle.batch_stats(h2, axis=1)
        second.append((mean.reshape(-1), var.reshape(-1) * 6 / 5))
    for layer, seen in ((model[1], first), (model[4], second)):
        want = np.mean([s[0] for s in seen], 0), np.mean([s[1] for s in seen], 0)
        got = new.get(running_index(layer))
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=1e-6)
        if mode == "batch":
            assert int(new.get(layer.batch_counter)) == 3
        else:
            assert not bool(new.get(layer.ema_first_time_index))
    # the state passed in is still valid and unchanged
    np.testing.assert_array_equal(state.get(running_index(model[1]))[0], before[0])


@pytest.mark.slow
def test_population_statistics_refuse_unusable_batches_and_models_without_layers():
    model, state = two_layer_model("batch")
    ones = [data((4, 3)), data((1, 3))]  # one example has no unbiased variance
    with pytest.raises(
        ValueError, match=r"layer '.layers\[1\]' got no usable statistics from 1 of its 2"
    ):
        bnjax.equinox.recompute_population_stats(forward, model, state, ones, progress=False)
    evaluating = lambda m, s, x: forward(eqx.nn.inference_mode(m), s, x)  # noqa: E731
    with pytest.raises(ValueError, match="no bnjax.equinox.BatchNorm layer ran in training"):
        bnjax.equinox.recompute_population_stats(
            evaluating, model, state, [data((4, 3))], progress=False
        )
    linear, linear_state = eqx.nn.make_with_state(eqx.nn.Linear)(3, 2, key=jax.random.key(0))
    with pytest.raises(ValueError, match="found no bnjax.equinox.BatchNorm in Linear"):
        bnjax.equinox.recompute_population_stats(
            forward, linear, linear_state, [data((4, 3))], progress=False
        )
    with pytest.raises(ValueError, match="at least one batch"):
        bnjax.equinox.recompute_population_stats(forward, model, state, [], progress=False)


def trained_batch_norm(channels, mode):
    bn, state = eqx.nn.make_with_state(BatchNorm)(channels, "batch", mode=mode)
    rng = np.random.default_rng(5)
    weight, bias = rng.normal(1, 0.3, channels), rng.normal(0, 0.3, channels)
    bn = eqx.tree_at(lambda m: (m.weight, m.bias), bn, (jnp.asarray(weight, jnp.float32),
                     jnp.asarray(bias, jnp.float32)))  # fmt: skip
    x = data((16, channels), seed=4, loc=-2.0, scale=3.0)
    _, state = forward(bn, state, x)
    return bn, state


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("mode", ["batch", "ema"])
def test_fold_into_linear_matches_the_float64_reference(mode, use_bias):
    bn, state = trained_batch_norm(4, mode)
    linear = eqx.nn.Linear(3, 4, use_bias=use_bias, key=jax.random.key(1))
    folded = bnjax.equinox.fold_into_linear(linear, bn, state)
    assert isinstance(folded, eqx.nn.Linear) and folded.bias.shape == (4,)
    x = data((5, 3), seed=6)
    h = x.astype(np.float64) @ np.asarray(linear.weight, np.float64).T
    h = h + (np.asarray(linear.bias, np.float64) if use_bias else 0.0)
    mean, var = (np.asarray(a, np.float64) for a in state.get(running_index(bn)))
    w, b = np.asarray(bn.weight), np.asarray(bn.bias)
    want, _, _ = oracle.reference(h, w, b, mean, var, False, axis=1)
    np.testing.assert_allclose(jax.vmap(folded)(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_into_conv_matches_the_layer_followed_by_batch_norm(use_bias):
    bn, state = trained_batch_norm(4, "batch")
    conv = eqx.nn.Conv2d(2, 4, 3, padding=1, use_bias=use_bias, key=jax.random.key(2))
    folded = bnjax.equinox.fold_into_linear(conv, bn, state)
    assert folded.use_bias and folded.bias.shape == (4, 1, 1)
    x = data((3, 2, 5, 5), seed=7)
    h = np.asarray(jax.vmap(conv)(x), np.float64)  # the convolution in float32, BN in float64
    mean, var = (np.asarray(a, np.float64) for a in state.get(bn.batch_state_index))
    want, _, _ = oracle.reference(h, np.asarray(bn.weight), np.asarray(bn.bias), mean, var,
                                  False, axis=1)  # fmt: skip
    np.testing.assert_allclose(jax.vmap(folded)(x), want, rtol=1e-5, atol=1e-5)


def test_fold_into_linear_refuses_another_layer_a_width_mismatch_and_another_batch_norm():
    bn, state = trained_batch_norm(4, "batch")
    with pytest.raises(TypeError, match="linear must be an eqx.nn.Linear or eqx.nn.Conv, got "):
        bnjax.equinox.fold_into_linear(eqx.nn.Identity(), bn, state)
    linear = eqx.nn.Linear(3, 5, key=jax.random.key(1))
    with pytest.raises(ValueError, match=r"linear has 5 output features .* input_size=4"):
        bnjax.equinox.fold_into_linear(linear, bn, state)
    with pytest.raises(TypeError, match="batch_norm must be a bnjax.equinox.BatchNorm, got "):
        bnjax.equinox.fold_into_linear(linear, eqx.nn.BatchNorm(5, "b", mode="batch"), state)
