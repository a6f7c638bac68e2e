"""momentum, epsilon, r_max and d_max as Flax takes them: Python, NumPy or JAX scalars, traced too.

A concrete value is range-checked (ValueError naming it); a traced one (a schedule inside
jit) cannot be and is used as it is. Every API gives the numbers of the Python float.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_array, random_params
from flax import nnx
from oracle import reference

import bnjax

X = random_array((6, 3), seed=90, loc=2.0, scale=1.5)
PARAMS, STATE = random_params(3)  # count 3
MOMENTUM, EPSILON = 0.75, 0.25  # exact in float32: the forms below give the same numbers

FORMS = {
    "numpy": lambda v: np.float32(v),
    "numpy 0-d": lambda v: np.asarray(v, np.float64),
    "jax": lambda v: jnp.float32(v),
}


def expected():
    y, mean, var = reference(X, PARAMS.scale, PARAMS.bias, STATE.mean, STATE.var, True,
                             momentum=MOMENTUM, epsilon=EPSILON)  # fmt: skip
    return y, mean.ravel(), var.ravel()


def assert_expected(y, mean, var):
    y_ref, mean_ref, var_ref = expected()
    np.testing.assert_allclose(y, y_ref, atol=2e-6)
    np.testing.assert_allclose(mean, mean_ref, rtol=1e-6)
    np.testing.assert_allclose(var, var_ref, rtol=1e-6)


@pytest.mark.parametrize("form", FORMS)
def test_functional_takes_numpy_and_jax_scalars(form):
    cast = FORMS[form]
    y, state = bnjax.batch_norm(X, PARAMS, STATE, True, momentum=cast(MOMENTUM),
                                epsilon=cast(EPSILON))  # fmt: skip
    assert_expected(y, state.mean, state.var)
    y_eval, _ = bnjax.batch_norm(X, PARAMS, STATE, False, epsilon=cast(EPSILON))
    y_ref = reference(X, PARAMS.scale, PARAMS.bias, STATE.mean, STATE.var, False, epsilon=EPSILON)
    np.testing.assert_allclose(y_eval, y_ref[0], atol=2e-6)


def test_functional_takes_traced_momentum_and_epsilon():
    @jax.jit
    def step(momentum, epsilon):
        y, state = bnjax.batch_norm(X, PARAMS, STATE, True, momentum=momentum, epsilon=epsilon)
        return y, state.mean, state.var

    assert_expected(*step(MOMENTUM, EPSILON))
    grad = jax.grad(lambda e: jnp.sum(step(MOMENTUM, e)[0] ** 3))(EPSILON)  # epsilon traced
    assert np.isfinite(grad)


def test_renorm_takes_traced_and_jax_limits():
    y_ref, _ = bnjax.batch_renorm(X, PARAMS, STATE, True, r_max=1.5, d_max=0.5, momentum=0.5)
    run = jax.jit(lambda r, d, m: bnjax.batch_renorm(X, PARAMS, STATE, True, r_max=r, d_max=d,
                                                     momentum=m)[0])  # fmt: skip
    np.testing.assert_allclose(run(1.5, 0.5, 0.5), y_ref, atol=1e-6)
    y, _ = bnjax.batch_renorm(X, PARAMS, STATE, True, r_max=jnp.float32(1.5),
                              d_max=np.float32(0.5), momentum=jnp.float32(0.5))  # fmt: skip
    np.testing.assert_allclose(y, y_ref, atol=1e-6)


def test_linen_takes_jax_and_traced_scalars():
    variables = {"params": {"scale": PARAMS.scale, "bias": PARAMS.bias},
                 "batch_stats": {"mean": STATE.mean, "var": STATE.var}}  # fmt: skip

    def apply(momentum, epsilon):
        bn = bnjax.BatchNorm(use_running_average=False, momentum=momentum, epsilon=epsilon)
        y, updates = bn.apply(variables, X, mutable=["batch_stats"])
        return y, updates["batch_stats"]["mean"], updates["batch_stats"]["var"]

    assert_expected(*apply(jnp.float32(MOMENTUM), jnp.float32(EPSILON)))
    assert_expected(*jax.jit(apply)(MOMENTUM, EPSILON))


def test_nnx_takes_jax_and_traced_scalars():
    def run(momentum, epsilon):
        bn = bnjax.nnx.BatchNorm(3, momentum=momentum, epsilon=epsilon, rngs=nnx.Rngs(0))
        bn.scale[...], bn.bias[...] = PARAMS.scale, PARAMS.bias
        bn.mean[...], bn.var[...] = STATE.mean, STATE.var
        y = bn(X)
        return y, bn.mean[...], bn.var[...]

    assert_expected(*run(jnp.float32(MOMENTUM), np.float32(EPSILON)))
    assert_expected(*jax.jit(run)(MOMENTUM, EPSILON))


def test_fold_takes_a_jax_epsilon():
    kernel = jnp.ones((2, 3))
    folded = bnjax.fold_into_linear(kernel, None, PARAMS, STATE, epsilon=jnp.float32(EPSILON))
    expected_fold = bnjax.fold_into_linear(kernel, None, PARAMS, STATE, epsilon=EPSILON)
    jax.tree.map(np.testing.assert_array_equal, folded, expected_fold)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (dict(momentum=jnp.float32(1.5)), ValueError,
         r"momentum must be in \[0, 1\] \(or None\), got momentum=Array\(1\.5, dtype=float32\)"),
        (dict(momentum=np.float32(-0.5)), ValueError, r"momentum must be in \[0, 1\] \(or None\)"),
        (dict(epsilon=jnp.float32(-1.0)), ValueError,
         r"epsilon must be a finite number >= 0, got epsilon=Array\(-1\., dtype=float32\)"),
        (dict(epsilon=jnp.float32(jnp.inf)), ValueError, r"epsilon must be a finite number >= 0"),
        (dict(momentum=jnp.float32(jnp.nan)), ValueError, r"momentum must be in \[0, 1\]"),
        (dict(momentum=jnp.array([0.9, 0.9])), TypeError,
         r"momentum must be a real scalar .* got an array of shape \(2,\)"),
        (dict(epsilon=jnp.complex64(1e-5)), TypeError,
         r"epsilon must be a real scalar .* got an array of dtype complex64"),
        (dict(momentum=True), TypeError,
         r"momentum must be a real scalar .* got True of type bool"),
        (dict(epsilon=jnp.bool_(True)), TypeError,
         r"epsilon must be a real scalar .* got an array of dtype bool"),
    ],
)  # fmt: skip
def test_bad_scalars_are_named_in_every_api(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        bnjax.batch_norm(X, PARAMS, STATE, True, **kwargs)
    with pytest.raises(error, match=pattern):
        bnjax.batch_renorm(X, PARAMS, STATE, False, **kwargs)
    with pytest.raises(error, match=pattern):
        bnjax.BatchNorm(use_running_average=True, **kwargs).init(jax.random.key(0), X)
    with pytest.raises(error, match=pattern):
        bnjax.nnx.BatchNorm(3, **kwargs, rngs=nnx.Rngs(0))(X)


def test_bad_renorm_limits_as_jax_scalars_or_arrays_are_named():
    with pytest.raises(ValueError, match=r"r_max must be >= 1, got r_max=Array\(0\.5"):
        bnjax.batch_renorm(X, PARAMS, STATE, True, r_max=jnp.float32(0.5))
    with pytest.raises(TypeError, match=r"d_max must be a real scalar \(>= 0; .*shape \(3,\)"):
        bnjax.batch_renorm(X, PARAMS, STATE, True, d_max=np.zeros(3))
