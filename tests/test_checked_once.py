"""Each argument is checked once, at the core's boundary, with the same message for every caller."""

import jax
import jax.numpy as jnp
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


def test_population_statistics_of_a_layer_fed_the_wrong_width_raise_and_change_nothing():
    bare = bnjax.BatchNorm(use_scale=False, use_bias=False)
    variables = bare.init(jax.random.key(0), random_array((4, 3)), use_running_average=True)
    before = jax.tree.map(jnp.copy, variables)
    with pytest.raises(ValueError, match=STATE_MISMATCH):
        bnjax.recompute_population_stats(
            bare, variables, [random_array((4, 5))], progress=False, use_running_average=False
        )
    assert jax.tree.all(jax.tree.map(jnp.array_equal, variables, before))
