"""Bad input: each case raises the named exception type with a message that helps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import random_array

import bnjax

PARAMS, STATE = bnjax.init(4)
X = random_array((8, 4))


def call(x=X, params=PARAMS, state=STATE, train=True, **kwargs):
    return bnjax.batch_norm(x, params, state, train, **kwargs)


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (
            dict(x=random_array((8, 5))),
            ValueError,
            r"params\.scale must have the feature shape of x, \(5,\).*got \(4,\)",
        ),
        (
            dict(x=random_array((8, 3, 4)), axis=1),
            ValueError,
            r"params\.scale must have the feature shape of x, \(3,\) \(x\.shape at axes \(1,\)\), "
            r"got \(4,\)",
        ),
        (
            dict(state=STATE._replace(var=jnp.ones(3))),
            ValueError,
            r"state\.var must have the feature shape of x, \(4,\).*got \(3,\)",
        ),
        (
            dict(axis=2),
            ValueError,
            r"axis=2 is out of range for x with 2 dimension\(s\) "
            r"\(shape \(8, 4\)\); valid axes are -2\.\.1",
        ),
        (dict(axis=(1, -1)), ValueError, r"axis=\(1, -1\) names the same dimension twice"),
        (
            dict(x=np.ones((8, 4), np.int32)),
            TypeError,
            r"x must be a floating-point \(or complex\) array, got dtype int32",
        ),
        (
            dict(x=np.float32(1.0)),
            ValueError,
            r"x must have at least one dimension.*got a scalar with shape \(\)",
        ),
        (dict(train=1), TypeError, r"train must be a static Python bool .*got 1 of type int"),
        (
            dict(mask=np.ones((3, 4), bool)),
            ValueError,
            r"mask with shape \(3, 4\) does not broadcast to x with shape \(8, 4\)",
        ),
        (
            dict(mask=np.ones((8, 4), np.float32)),
            TypeError,
            r"mask must be a boolean array, got dtype float32",
        ),
        (
            dict(x=np.ones((0, 4), np.float32)),
            ValueError,
            r"training needs a non-empty batch: x with shape \(0, 4\) has 0 elements",
        ),
        (
            dict(momentum=1.5),
            ValueError,
            r"momentum must be in \[0, 1\] \(or None\), got momentum=1\.5",
        ),
        (dict(momentum=-0.1), ValueError, r"momentum must be in \[0, 1\].*momentum=-0\.1"),
        (
            dict(momentum="0.9"),
            TypeError,
            r"momentum must be a real scalar \(in \[0, 1\]; a Python float, or a NumPy or "
            r"JAX scalar, traced or not\) or None, got '0\.9' of type str",
        ),
        (
            dict(epsilon=-1e-5),
            ValueError,
            r"epsilon must be a finite number >= 0, got epsilon=-1e-05",
        ),
        (dict(params={"scale": 1}), TypeError, r"params must be a bnjax\.BatchNormParams"),
        (dict(axis_index_groups=[[0]]), ValueError, r"axis_index_groups needs axis_name"),
        (dict(axis=1.0), TypeError, r"axis must be an int or a tuple of ints, got 1\.0"),
        (
            dict(state=STATE._replace(count=3)),
            TypeError,
            r"state\.count must be an integer array \(int32, as bnjax\.init makes\), got 3",
        ),
        (
            dict(state=STATE._replace(count=jnp.float32(3.5))),
            TypeError,
            r"state\.count must be an integer array",
        ),
    ],
    ids=lambda v: None,
)
def test_bad_input_raises_clear_error(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        call(**kwargs)


def test_traced_train_says_it_must_be_static():
    with pytest.raises(
        TypeError,
        match=r"train must be a static Python bool, got a traced value"
        r".*static_argnames='train'",
    ):
        jax.jit(lambda x, t: call(x=x, train=t))(X, True)


def test_empty_batch_is_fine_in_eval():
    y, _ = call(x=np.ones((0, 4), np.float32), train=False)
    assert y.shape == (0, 4)


def test_errors_are_raised_at_trace_time_under_jit():
    with pytest.raises(ValueError, match="params.scale must have the feature shape"):
        jax.jit(lambda x: call(x=x))(random_array((8, 5)))


@pytest.mark.slow
def test_numpy_integers_are_accepted():
    params, state = bnjax.init(np.int64(4))
    assert state.mean.shape == (4,)
    y, _ = bnjax.batch_norm(X, params, state, True, virtual_batch_size=np.int64(4))
    assert y.shape == X.shape


def test_renorm_limits_must_be_numbers():
    with pytest.raises(
        TypeError, match=r"r_max must be a real scalar \(>= 1; .*\), got '3' of type str"
    ):
        bnjax.batch_renorm(X, PARAMS, STATE, True, r_max="3")


def test_init_rejects_a_negative_num_features():
    with pytest.raises(ValueError, match=r"num_features must be a positive int .*got -1"):
        bnjax.init(-1)


def test_shape_errors_say_their_message_once_without_chex_boilerplate():
    message = (
        "params.scale must have the feature shape of x, (4,) (x.shape at axes (1,)), got (3,); "
        "was the layer initialized for another number of features or axis?"
    )
    with pytest.raises(ValueError) as raised:
        bnjax.batch_norm(X, PARAMS._replace(scale=jnp.ones(3)), STATE, True)
    assert str(raised.value) == message
    variables = bnjax.BatchNorm(use_running_average=True).init(jax.random.key(0), X[:, :3])
    with pytest.raises(ValueError) as raised:
        bnjax.BatchNorm(use_running_average=True).apply(variables, X)
    assert str(raised.value).startswith("params.scale must have the feature shape of x, (4,)")
    assert "Chex" not in str(raised.value)
