"""Ghost batch norm (virtual_batch_size) against the oracle, group by group."""

import jax
import numpy as np
import pytest
from conftest import jit_batch_norm, random_array, random_params
from flax import nnx
from oracle import reference

import bnjax


@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("shape, axis", [((12, 3, 4), -1), ((6, 4, 2, 2), 1)])
def test_each_group_is_normalized_with_its_own_statistics(shape, axis, unbiased):
    x = random_array(shape, seed=70, loc=2.0, scale=3.0)
    features = shape[axis]
    params, state = random_params(features)
    size = 3 if shape[0] % 3 == 0 else 2
    y, new_state = jit_batch_norm(
        x, params, state, True, axis=axis, virtual_batch_size=size, unbiased=unbiased,
        momentum=0.9,
    )  # fmt: skip
    groups = [x[i : i + size] for i in range(0, shape[0], size)]
    refs = [reference(g, params.scale, params.bias, state.mean, state.var, True, axis=axis,
                      unbiased=unbiased, momentum=0.9) for g in groups]  # fmt: skip
    np.testing.assert_allclose(y, np.concatenate([r[0] for r in refs]), atol=3e-5)
    np.testing.assert_allclose(new_state.mean, np.mean([r[1] for r in refs], 0).ravel(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(new_state.var, np.mean([r[2] for r in refs], 0).ravel(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip


def test_groups_without_valid_elements_are_left_out_of_the_average():
    x = random_array((8, 3), seed=71)
    mask = np.ones((8, 1), bool)
    mask[4:] = False  # the second group of four is all padding
    params, state = random_params(3)
    _, new_state = jit_batch_norm(x, params, state, True, mask=mask, virtual_batch_size=4,
                                  momentum=0.0)  # fmt: skip
    _, first_group = jit_batch_norm(x[:4], params, state, True, momentum=0.0)
    np.testing.assert_allclose(new_state.mean, first_group.mean, rtol=1e-6)
    np.testing.assert_allclose(new_state.var, first_group.var, rtol=1e-6)


@pytest.mark.slow
def test_gradients_flow_per_group():
    x = random_array((8, 3), seed=72)
    params, state = random_params(3)

    def loss(x, size):
        y, _ = bnjax.batch_norm(x, params, state, True, virtual_batch_size=size)
        return (y**3).sum()

    grads = jax.grad(loss)(x, 4)
    np.testing.assert_allclose(grads[:4], jax.grad(loss)(x[:4], 4), atol=1e-5)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (
            dict(virtual_batch_size=3),
            r"virtual_batch_size=3 must divide the batch axis 0 of x "
            r"\(size 8, x\.shape=\(8, 3\)\)",
        ),
        (dict(virtual_batch_size=0), r"virtual_batch_size must be a positive int or None, got 0"),
        (dict(virtual_batch_size=4, axis_name="b"), r"cannot be combined with axis_name"),
    ],
)
def test_bad_virtual_batch_size_is_refused_with_its_reason(kwargs, pattern):
    params, state = bnjax.init(3)
    with pytest.raises(ValueError, match=pattern):
        bnjax.batch_norm(random_array((8, 3)), params, state, True, **kwargs)


@pytest.mark.slow
def test_linen_and_nnx_modules_pass_virtual_batch_size_to_the_core():
    x = random_array((8, 3), seed=73)
    params, state = bnjax.init(3)
    y_core, _ = jit_batch_norm(x, params, state, True, virtual_batch_size=2)
    bn = bnjax.BatchNorm(use_running_average=False, virtual_batch_size=2)
    variables = bn.init(jax.random.key(0), x)
    y_linen, _ = bn.apply(variables, x, mutable=["batch_stats"])
    y_nnx = bnjax.nnx.BatchNorm(3, virtual_batch_size=2, rngs=nnx.Rngs(0))(x)
    np.testing.assert_allclose(y_linen, y_core, atol=1e-6)
    np.testing.assert_allclose(y_nnx, y_core, atol=1e-6)


def test_batch_axis_after_the_feature_axis_with_a_per_feature_mask():
    x = random_array((3, 8), seed=74, loc=1.0)  # features on axis 0, batch on axis 1
    mask = np.random.default_rng(75).random((3, 8)) < 0.7
    mask[:, [0, 4]] = True  # every group of four has a valid element per feature
    params, state = random_params(3)
    y, new_state = jit_batch_norm(x, params, state, True, axis=0, mask=mask,
                                  virtual_batch_size=4, momentum=0.0)  # fmt: skip
    refs = [reference(x[:, i : i + 4], params.scale, params.bias, state.mean, state.var, True,
                      axis=0, mask=mask[:, i : i + 4], momentum=0.0) for i in (0, 4)]  # fmt: skip
    np.testing.assert_allclose(y, np.concatenate([r[0] for r in refs], axis=1), atol=3e-5)
    np.testing.assert_allclose(new_state.mean, np.mean([r[1] for r in refs], 0).ravel(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(new_state.var, np.mean([r[2] for r in refs], 0).ravel(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
