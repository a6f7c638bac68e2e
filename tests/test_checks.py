"""The opt-in value checks (check_values=True) inside jit."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_array, random_params
from jax.experimental import checkify

import bnjax


def checked(train):
    f = functools.partial(bnjax.batch_norm, train=train, check_values=True)
    return jax.jit(checkify.checkify(f))


def test_clean_input_passes_and_matches_unchecked():
    x = random_array((6, 3))
    params, state = random_params(3)
    err, (y, new_state) = checked(True)(x, params, state)
    err.throw()  # no error
    y_plain, state_plain = bnjax.batch_norm(x, params, state, True)
    chex.assert_trees_all_close((y, new_state), (y_plain, state_plain))


def test_non_finite_input_names_the_feature():
    x = random_array((6, 5))
    x[3, 2] = np.nan
    x[1, 4] = np.inf
    params, state = random_params(5)
    err, _ = checked(True)(x, params, state)
    with pytest.raises(
        checkify.JaxRuntimeError,
        match=r"x has NaN/Inf values in 2 feature\(s\); first offending "
        r"feature index: 2",
    ):
        err.throw()


def test_negative_running_variance_names_the_feature_in_eval():
    params, state = random_params(3)
    state = state._replace(var=jnp.array([1.0, 1.0, -0.5], jnp.float32))
    err, _ = checked(False)(random_array((4, 3)), params, state)
    with pytest.raises(
        checkify.JaxRuntimeError,
        match=r"state\.var is negative in 1 feature\(s\); first offending feature "
        r"index: 2",
    ):
        err.throw()


def test_float16_input_near_its_limit_passes_the_checks_with_finite_statistics():
    x = random_array((4, 3)).astype(np.float16)
    x[:, 1] = 6e4  # finite float16, but the statistics overflow nothing; make variance huge
    x[0, 1] = -6e4
    params, state = random_params(3)
    err, (_, new_state) = checked(True)(x, params, state)
    err.throw()  # float32 accumulation keeps these statistics finite
    assert np.all(np.isfinite(new_state.var))


def test_chexify_raises_the_non_finite_input_error():
    x = random_array((6, 3))
    x[0, 0] = np.nan
    params, state = random_params(3)
    f = chex.chexify(
        jax.jit(functools.partial(bnjax.batch_norm, train=True, check_values=True)),
        async_check=False,
    )
    with pytest.raises(checkify.JaxRuntimeError, match=r"first offending feature index: 0"):
        f(x, params, state)
    chex.block_until_chexify_assertions_complete()


def test_checks_add_nothing_to_the_program_when_off():
    x, (params, state) = random_array((6, 3)), random_params(3)
    jaxpr_off = str(
        jax.make_jaxpr(functools.partial(bnjax.batch_norm, train=True))(x, params, state)
    )
    jaxpr_on = str(
        jax.make_jaxpr(
            checkify.checkify(functools.partial(bnjax.batch_norm, train=True, check_values=True))
        )(x, params, state)
    )
    assert "check" not in jaxpr_off
    assert jaxpr_on.count("is_finite") > jaxpr_off.count("is_finite")
