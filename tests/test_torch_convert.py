"""bnjax.from_torch against PyTorch itself: evaluation, one more training step, errors.

PyTorch's features are on axis 1 (NCL, NCHW, NCDHW); bnjax's layer here keeps ``axis=-1``
and gets the input transposed features-last, except where ``axis=1`` is tested.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from oracle import batch_stats

import bnjax

torch.manual_seed(0)
EPSILON = 1e-3  # not the default: the conversion must carry the user's epsilon into the layer
STEPS = 4
FEATURES = 3
# Batch shapes per PyTorch layer (features on axis 1), and the transposition to features-last.
LAYERS = {
    "1d": (torch.nn.BatchNorm1d, (16, FEATURES), (0, 1)),
    "1d-sequence": (torch.nn.BatchNorm1d, (4, FEATURES, 5), (0, 2, 1)),
    "2d": (torch.nn.BatchNorm2d, (4, FEATURES, 3, 5), (0, 2, 3, 1)),
    "3d": (torch.nn.BatchNorm3d, (2, FEATURES, 3, 2, 4), (0, 2, 3, 4, 1)),
}


def batches(shape, count, seed):
    """Float32 batches with per-feature offsets and spreads far from 0 and 1."""
    rng = np.random.default_rng(seed)
    loc = rng.uniform(-5, 5, FEATURES).reshape((1, FEATURES) + (1,) * (len(shape) - 2))
    scale = rng.uniform(0.5, 3, FEATURES).reshape(loc.shape)
    return [(loc + scale * rng.normal(size=shape)).astype(np.float32) for _ in range(count)]


def trained_torch(kind, momentum, *, affine=True, track=True, seed=0):
    """A PyTorch layer after STEPS training steps, with random weights, and fresh batches."""
    layer_type, shape, _ = LAYERS[kind]
    layer = layer_type(
        FEATURES, eps=EPSILON, momentum=momentum, affine=affine, track_running_stats=track
    )
    if affine:
        with torch.no_grad():
            layer.weight.copy_(torch.linspace(0.5, 2.0, FEATURES))
            layer.bias.copy_(torch.linspace(-1.0, 1.0, FEATURES))
    data = batches(shape, STEPS + 2, seed)
    layer.train()
    for x in data[:STEPS]:
        layer(torch.from_numpy(x))
    return layer, data[STEPS:]


def torch_output(layer, x, train):
    layer.train(train)
    with torch.no_grad():
        return layer(torch.from_numpy(x)).numpy()


def features_last(kind, x):
    return np.transpose(x, LAYERS[kind][2])


def bnjax_layer(momentum, **kwargs):
    return bnjax.linen.BatchNorm(epsilon=EPSILON, momentum=momentum, unbiased=True, **kwargs)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("torch_momentum", [0.1, None])
def test_evaluation_matches_pytorch(kind, torch_momentum):
    layer, (x, _) = trained_torch(kind, torch_momentum)
    cumulative = torch_momentum is None
    variables = bnjax.from_torch(layer.state_dict(), cumulative=cumulative)
    momentum = None if cumulative else 1 - torch_momentum
    y = bnjax_layer(momentum, use_running_average=True).apply(variables, features_last(kind, x))
    expected = features_last(kind, torch_output(layer, x, train=False))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_evaluation_on_features_first_input_with_axis_1_matches_pytorch():
    layer, (x, _) = trained_torch("2d", 0.1)
    variables = bnjax.from_torch(layer.state_dict())
    y = bnjax_layer(0.9, use_running_average=True, axis=1).apply(variables, x)
    np.testing.assert_allclose(y, torch_output(layer, x, train=False), rtol=1e-5, atol=1e-5)


def one_more_step(kind, torch_momentum, *, cumulative, unbiased=True):
    """One training step on both sides: (bnjax's y and batch_stats, PyTorch's, x, before)."""
    layer, (x, _) = trained_torch(kind, torch_momentum)
    before = {k: v.clone().numpy() for k, v in layer.state_dict().items()}
    variables = bnjax.from_torch(layer.state_dict(), cumulative=cumulative)
    momentum = None if torch_momentum is None else 1 - torch_momentum
    module = bnjax.linen.BatchNorm(epsilon=EPSILON, momentum=momentum, unbiased=unbiased)
    y, updates = module.apply(
        variables, features_last(kind, x), use_running_average=False, mutable=["batch_stats"]
    )
    expected_y = features_last(kind, torch_output(layer, x, train=True))
    np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-5)  # batch statistics
    after = {k: v.numpy() for k, v in layer.state_dict().items()}
    return updates["batch_stats"], after, x, before


def batch_moments(kind, x):
    """Float64 (elements per feature, mean, biased variance) of a features-first batch."""
    count, mean, var = batch_stats(features_last(kind, x))
    return count.ravel()[0], mean.ravel(), var.ravel()


@pytest.mark.parametrize("kind", ["1d", "2d"])
def test_one_more_training_step_updates_as_pytorch_with_momentum(kind):
    stats, after, x, before = one_more_step(kind, 0.1, cumulative=False)
    m, mean, var = batch_moments(kind, x)
    closed_mean = 0.9 * before["running_mean"] + 0.1 * mean
    closed_var = 0.9 * before["running_var"] + 0.1 * var * m / (m - 1)  # unbiased σ²_B
    for name, key, closed in (
        ("mean", "running_mean", closed_mean),
        ("var", "running_var", closed_var),
    ):
        np.testing.assert_allclose(stats[name], closed, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[key], closed, rtol=1e-5, atol=1e-6)
    assert set(stats) == {"mean", "var"}  # no count without momentum=None
    assert after["num_batches_tracked"] == STEPS + 1


@pytest.mark.parametrize("kind", ["1d", "3d"])
def test_one_more_training_step_continues_pytorchs_cumulative_average(kind):
    stats, after, x, before = one_more_step(kind, None, cumulative=True)
    m, mean, var = batch_moments(kind, x)
    n = STEPS  # the batches before: this one gets weight 1/(n + 1), as in PyTorch
    closed_mean = (n * before["running_mean"] + mean) / (n + 1)
    closed_var = (n * before["running_var"] + var * m / (m - 1)) / (n + 1)
    for name, key, closed in (
        ("mean", "running_mean", closed_mean),
        ("var", "running_var", closed_var),
    ):
        np.testing.assert_allclose(stats[name], closed, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(after[key], closed, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(stats["count"], np.full(FEATURES, STEPS + 1))
    assert after["num_batches_tracked"] == STEPS + 1


def test_the_biased_running_variance_adds_less_by_exactly_the_bessel_term():
    # unbiased=False (flax.linen.BatchNorm's only choice) evaluates the same but folds σ²_B,
    # not m/(m−1)·σ²_B: (1 − momentum)·σ²_B/(m − 1) less per step than PyTorch.
    stats, after, x, _ = one_more_step("2d", 0.1, cumulative=False, unbiased=False)
    m, mean, var = batch_moments("2d", x)
    np.testing.assert_allclose(after["running_var"] - stats["var"], 0.1 * var / (m - 1), rtol=1e-4)
    np.testing.assert_allclose(stats["mean"], after["running_mean"], rtol=1e-5, atol=1e-6)


def test_without_the_count_the_cumulative_average_weighs_the_loaded_statistics_as_one_batch():
    layer, (x, _) = trained_torch("1d", None)
    variables = bnjax.from_torch(layer.state_dict())  # cumulative=False: no count
    _, updates = bnjax_layer(None).apply(
        variables, x, use_running_average=False, mutable=["batch_stats"]
    )
    m, mean, var = batch_moments("1d", x)
    old = layer.state_dict()
    np.testing.assert_allclose(
        updates["batch_stats"]["mean"], (old["running_mean"].numpy() + mean) / 2, rtol=1e-5
    )
    np.testing.assert_allclose(
        updates["batch_stats"]["var"],
        (old["running_var"].numpy() + var * m / (m - 1)) / 2,
        rtol=1e-5,
    )


def test_affine_false_converts_without_params_and_evaluates_as_pytorch():
    layer, (x, _) = trained_torch("2d", 0.1, affine=False)
    variables = bnjax.from_torch(layer.state_dict())
    assert set(variables) == {"batch_stats"}
    module = bnjax_layer(0.9, use_running_average=True, use_scale=False, use_bias=False)
    y = module.apply(variables, features_last("2d", x))
    expected = features_last("2d", torch_output(layer, x, train=False))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def test_without_running_statistics_pytorch_evaluates_with_batch_statistics():
    layer, (x, _) = trained_torch("2d", 0.1, track=False)
    variables = bnjax.from_torch(layer.state_dict())
    assert set(variables) == {"params"}
    y, _ = bnjax_layer(0.9, use_running_average=False).apply(
        variables, features_last("2d", x), mutable=["batch_stats"]
    )
    expected = features_last("2d", torch_output(layer, x, train=False))
    np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


def model():
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, FEATURES, 3), torch.nn.BatchNorm2d(FEATURES), torch.nn.ReLU()
    )


@pytest.mark.parametrize("prefix", ["1", "1."])
def test_a_layer_of_a_whole_model_is_converted_by_its_prefix(prefix):
    net = model()
    with torch.no_grad():
        net[1].running_mean.copy_(torch.tensor([1.0, 2.0, 3.0]))
    variables = bnjax.from_torch(net.state_dict(), prefix=prefix)
    np.testing.assert_array_equal(variables["batch_stats"]["mean"], [1.0, 2.0, 3.0])
    assert jax.tree.map(jnp.shape, variables) == {
        "params": {"scale": (3,), "bias": (3,)},
        "batch_stats": {"mean": (3,), "var": (3,)},
    }


def test_numpy_arrays_float64_and_bfloat16_tensors_convert_to_the_asked_dtypes():
    state = {k: v.numpy() for k, v in torch.nn.BatchNorm1d(2).state_dict().items()}
    state["running_var"] = np.array([2.0, 3.0])  # float64
    state["weight"] = torch.tensor([1.5, 2.5], dtype=torch.bfloat16)
    variables = bnjax.from_torch(state, param_dtype=jnp.bfloat16)
    assert variables["params"]["scale"].dtype == jnp.bfloat16
    np.testing.assert_array_equal(variables["params"]["scale"].astype(jnp.float32), [1.5, 2.5])
    assert variables["batch_stats"]["var"].dtype == jnp.float32
    np.testing.assert_array_equal(variables["batch_stats"]["var"], [2.0, 3.0])


def state_dict(**changes):
    state = dict(torch.nn.BatchNorm1d(2).state_dict())
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


COUNT = {"cumulative": True}


@pytest.mark.parametrize(
    ("state", "options", "error", "message"),
    [
        ([1.0], {}, TypeError, "state_dict must be a mapping of names to tensors or arrays"),
        (
            state_dict(),
            {"prefix": 1},
            TypeError,
            "prefix must be a str such as 'layer1.bn1', got 1",
        ),
        (state_dict(), {"param_dtype": jnp.int32}, TypeError, "param_dtype must be a floating"),
        (model().state_dict(), {"prefix": "bn"}, ValueError, r"prefix='bn\.' matches no key"),
        (model().state_dict(), {}, ValueError, r"got \['0.bias', '0.weight', .*\] too: pass"),
        (state_dict(bias=None), {}, ValueError, "state_dict has 'weight' but no 'bias'"),
        (state_dict(running_mean=None), {}, ValueError, "has 'running_var' but no 'running_mean'"),
        (state_dict(weight=torch.ones(2, 1)), {}, ValueError, r"vector .*got shape \(2, 1\)"),
        (state_dict(bias=torch.ones(3)), {}, ValueError, "must have one length .* 'bias': 3"),
        (state_dict(running_var=-torch.ones(2)), {}, ValueError, r"'running_var'\] must be >= 0"),
        (state_dict(running_mean=torch.ones(2, dtype=torch.int32)), {}, TypeError, "int32"),
        (state_dict(num_batches_tracked=None), COUNT, ValueError, "cumulative=True continues"),
        (state_dict(num_batches_tracked=torch.tensor(1.0)), COUNT, TypeError, "integer scalar"),
        (state_dict(num_batches_tracked=torch.tensor(-1)), COUNT, ValueError, r"\[0, 2\*\*31"),
        ({"num_batches_tracked": torch.tensor(0)}, {}, ValueError, "holds no weight, bias"),
    ],
)
def test_errors_name_the_argument_what_was_expected_and_what_came(state, options, error, message):
    with pytest.raises(error, match=message):
        bnjax.from_torch(state, **options)


def test_a_prefix_that_matches_nothing_lists_the_layers_there():
    with pytest.raises(ValueError, match=r"layers with running statistics here: \['1'\]"):
        bnjax.from_torch(model().state_dict(), prefix="2")


def test_the_variables_do_not_change_when_pytorch_trains_on():
    """The converted arrays are copies: neither torch's buffers nor a NumPy input alias them."""
    layer = torch.nn.BatchNorm1d(3)
    variables = bnjax.from_torch(layer.state_dict())
    before = jax.tree.map(np.array, variables)
    layer.train()
    layer(torch.randn(16, 3) * 5 + 2)  # updates running_mean and running_var in place
    with torch.no_grad():
        layer.weight.add_(1.0)
    arrays = {k: v.detach().numpy().copy() for k, v in layer.state_dict().items()}
    from_numpy = bnjax.from_torch(arrays)
    arrays["running_mean"][:] = 123.0
    jax.tree.map(np.testing.assert_array_equal, variables, before)
    assert not np.any(np.asarray(from_numpy["batch_stats"]["mean"]) == 123.0)
