"""batch_renorm against a float64 closed form; its limits, gradients, memory and modules."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_array, random_params
from flax import nnx
from jax.test_util import check_grads
from oracle import reference, train_gradients
from oracle import renorm as oracle_renorm

import bnjax

renorm_jit = jax.jit(
    bnjax.batch_renorm, static_argnames=("train", "r_max", "d_max", "axis", "momentum")
)


@pytest.mark.slow
@pytest.mark.parametrize("r_max, d_max", [(3.0, 5.0), (1.5, 0.5), (1.0, 0.0)])
@pytest.mark.parametrize("shape, axis", [((16, 4), -1), ((4, 3, 5, 2), 1)])
def test_matches_closed_form_and_updates_statistics_like_batch_norm(shape, axis, r_max, d_max):
    x = random_array(shape, seed=80, loc=1.0, scale=2.5)
    params, state = random_params(shape[axis])
    y, new_state = renorm_jit(x, params, state, True, r_max=r_max, d_max=d_max, axis=axis)
    y_ref, _, _ = oracle_renorm(x, params, state, r_max, d_max, axis)
    np.testing.assert_allclose(y, y_ref, atol=3e-5, rtol=1e-5)
    _, mean_ref, var_ref = reference(x, params.scale, params.bias, state.mean, state.var, True,
                                     axis=axis, seen=3)  # fmt: skip
    np.testing.assert_allclose(new_state.mean, mean_ref.ravel(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(new_state.var, var_ref.ravel(), rtol=1e-6, atol=1e-6)


def test_r_max_1_d_max_0_and_eval_are_exactly_batch_norm():
    x = random_array((8, 3), seed=81, loc=2.0)
    params, state = random_params(3)
    for train in (True, False):
        y, s = bnjax.batch_renorm(x, params, state, train, r_max=1.0, d_max=0.0)
        y_bn, s_bn = bnjax.batch_norm(x, params, state, train)
        np.testing.assert_array_equal(y, y_bn)
        jax.tree.map(np.testing.assert_array_equal, s, s_bn)
    y_eval, _ = bnjax.batch_renorm(x, params, state, False)
    np.testing.assert_array_equal(y_eval, bnjax.batch_norm(x, params, state, False)[0])


@pytest.mark.slow
def test_r_and_d_are_constants_for_the_gradient():
    x = random_array((12, 3), seed=82, loc=1.0, scale=3.0)
    g = random_array((12, 3), seed=83)
    params, state = random_params(3)
    f = functools.partial(bnjax.batch_renorm, state=state, train=True)
    _, pullback = jax.vjp(lambda x, p: f(x, p)[0], x, params)
    dx, dparams = pullback(g)
    _, r, _ = oracle_renorm(x, params, state, 3.0, 5.0)
    dx_ref, _, _ = train_gradients(x, np.asarray(params.scale) * r.ravel(), g)
    np.testing.assert_allclose(dx, dx_ref, atol=3e-5, rtol=1e-4)
    y_ref, _, _ = oracle_renorm(x, params._replace(bias=jnp.zeros(3)), state, 3.0, 5.0)
    dscale_ref = (g * (y_ref / np.asarray(params.scale))).sum(0)
    np.testing.assert_allclose(dparams.scale, dscale_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dparams.bias, g.sum(0), rtol=1e-5)


@pytest.mark.slow
def test_gradients_pass_second_order_checks_where_r_and_d_are_clipped():
    with jax.enable_x64(True):
        x = random_array((6, 3), seed=84, loc=1.0, dtype=np.float64)
        params, state = random_params(3, dtype=np.float64)
        # Finite differences see r and d move with x; autodiff treats them as constants
        # (the paper's rule). Where both are clipped they are constant, and the two agree.
        state = state._replace(mean=jnp.full(3, 50.0), var=jnp.full(3, 100.0))

        @jax.jit  # compiled once per derivative, not run op by op
        def f(x, scale, bias):
            y, _ = bnjax.batch_renorm(x, bnjax.BatchNormParams(scale, bias), state, True,
                                      r_max=1.2, d_max=0.3)  # fmt: skip
            return jnp.sin(y)

        check_grads(f, (x, params.scale, params.bias), order=2, modes=("fwd", "rev"),
                    atol=1e-5, rtol=1e-5)  # fmt: skip


def test_backward_keeps_only_x_and_per_feature_vectors():
    x = jnp.asarray(random_array((32, 6, 6, 16), seed=85))
    params, state = random_params(16)
    f = jax.jit(lambda x, p: bnjax.batch_renorm(x, p, state, True)[0])
    _, pullback = jax.vjp(f, x, params)
    saved = sum(leaf.nbytes for leaf in jax.tree.leaves(pullback)
                if hasattr(leaf, "nbytes") and leaf is not x)  # fmt: skip
    assert saved <= 0.05 * x.nbytes


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(r_max=0.5), r"r_max must be >= 1, got r_max=0\.5"),
        (dict(d_max=-1.0), r"d_max must be >= 0, got d_max=-1\.0"),
    ],
)
def test_limits_out_of_range_are_refused(kwargs, pattern):
    params, state = bnjax.init(3)
    with pytest.raises(ValueError, match=pattern):
        bnjax.batch_renorm(random_array((4, 3)), params, state, True, **kwargs)


def test_linen_and_nnx_renorm_option_gives_batch_renorm():
    x = random_array((8, 3), seed=86, loc=3.0)
    params, state = random_params(3)
    y_core, _ = bnjax.batch_renorm(x, params, state, True, r_max=2.0, d_max=1.0)
    variables = {"params": {"scale": params.scale, "bias": params.bias},
                 "batch_stats": {"mean": state.mean, "var": state.var}}  # fmt: skip
    bn = bnjax.BatchNorm(use_running_average=False, renorm=True, r_max=2.0, d_max=1.0)
    y_linen, _ = bn.apply(variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_linen, y_core, atol=1e-6)
    model = bnjax.nnx.BatchNorm(3, renorm=True, r_max=2.0, d_max=1.0, rngs=nnx.Rngs(0))
    model.scale[...], model.bias[...] = params.scale, params.bias
    model.mean[...], model.var[...] = state.mean, state.var
    np.testing.assert_allclose(model(x), y_core, atol=1e-6)
