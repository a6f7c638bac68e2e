"""Shared test configuration: strict dtype promotion and shared compiled functions."""

import os

import jax
import numpy as np
import pytest
from hypothesis import settings

import bnjax

jax.config.update("jax_numpy_dtype_promotion", "strict")

# The suite draws the same examples on every run (a red CI names a real regression);
# HYPOTHESIS_PROFILE=explore draws many fresh ones to look for new failures.
settings.register_profile("default", max_examples=25, deadline=None, derandomize=True)
settings.register_profile("explore", max_examples=2000, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

# The suite executes the notebooks with few training steps (their committed outputs come from
# full runs); the kernels inherit this variable.
os.environ.setdefault("BNJAX_NOTEBOOK_SMOKE", "1")

STATIC = (
    "train",
    "axis",
    "momentum",
    "epsilon",
    "unbiased",
    "axis_name",
    "axis_index_groups",
    "check_values",
    "virtual_batch_size",
)

# One jitted batch_norm for the whole session: tests share its compilation cache.
jit_batch_norm = jax.jit(bnjax.batch_norm, static_argnames=STATIC)


@pytest.fixture(params=["jit", "eager"])
def bn(request):
    """bnjax.batch_norm compiled with jit, or run op by op."""
    return jit_batch_norm if request.param == "jit" else bnjax.batch_norm


def random_array(shape, seed=0, loc=0.0, scale=1.0, dtype=np.float32):
    """A reproducible normal array as NumPy (float64 values rounded to ``dtype``)."""
    values = np.random.default_rng(seed).normal(loc, scale, shape)
    return np.asarray(values).astype(dtype)


def random_params(num_features, seed=1, dtype=np.float32):
    """Non-trivial scale and bias and running statistics."""
    rng = np.random.default_rng(seed)
    shape = (num_features,) if isinstance(num_features, int) else tuple(num_features)
    params = bnjax.BatchNormParams(
        scale=jax.numpy.asarray(rng.uniform(0.5, 2.0, shape).astype(dtype)),
        bias=jax.numpy.asarray(rng.normal(0, 1, shape).astype(dtype)),
    )
    state = bnjax.BatchNormState(
        mean=jax.numpy.asarray(rng.normal(0, 1, shape).astype(dtype)),
        var=jax.numpy.asarray(rng.uniform(0.5, 2.0, shape).astype(dtype)),
        count=jax.numpy.asarray(3, jax.numpy.int32),
    )
    return params, state
