"""Gradients (vs the oracle and finite differences), forward mode, higher order, memory."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_array, random_params
from jax.test_util import check_grads
from oracle import train_gradients

import bnjax


def _loss_and_grads(x, params, state, cotangent, **kwargs):
    def f(x, params):
        return bnjax.batch_norm(x, params, state, True, **kwargs)[0]

    _, pullback = jax.vjp(jax.jit(f), x, params)
    return pullback(cotangent)


@pytest.mark.slow
@pytest.mark.parametrize(
    "shape, axis, mask_shape",
    [((12, 4), -1, None), ((3, 4, 2, 5), 1, None), ((6, 5, 3), -1, (6, 5, 1))],
)
def test_training_gradients_match_oracle(shape, axis, mask_shape):
    x = random_array(shape, seed=20, loc=1.5, scale=2.0)
    cotangent = random_array(shape, seed=21)
    features = shape[axis]
    params, state = random_params(features)
    mask = None if mask_shape is None else np.random.default_rng(22).random(mask_shape) < 0.7
    dx, dparams = _loss_and_grads(x, params, state, cotangent, axis=axis, mask=mask)
    dx_ref, dscale_ref, dbias_ref = train_gradients(
        x, params.scale, cotangent, axis=axis, mask=mask
    )
    np.testing.assert_allclose(dx, dx_ref, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(dparams.scale, dscale_ref.ravel(), atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(dparams.bias, dbias_ref.ravel(), atol=1e-4, rtol=1e-5)


def test_eval_gradients_in_closed_form():
    x = random_array((5, 3), seed=23)
    g = random_array((5, 3), seed=24)
    params, state = random_params(3)

    def f(x, params):
        return bnjax.batch_norm(x, params, state, False)[0]

    _, pullback = jax.vjp(f, x, params)
    dx, dparams = pullback(g)
    inv = 1 / np.sqrt(np.asarray(state.var, np.float64) + 1e-5)
    xhat = (x - np.asarray(state.mean, np.float64)) * inv
    np.testing.assert_allclose(dx, g * np.asarray(params.scale) * inv, rtol=1e-5)
    np.testing.assert_allclose(dparams.scale, (g * xhat).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dparams.bias, g.sum(0), rtol=1e-5)


CHECK_CASES = [
    pytest.param(dict(train=True), id="train"),
    pytest.param(
        dict(train=True, mask=np.array([[True], [False], [True], [True], [True]])), id="train-mask"
    ),
    pytest.param(dict(train=False), id="eval"),
]


@pytest.mark.slow
@pytest.mark.parametrize("case", CHECK_CASES)
def test_gradients_pass_second_order_checks_forward_and_reverse(case):
    with jax.enable_x64(True):
        x = random_array((5, 3), seed=25, loc=1.0, dtype=np.float64)
        params, state = random_params(3, dtype=np.float64)
        state = state._replace(count=jnp.asarray(3, jnp.int32))

        @jax.jit  # compiled once per derivative, not run op by op
        def f(x, scale, bias):
            y, _ = bnjax.batch_norm(x, bnjax.BatchNormParams(scale, bias), state, **case)
            return jnp.sin(y)

        check_grads(
            f, (x, params.scale, params.bias), order=2, modes=("fwd", "rev"), atol=1e-5, rtol=1e-5
        )


def test_running_statistics_carry_no_gradient():
    """As in Flax, the new running statistics are state: stop_gradient, zero tangents."""
    x = jnp.asarray(random_array((6, 3), seed=28))
    params, state = random_params(3)

    def stats(x, scale):
        new = bnjax.batch_norm(x, params._replace(scale=scale), state, True)[1]
        return new.mean, new.var

    _, tangents = jax.jvp(stats, (x, params.scale), (jnp.ones_like(x), jnp.ones(3)))
    for tangent in tangents:
        np.testing.assert_array_equal(tangent, np.zeros(3))
    grads = jax.grad(lambda x: jnp.sum(stats(x, params.scale)[1]))(x)
    np.testing.assert_array_equal(grads, np.zeros((6, 3)))


@pytest.mark.slow
def test_jvp_jacfwd_hessian_agree_with_reverse_mode():
    x = jnp.asarray(random_array((4, 2), seed=26))
    params, state = random_params(2)

    @jax.jit
    def loss(x):
        y, _ = bnjax.batch_norm(x, params, state, True)
        return jnp.sum(jnp.sin(y) * jnp.arange(8.0, dtype=jnp.float32).reshape(4, 2))

    f = jax.jit(lambda x: bnjax.batch_norm(x, params, state, True)[0])
    tangent = jnp.asarray(random_array((4, 2), seed=27))
    _, jvp_out = jax.jvp(f, (x,), (tangent,))
    jac_rev = jax.jacrev(f)(x)
    np.testing.assert_allclose(jvp_out, jnp.einsum("ijkl,kl->ij", jac_rev, tangent), atol=1e-5)
    np.testing.assert_allclose(jax.jacfwd(f)(x), jac_rev, atol=1e-5)
    hessian = jax.hessian(loss)(x)
    np.testing.assert_allclose(hessian, jax.jacrev(jax.grad(loss))(x), atol=1e-4)
    np.testing.assert_allclose(hessian, hessian.transpose(2, 3, 0, 1), atol=1e-4)


def saved_bytes(f, x, params):
    """Bytes of the residuals that jax.vjp keeps for the backward, beyond x."""
    _, pullback = jax.vjp(f, x, params)
    return sum(
        leaf.nbytes
        for leaf in jax.tree.leaves(pullback)
        if hasattr(leaf, "nbytes") and leaf is not x
    )


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("with_mask", [False, True])
def test_backward_keeps_only_x_and_per_feature_vectors(dtype, train, with_mask):
    x = jnp.asarray(random_array((32, 6, 6, 16), seed=28)).astype(dtype)
    mask = (jnp.arange(32) < 20)[:, None, None, None] if with_mask else None
    params, state = random_params(16)
    f = jax.jit(functools.partial(bnjax.batch_norm, state=state, train=train, mask=mask))
    assert saved_bytes(lambda x, p: f(x, p)[0], x, params) <= 0.05 * x.nbytes


def test_flax_keeps_full_size_copies_for_comparison():
    import flax.linen as nn

    x = jnp.asarray(random_array((32, 6, 6, 16), seed=28))
    module = nn.BatchNorm(use_running_average=False)
    variables = module.init(jax.random.key(0), x)

    def f(x, params):
        y, _ = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]}, x, mutable=["batch_stats"]
        )
        return y

    assert saved_bytes(jax.jit(f), x, variables["params"]) >= 1.9 * x.nbytes
