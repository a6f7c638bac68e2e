"""Every dtype argument of every front end: inexact outputs, floating parameters and statistics.

An integer output dtype would truncate the normalized values (flax.linen.BatchNorm and
flax.nnx.BatchNorm raise "Dtype must be inexact"); integer parameters could not learn;
integer or narrow running statistics would truncate or round updates away.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import bnjax

X = jnp.array([[1.0, 2.0], [3.0, 1.0], [2.0, 2.5]])


def _linen(train=True, **kwargs):
    bn = bnjax.BatchNorm(use_running_average=not train, **kwargs)
    variables = bn.init(jax.random.key(0), X)
    return bn.apply(variables, X, mutable=["batch_stats"])


def _nnx(train=True, **kwargs):
    return bnjax.nnx.BatchNorm(2, use_running_average=not train, rngs=nnx.Rngs(0), **kwargs)(X)


DTYPE = r"dtype must be an inexact \(floating-point or complex\) dtype or None, got dtype\('{}'\)"
PARAM = r"param_dtype must be a floating-point dtype, got dtype\('{}'\)"


@pytest.mark.parametrize("front_end", [_linen, _nnx])
@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(dtype=jnp.int32), DTYPE.format("int32") + ": an integer or boolean output would "
         r"truncate the normalized values; e\.g\. dtype=jnp\.float32"),
        (dict(dtype=jnp.uint8), DTYPE.format("uint8")),
        (dict(dtype=jnp.bool_), DTYPE.format("bool")),
        (dict(dtype="not a dtype"), r"dtype must be an inexact .* got 'not a dtype'"),
        (dict(param_dtype=jnp.int32), PARAM.format("int32") + r": scale and bias are learned"),
        (dict(param_dtype=jnp.complex64), PARAM.format("complex64")),
    ],
)  # fmt: skip
def test_non_inexact_dtype_or_non_float_param_dtype_is_refused(front_end, train, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        front_end(train, **kwargs)


@pytest.mark.parametrize("front_end", [_linen, _nnx])
def test_bfloat16_dtype_with_float16_params_gives_bfloat16_normalized_output(front_end):
    out = front_end(dtype=jnp.bfloat16, param_dtype=jnp.float16)
    y = out[0] if isinstance(out, tuple) else out
    assert y.dtype == jnp.bfloat16
    y_ref = (X - X.mean(0)) / jnp.sqrt(X.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y, np.float32), y_ref, atol=2e-2)


def test_functional_api_refuses_non_floating_init_dtype_and_integer_scale_or_var():
    for dtype, shown in ((jnp.int32, "int32"), (jnp.bool_, "bool"), (jnp.complex64, "complex64"),
                         ("not a dtype", "'not a dtype'")):  # fmt: skip
        with pytest.raises(TypeError, match=rf"dtype must be a floating dtype, got {shown}$"):
            bnjax.init(2, dtype=dtype)
    params, state = bnjax.init(2)
    with pytest.raises(TypeError, match=r"params\.scale must be floating point, got dtype int32"):
        bnjax.batch_norm(X, params._replace(scale=jnp.ones(2, jnp.int32)), state, True)
    with pytest.raises(TypeError, match=r"state\.var must be floating point, got dtype int32"):
        bnjax.batch_norm(X, params, state._replace(var=jnp.ones(2, jnp.int32)), False)


def test_linen_integer_statistics_from_a_checkpoint_are_refused():
    bn = bnjax.BatchNorm(use_running_average=True)
    variables = bn.init(jax.random.key(0), X)
    variables["batch_stats"]["mean"] = jnp.zeros(2, jnp.int32)
    with pytest.raises(TypeError, match=r"state\.mean must be floating point or complex, got "
                       r"dtype int32"):  # fmt: skip
        bn.apply(variables, X)
