"""Each argument is checked once, at the core's boundary, with the same message for every caller."""

import flax.linen as nn
import jax
import numpy as np
import pytest
from conftest import random_array
from flax import nnx

import bnjax
from bnjax._core import validate

MISMATCH = (
    r"params\.scale must have the feature shape of x, \(5,\) \(x\.shape at axes \(1,\)\), "
    r"got \(3,\); was the layer initialized for another number of features or axis\?"
)
STATE_MISMATCH = r"state\.mean must have the feature shape of x, \(5,\).*got \(3,\)"


def count_layouts(monkeypatch):
    """Counts how often the axes of x are worked out (``validate.canonical_axes``)."""
    calls = []
    original = validate.canonical_axes

    def counting(*args):
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(validate, "canonical_axes", counting)
    return calls


@pytest.mark.parametrize("train", [True, False])
def test_every_caller_works_out_the_axes_once(monkeypatch, train):
    x = random_array((4, 3))
    linen_variables = bnjax.BatchNorm().init(jax.random.key(0), x, use_running_average=True)
    nnx_layer = bnjax.nnx.BatchNorm(3, rngs=nnx.Rngs(0))
    params, state = bnjax.init(3)
    calls = count_layouts(monkeypatch)
    bnjax.batch_norm(x, params, state, train)
    assert len(calls) == 1
    bnjax.BatchNorm().apply(linen_variables, x, not train, mutable=["batch_stats"])
    assert len(calls) == 2
    nnx_layer(x, use_running_average=not train)
    assert len(calls) == 3


@pytest.mark.parametrize("train", [True, False])
def test_a_feature_mismatch_gives_one_message_everywhere(train):
    x = random_array((4, 3))
    wide = random_array((4, 5))
    params, state = bnjax.init(3)
    with pytest.raises(ValueError, match=MISMATCH):
        bnjax.batch_norm(wide, params, state, train)
    variables = bnjax.BatchNorm().init(jax.random.key(0), x, use_running_average=True)
    with pytest.raises(ValueError, match=MISMATCH):
        bnjax.BatchNorm().apply(variables, wide, not train, mutable=["batch_stats"])
    with pytest.raises(ValueError, match=MISMATCH):
        bnjax.nnx.BatchNorm(3, rngs=nnx.Rngs(0))(wide, use_running_average=not train)
    # without parameters the running statistics are what disagrees
    bare = bnjax.BatchNorm(use_scale=False, use_bias=False)
    variables = bare.init(jax.random.key(0), x, use_running_average=True)
    with pytest.raises(ValueError, match=STATE_MISMATCH):
        bare.apply(variables, wide, not train, mutable=["batch_stats"])


def test_population_statistics_of_a_layer_fed_the_wrong_width_raise():
    # the population being built has the layer's shape, so the core sees the mismatch
    bare = bnjax.BatchNorm(use_scale=False, use_bias=False)
    variables = bare.init(jax.random.key(0), random_array((4, 3)), use_running_average=True)
    with pytest.raises(ValueError, match=STATE_MISMATCH):
        bnjax.recompute_population_stats(
            bare, variables, [random_array((4, 5))], progress=False, use_running_average=False
        )


def test_partitioned_parameters_keep_working_and_a_wrong_width_gets_the_same_message():
    # nn.with_partitioning boxes the stored parameters (nn.Partitioned), as flax.linen allows
    layer = bnjax.BatchNorm(
        scale_init=nn.with_partitioning(nn.initializers.ones, ("model",)),
        bias_init=nn.with_partitioning(nn.initializers.zeros, ("model",)),
    )
    x = random_array((4, 6))
    variables = layer.init(jax.random.key(0), x, use_running_average=True)
    assert isinstance(variables["params"]["scale"], nn.Partitioned)
    y, _ = layer.apply(variables, x, False, mutable=["batch_stats"])
    expected, _ = bnjax.BatchNorm().apply(
        {**variables, "params": nn.unbox(variables["params"])}, x, False, mutable=["batch_stats"]
    )
    np.testing.assert_array_equal(y, expected)
    with pytest.raises(ValueError, match=r"params\.scale must have the feature shape of x, \(5,\)"):
        layer.apply(variables, random_array((4, 5)), True)
