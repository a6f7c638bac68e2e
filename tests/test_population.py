"""Population statistics (precise BN) and folding BN into the layer before it."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_array, random_params
from flax import nnx
from oracle import batch_stats

import bnjax


class TwoLayers(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = nn.Dense(4, use_bias=False)(x)
        x = bnjax.BatchNorm(use_running_average=not train)(x)
        x = nn.Dense(3)(jnp.tanh(x))
        mask = jnp.arange(x.shape[0])[:, None] < x.shape[0] - 2  # the last two rows are padding
        return bnjax.BatchNorm(use_running_average=not train, momentum=None)(x, mask=mask)


BATCHES = [random_array((10, 5), seed=90 + i, loc=i, scale=1 + i) for i in range(4)]


def expected_population(params, batches):
    """Per layer, the average of batch means and of unbiased batch variances (float64)."""
    means, variances = {0: [], 1: []}, {0: [], 1: []}
    for x in batches:
        h = np.asarray(x, np.float64) @ np.asarray(params["Dense_0"]["kernel"], np.float64)
        count, mean, var = batch_stats(h)
        means[0].append(mean.ravel())
        variances[0].append((var * count / (count - 1)).ravel())
        scale = np.asarray(params["BatchNorm_0"]["scale"], np.float64)
        shift = np.asarray(params["BatchNorm_0"]["bias"], np.float64)
        h = np.tanh((h - mean) / np.sqrt(var + 1e-5) * scale + shift)
        h = h @ np.asarray(params["Dense_1"]["kernel"]) + np.asarray(params["Dense_1"]["bias"])
        count, mean, var = batch_stats(h[:-2])
        means[1].append(mean.ravel())
        variances[1].append((var * count / (count - 1)).ravel())
    return {i: (np.mean(means[i], 0), np.mean(variances[i], 0)) for i in (0, 1)}


@pytest.mark.slow
def test_linen_population_statistics_in_closed_form():
    model = TwoLayers()
    variables = model.init(jax.random.key(0), BATCHES[0], train=False)
    # non-trivial parameters and statistics
    variables = jax.tree.map(lambda v: v + 0.1 if v.dtype == jnp.float32 else v, variables)
    new = bnjax.recompute_population_stats(model, variables, BATCHES, progress=False, train=True)
    expected = expected_population(variables["params"], BATCHES)
    for i in (0, 1):
        stats = new["batch_stats"][f"BatchNorm_{i}"]
        np.testing.assert_allclose(stats["mean"], expected[i][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(stats["var"], expected[i][1], rtol=1e-5, atol=1e-5)
    assert set(new["batch_stats"]["BatchNorm_0"]) == {"mean", "var"}  # the tree is unchanged
    count = new["batch_stats"]["BatchNorm_1"]["count"]  # momentum=None: one per feature
    np.testing.assert_array_equal(count, np.full(count.shape, len(BATCHES)))
    assert set(new) == set(variables)
    jax.tree.map(np.testing.assert_array_equal, new["params"], variables["params"])


def test_linen_population_refuses_no_batches_and_models_without_a_training_layer():
    model = TwoLayers()
    variables = model.init(jax.random.key(0), BATCHES[0], train=False)
    with pytest.raises(ValueError, match=r"needs at least one batch, got an empty iterable"):
        bnjax.recompute_population_stats(model, variables, [], train=True)
    with pytest.raises(ValueError, match=r"no bnjax\.BatchNorm layer ran in training mode"):
        bnjax.recompute_population_stats(model, variables, BATCHES, progress=False, train=False)
    dense = nn.Dense(3)
    with pytest.raises(ValueError, match=r"no bnjax\.BatchNorm layer ran in training mode"):
        bnjax.recompute_population_stats(
            dense, dense.init(jax.random.key(0), BATCHES[0]), BATCHES, progress=False
        )


class NNXTwoLayers(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(5, 4, use_bias=False, rngs=rngs)
        self.bn = bnjax.nnx.BatchNorm(4, rngs=rngs)
        self.out = nnx.Linear(4, 3, rngs=rngs)
        self.bn_out = bnjax.nnx.BatchNorm(3, momentum=0.5, rngs=rngs)

    def __call__(self, x):
        return self.bn_out(self.out(jnp.tanh(self.bn(self.dense(x)))))


def test_nnx_population_statistics_match_linen_math_and_restore_modes(capsys):
    model = NNXTwoLayers(nnx.Rngs(0))
    model.eval()
    bnjax.nnx.recompute_population_stats(model, BATCHES, progress=True)
    assert "population statistics" in capsys.readouterr().err  # the tqdm bar
    params = {
        "Dense_0": {"kernel": model.dense.kernel[...]},
        "BatchNorm_0": {"scale": model.bn.scale[...], "bias": model.bn.bias[...]},
        "Dense_1": {"kernel": model.out.kernel[...], "bias": model.out.bias[...]},
    }
    expected = expected_population(params, BATCHES)
    np.testing.assert_allclose(model.bn.mean[...], expected[0][0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.bn.var[...], expected[0][1], rtol=1e-5, atol=1e-5)
    assert model.bn.use_running_average is True and model.bn_out.momentum == 0.5
    assert model.bn.count is None and model.bn.unbiased is False
    with pytest.raises(ValueError, match=r"found no bnjax\.nnx\.BatchNorm in Linear"):
        bnjax.nnx.recompute_population_stats(nnx.Linear(2, 2, rngs=nnx.Rngs(0)), BATCHES)


@pytest.mark.slow
@pytest.mark.parametrize("use_bias", [True, False])
def test_fold_dense_and_conv_equal_linear_then_bn(use_bias):
    params, state = random_params(6)
    x = random_array((4, 5), seed=95)
    dense = nn.Dense(6, use_bias=use_bias)
    dense_vars = dense.init(jax.random.key(0), x)
    expected = bnjax.batch_norm(dense.apply(dense_vars, x), params, state, False)[0]
    kernel, bias = bnjax.fold_into_linear(
        dense_vars["params"]["kernel"], dense_vars["params"].get("bias"), params, state
    )
    folded = nn.Dense(6).apply({"params": {"kernel": kernel, "bias": bias}}, x)
    np.testing.assert_allclose(folded, expected, atol=1e-5)

    images = random_array((2, 6, 6, 3), seed=96)
    conv = nn.Conv(6, (3, 3), use_bias=use_bias)
    conv_vars = conv.init(jax.random.key(1), images)
    expected = bnjax.batch_norm(conv.apply(conv_vars, images), params, state, False)[0]
    kernel, bias = bnjax.fold_into_linear(
        conv_vars["params"]["kernel"], conv_vars["params"].get("bias"), params, state
    )
    folded = nn.Conv(6, (3, 3)).apply({"params": {"kernel": kernel, "bias": bias}}, images)
    np.testing.assert_allclose(folded, expected, atol=1e-5)


def test_fold_into_linear_refuses_mismatched_shapes():
    params, state = bnjax.init(3)
    with pytest.raises(
        ValueError,
        match=r"params\.scale must have shape \(4,\), the kernel's output "
        r"features \(kernel\.shape=\(2, 4\)\), got \(3,\)",
    ):
        bnjax.fold_into_linear(jnp.ones((2, 4)), None, params, state)
    with pytest.raises(ValueError, match=r"bias must have shape \(3,\), .*got \(2,\)"):
        bnjax.fold_into_linear(jnp.ones((2, 3)), jnp.ones(2), params, state)
    with pytest.raises(ValueError, match=r"kernel must have shape \(\.\.\., in, out\), got \(3,\)"):
        bnjax.fold_into_linear(jnp.ones(3), None, params, state)


def test_eval_mode_is_differentiable_in_scale_and_bias_for_fine_tuning():
    params, state = random_params(3)
    x = random_array((6, 3), seed=97)

    def loss(params):
        return jnp.sum(bnjax.batch_norm(x, params, state, False)[0] ** 2)

    grads = jax.grad(loss)(params)
    xhat = (x - np.asarray(state.mean)) / np.sqrt(np.asarray(state.var) + 1e-5)
    y = xhat * np.asarray(params.scale) + np.asarray(params.bias)
    np.testing.assert_allclose(grads.scale, (2 * y * xhat).sum(0), rtol=1e-5)
    np.testing.assert_allclose(grads.bias, (2 * y).sum(0), rtol=1e-5)


class RenormThenBN(nn.Module):
    @nn.compact
    def __call__(self, x, train):
        x = bnjax.BatchNorm(use_running_average=not train, renorm=True)(x)
        return bnjax.BatchNorm(use_running_average=not train)(x)


class NNXRenormThenBN(nnx.Module):
    def __init__(self, rngs):
        self.first = bnjax.nnx.BatchNorm(2, renorm=True, rngs=rngs)
        self.second = bnjax.nnx.BatchNorm(2, rngs=rngs)

    def __call__(self, x):
        return self.second(self.first(x))


# N(10, 16) data: 8 batches of 64, two features
RENORM_BATCHES = [random_array((64, 2), seed=200 + i, loc=10.0, scale=4.0) for i in range(8)]


@pytest.mark.slow
@pytest.mark.parametrize("first_running", [(10.0, 16.0), (0.0, 1.0)])
def test_population_after_a_renorm_layer_linen_and_nnx(first_running):
    """The renorm layer normalizes with batch statistics: the next layer sees mean 0, var 1.

    Whether the renorm layer's running statistics match the data (10, 16) or are stale
    (0, 1; r and d would clip), the second layer's population statistics are those of
    batch-normalized activations: mean exactly 0 per batch, unbiased var m/(m−1)·(1 − ε-ish).
    """
    mean, var = first_running
    expected_var = (
        64 / 63 * np.mean([np.var(b, 0) / (np.var(b, 0) + 1e-5) for b in RENORM_BATCHES], 0)
    )
    model = RenormThenBN()
    variables = model.init(jax.random.key(0), RENORM_BATCHES[0], train=False)
    stats = {"mean": jnp.full(2, mean), "var": jnp.full(2, var)}
    variables = {**variables, "batch_stats": {**variables["batch_stats"], "BatchNorm_0": stats}}
    new = bnjax.recompute_population_stats(
        model, variables, RENORM_BATCHES, progress=False, train=True
    )
    second = new["batch_stats"]["BatchNorm_1"]
    np.testing.assert_allclose(second["mean"], 0.0, atol=1e-5)
    np.testing.assert_allclose(second["var"], expected_var, rtol=1e-5)
    first = new["batch_stats"]["BatchNorm_0"]  # its own: the data's, averaged
    np.testing.assert_allclose(first["mean"], np.mean([b.mean(0) for b in RENORM_BATCHES], 0),
                               rtol=1e-5)  # fmt: skip

    nnx_model = NNXRenormThenBN(nnx.Rngs(0))
    nnx_model.first.mean[...], nnx_model.first.var[...] = stats["mean"], stats["var"]
    bnjax.nnx.recompute_population_stats(nnx_model, RENORM_BATCHES, progress=False)
    np.testing.assert_allclose(nnx_model.second.mean[...], second["mean"], atol=1e-6)
    np.testing.assert_allclose(nnx_model.second.var[...], second["var"], rtol=1e-6)
    assert nnx_model.first.renorm is True and nnx_model.first.momentum == 0.99


def _snapshot(model):
    layers = [m for _, m in nnx.iter_graph(model) if isinstance(m, bnjax.nnx.BatchNorm)]
    options = [
        (m.use_running_average, m.momentum, m.unbiased, m.renorm, type(m.count).__name__,
         sorted(vars(m)))
        for m in layers
    ]  # fmt: skip
    return nnx.to_pure_dict(nnx.state(model)), options


@pytest.mark.slow
@pytest.mark.parametrize("sizes", [(1, 1, 1), (10, 1, 10)])
def test_batches_without_a_variance_raise_naming_the_layer_and_change_nothing(sizes):
    batches = [random_array((n, 5), seed=300 + i) for i, n in enumerate(sizes)]
    bad = sum(n == 1 for n in sizes)
    model = TwoLayers()
    variables = model.init(jax.random.key(0), BATCHES[0], train=False)
    message = (
        rf"the BatchNorm layer 'BatchNorm_0' got no usable statistics from {bad} of its "
        rf"{len(sizes)} training call\(s\): a batch of one element has no unbiased variance"
    )
    with pytest.raises(ValueError, match=message):
        bnjax.recompute_population_stats(model, variables, batches, progress=False, train=True)

    nnx_model = NNXTwoLayers(nnx.Rngs(0))
    nnx_model.bn(random_array((6, 4), seed=301))  # non-trivial statistics
    before = _snapshot(nnx_model)
    with pytest.raises(ValueError, match=message.replace("BatchNorm_0", "bn")):
        bnjax.nnx.recompute_population_stats(nnx_model, batches, progress=False)
    chex.assert_trees_all_equal(_snapshot(nnx_model)[0], before[0])
    assert _snapshot(nnx_model)[1] == before[1]


@pytest.mark.slow
def test_nnx_failure_part_way_leaves_the_model_exactly_as_it_was():
    model = NNXTwoLayers(nnx.Rngs(0))
    model.bn_out.momentum = 0.5
    model(BATCHES[0])
    model.eval()
    before = _snapshot(model)
    batches = [BATCHES[0], BATCHES[1], random_array((10, 6), seed=310)]  # the last: wrong width
    with pytest.raises(TypeError, match=r"contracting dimensions to have the same shape"):
        bnjax.nnx.recompute_population_stats(model, batches, progress=False)
    chex.assert_trees_all_equal(_snapshot(model)[0], before[0])
    assert _snapshot(model)[1] == before[1]


def test_linen_population_compiles_once_per_batch_shape():
    traces = []

    class Counting(nn.Module):
        @nn.compact
        def __call__(self, x, train):
            traces.append(x.shape)
            return bnjax.BatchNorm(use_running_average=not train)(x)

    model = Counting()
    variables = model.init(jax.random.key(0), BATCHES[0], train=False)
    traces.clear()
    batches = BATCHES + [random_array((7, 5), seed=320)] + BATCHES[:2]
    bnjax.recompute_population_stats(model, variables, batches, progress=False, train=True)
    # eval_shape and the first jit trace for (10, 5), one more trace for the (7, 5) batch
    assert traces == [(10, 5), (10, 5), (7, 5)]


def test_mutable_true_in_training_is_not_population_mode():
    bn = bnjax.BatchNorm(use_running_average=False)
    x = random_array((6, 2), seed=330)
    variables = bn.init(jax.random.key(0), x)
    _, updates = bn.apply(variables, x, mutable=True)
    assert "bnjax_population" not in updates
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.01 * x.mean(0), rtol=1e-5)


def test_a_batch_that_misses_one_feature_is_an_error_too():
    """Counts are per feature: a NaN in one feature of one batch is seen, not averaged over."""
    batches = [random_array((10, 5), seed=320 + i) for i in range(3)]
    batches[1][4, 2] = np.nan
    model = TwoLayers()
    variables = model.init(jax.random.key(0), BATCHES[0], train=False)
    message = r"the BatchNorm layer 'BatchNorm_0' got no usable statistics from 1 of its 3"
    with pytest.raises(ValueError, match=message):
        bnjax.recompute_population_stats(model, variables, batches, progress=False, train=True)
    nnx_model = NNXTwoLayers(nnx.Rngs(0))
    before = _snapshot(nnx_model)
    with pytest.raises(ValueError, match=message.replace("BatchNorm_0", "bn")):
        bnjax.nnx.recompute_population_stats(nnx_model, batches, progress=False)
    chex.assert_trees_all_equal(_snapshot(nnx_model)[0], before[0])


class ScannedLayer(nn.Module):
    @nn.compact
    def __call__(self, h, _):
        h = nn.Dense(3, use_bias=False)(h)
        return jnp.tanh(bnjax.BatchNorm(use_running_average=False)(h)), None


class ScannedStack(nn.Module):
    pass_population_on: bool = True

    @nn.compact
    def __call__(self, x):
        # Listing the tool's collection in variable_axes gives each stacked layer its own
        # population statistics (the call counts are stacked too: one per layer).
        axes = {"params": 0, "batch_stats": 0}
        if self.pass_population_on:
            axes["bnjax_population"] = 0
        stack = nn.scan(ScannedLayer, variable_axes=axes, split_rngs={"params": True}, length=3)
        return stack(name="stack")(x, None)[0]


def test_a_scan_that_does_not_pass_the_population_collection_on_is_named_as_the_cause():
    batches = [random_array((9, 3), seed=130 + i) for i in range(2)]
    model = ScannedStack(pass_population_on=False)
    variables = model.init(jax.random.key(0), batches[0])
    with pytest.raises(ValueError, match=r"lifted transform .* 'bnjax_population' collection"):
        bnjax.recompute_population_stats(model, variables, batches, progress=False)


@pytest.mark.slow
def test_linen_population_statistics_of_layers_stacked_by_nn_scan():
    batches = [random_array((9, 3), seed=120 + i, loc=2.0 * i) for i in range(3)]
    model = ScannedStack()
    variables = model.init(jax.random.key(0), batches[0])
    new = bnjax.recompute_population_stats(model, variables, batches, progress=False)
    kernels = np.asarray(variables["params"]["stack"]["Dense_0"]["kernel"], np.float64)
    means, variances = [[] for _ in range(3)], [[] for _ in range(3)]
    for x in batches:
        h = np.asarray(x, np.float64)
        for layer in range(3):
            h = h @ kernels[layer]
            count, mean, var = batch_stats(h)
            means[layer].append(mean.ravel())
            variances[layer].append((var * count / (count - 1)).ravel())
            h = np.tanh((h - mean) / np.sqrt(var + 1e-5))
    stats = new["batch_stats"]["stack"]["BatchNorm_0"]
    np.testing.assert_allclose(stats["mean"], np.mean(means, axis=1), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats["var"], np.mean(variances, axis=1), rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_equal(new["params"], variables["params"])
