"""vmap with axis_name (statistics across the mapped axis), ensembles, property tests."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm, random_array, random_params
from hypothesis import given
from hypothesis import strategies as st
from oracle import batch_stats, reference

import bnjax


@pytest.mark.slow
def test_vmap_with_axis_name_equals_the_global_batch():
    x = random_array((4, 3, 5), seed=30, loc=1e3)  # 4 mapped "devices", 3 examples each
    mask = np.random.default_rng(31).random((4, 3, 1)) < 0.7
    mask[1] = False  # one member holds no valid element at all
    mask[0, 0] = True
    params, state = random_params(5)

    def per_member(x, m):
        return bnjax.batch_norm(x, params, state, True, mask=m, unbiased=True, axis_name="b")

    y, states = jax.jit(jax.vmap(per_member, axis_name="b"))(x, mask)
    y_global, state_global = jit_batch_norm(
        x.reshape(12, 5), params, state, True, mask=mask.reshape(12, 1), unbiased=True
    )
    # Chan's combination rounds the mean of 1e3 to float32 (ulp 6e-5), times γ/σ up to ~3.
    np.testing.assert_allclose(y.reshape(12, 5), y_global, atol=5e-4)
    for i in range(4):
        chex.assert_trees_all_close(
            jax.tree.map(lambda s, i=i: s[i], states), state_global, atol=1e-5, rtol=1e-5
        )

    def loss(x):
        return jnp.sum(jnp.sin(jax.vmap(per_member, axis_name="b")(x, mask)[0]))

    def loss_global(x):
        y, _ = bnjax.batch_norm(x.reshape(12, 5), params, state, True, mask=mask.reshape(12, 1))
        return jnp.sum(jnp.sin(y))

    # One float32 ulp of a mean of 1e3 is 6e-5; the gradient amplifies it about tenfold.
    np.testing.assert_allclose(
        jax.jit(jax.grad(loss))(x), jax.jit(jax.grad(loss_global))(x), atol=1e-3
    )


def test_vmap_over_an_ensemble_keeps_members_independent():
    x = random_array((3, 8, 2), seed=32)
    params, state = bnjax.init(2)
    ensemble_params = jax.tree.map(lambda p: jnp.stack([p, 2 * p, 3 * p]), params)
    ensemble_state = jax.tree.map(lambda s: jnp.stack([s] * 3), state)
    y, new_states = jax.vmap(lambda x, p, s: bnjax.batch_norm(x, p, s, True))(
        x, ensemble_params, ensemble_state
    )
    for i in range(3):
        y_i, state_i = jit_batch_norm(
            x[i], jax.tree.map(lambda p, i=i: p[i], ensemble_params), state, True
        )
        np.testing.assert_allclose(y[i], y_i, atol=1e-6)
        chex.assert_trees_all_close(jax.tree.map(lambda s, i=i: s[i], new_states), state_i)


@pytest.mark.slow
@given(
    shape=st.lists(st.integers(1, 4), min_size=1, max_size=4),
    data=st.data(),
)
def test_random_shapes_and_axes_match_the_oracle(shape, data):
    ndim = len(shape)
    axes = data.draw(
        st.lists(
            st.integers(-ndim, ndim - 1), min_size=1, max_size=ndim, unique_by=lambda a: a % ndim
        )
    )
    axis = tuple(axes) if len(axes) > 1 else axes[0]
    train = data.draw(st.booleans())
    loc = data.draw(st.sampled_from([0.0, 100.0, -3e3]))
    x = random_array(tuple(shape), seed=len(shape), loc=loc)
    features = tuple(shape[a % ndim] for a in sorted(a % ndim for a in axes))
    params, state = random_params(features)
    y, new_state = bnjax.batch_norm(x, params, state, train, axis=axis)
    y_ref, mean_ref, var_ref = reference(
        x, params.scale, params.bias, state.mean, state.var, train, axis=axis
    )
    atol = 2e-3 if loc else 5e-5
    if train:
        # A float32 mean is exact to half an ulp of |μ|, and y carries that error times γ/σ:
        # at |μ|/σ ~ 1e5 (two nearly equal values at -3e3) no float32 mean does better.
        _, mean, var = batch_stats(x, axis=axis)
        scale = np.abs(np.asarray(params.scale, np.float64)).reshape(mean.shape)
        atol = atol + scale * np.finfo(np.float32).eps * np.abs(mean) / np.sqrt(var + 1e-5)
    error = np.abs(np.asarray(y, np.float64) - y_ref)
    np.testing.assert_array_less(error, atol + 1e-4 * np.abs(y_ref))
    np.testing.assert_allclose(new_state.mean, mean_ref.reshape(features), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_state.var, var_ref.reshape(features), rtol=1e-4, atol=1e-5)
