"""No silent wrong statistics: degenerate batches, per-feature updates, clear errors."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm, random_array, random_params
from oracle import batch_stats

import bnjax


def test_a_feature_that_the_mask_empties_keeps_its_statistics_and_the_others_update():
    x = random_array((6, 3), seed=30)
    mask = np.ones((6, 3), bool)
    mask[:, 1] = False
    params, state = random_params(3)
    y, new_state = jit_batch_norm(x, params, state, True, mask=mask, momentum=0.5)
    _, mean, var = batch_stats(x)
    expected_mean = 0.5 * np.asarray(state.mean) + 0.5 * mean.ravel()
    expected_var = 0.5 * np.asarray(state.var) + 0.5 * var.ravel()
    np.testing.assert_allclose(np.asarray(new_state.mean)[[0, 2]], expected_mean[[0, 2]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new_state.var)[[0, 2]], expected_var[[0, 2]], rtol=1e-6)
    assert new_state.mean[1] == state.mean[1] and new_state.var[1] == state.var[1]
    assert int(new_state.count) == int(state.count) + 1  # a batch that updated some feature
    assert np.all(np.isfinite(np.asarray(y)))


def test_momentum_none_counts_the_batches_each_feature_saw():
    """init's count is per feature: a skipped feature keeps its value and its count."""
    params, state = bnjax.init(2)
    empty_second = np.array([[True, False]] * 4)
    _, state = jit_batch_norm(np.full((4, 2), 2.0, np.float32), params, state, True,
                              mask=empty_second, momentum=None)  # fmt: skip
    np.testing.assert_allclose(state.mean, [2.0, 0.0])
    np.testing.assert_array_equal(state.count, [1, 0])
    _, state = jit_batch_norm(np.full((4, 2), 4.0, np.float32), params, state, True,
                              momentum=None)  # fmt: skip
    np.testing.assert_allclose(state.mean, [3.0, 4.0])  # (1·2 + 4)/2 and the one batch it saw
    np.testing.assert_array_equal(state.count, [2, 1])


def test_ghost_unbiased_group_with_one_valid_element_contributes_its_mean_only():
    x = random_array((8, 2), seed=31)
    mask = np.ones((8, 1), bool)
    mask[1:4] = False  # the first group of 4 keeps one valid element
    params, state = bnjax.init(2)
    _, new_state = jit_batch_norm(x, params, state, True, mask=mask, unbiased=True, momentum=0.0,
                                  virtual_batch_size=4)  # fmt: skip
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(new_state.mean, (x64[0] + x64[4:].mean(0)) / 2, rtol=1e-5)
    np.testing.assert_allclose(new_state.var, x64[4:].var(0, ddof=1), rtol=1e-5)


def test_ghost_unbiased_without_any_usable_group_keeps_the_statistics():
    x = random_array((4, 2), seed=32)
    params, state = random_params(2)
    _, new_state = jit_batch_norm(x, params, state, True, unbiased=True, virtual_batch_size=1)
    chex.assert_trees_all_equal(new_state, state)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_narrow_running_state_is_rejected_in_training_and_accepted_in_evaluation(dtype):
    params, state = bnjax.init(2)
    narrow = state._replace(mean=state.mean.astype(dtype), var=state.var.astype(dtype))
    x = random_array((4, 2), seed=33)
    with pytest.raises(TypeError, match=rf"state\.mean has dtype {jnp.dtype(dtype).name}; "
                                        "running statistics are updated in float32"):  # fmt: skip
        bnjax.batch_norm(x, params, narrow, True)
    y, same = bnjax.batch_norm(x, params, narrow, False)
    assert same is narrow and y.shape == x.shape


@pytest.mark.parametrize(
    "x, error, pattern",
    [
        (None, TypeError, r"x must be an array, got NoneType"),
        ("abc", TypeError, r"x must be an array, got str"),
        ({"a": 1}, TypeError, r"x must be an array, got dict"),
        ([1, 2], TypeError, r"x must be a floating-point \(or complex\) array, got dtype int32"),
    ],
)
def test_non_arrays_for_x_name_x(x, error, pattern):
    params, state = bnjax.init(2)
    with pytest.raises(error, match=pattern):
        bnjax.batch_norm(x, params, state, True)


def test_lists_for_x_and_mask_are_accepted_like_arrays():
    params, state = bnjax.init(2)
    y, _ = bnjax.batch_norm([[1.0, 2.0], [3.0, 5.0]], params, state, True,
                            mask=[[True], [True]])  # fmt: skip
    np.testing.assert_allclose(y, [[-1.0, -1.0], [1.0, 1.0]], atol=1e-4)


def test_mask_that_is_not_an_array_is_named():
    params, state = bnjax.init(2)
    with pytest.raises(TypeError, match=r"mask must be an array, got str"):
        bnjax.batch_norm(jnp.ones((2, 2)), params, state, True, mask="yes")


@pytest.mark.parametrize("num_features", [0, (2, 0), ()])
def test_zero_features_is_an_error(num_features):
    with pytest.raises(ValueError, match=r"num_features must be a positive int"):
        bnjax.init(num_features)


def test_axis_name_outside_any_mapped_axis_says_what_to_wrap_it_in():
    params, state = bnjax.init(2)
    with pytest.raises(
        ValueError, match=r"axis_name='batch': no enclosing mapped axis .*jax\.pmap"
    ):
        bnjax.batch_norm(jnp.ones((2, 2)), params, state, True, axis_name="batch")
    y, _ = jax.jit(jax.vmap(lambda x: bnjax.batch_norm(x, params, state, True, axis_name="batch"),
                            axis_name="batch"))(jnp.ones((3, 2, 2)))  # fmt: skip
    assert y.shape == (3, 2, 2)


def test_options_are_checked_in_evaluation_too():
    params, state = bnjax.init(2)
    x = jnp.ones((3, 2))
    with pytest.raises(ValueError, match=r"virtual_batch_size must be a positive int"):
        bnjax.batch_norm(x, params, state, False, virtual_batch_size=0)
    with pytest.raises(ValueError, match=r"r_max must be >= 1"):
        bnjax.batch_renorm(x, params, state, False, r_max=0.5)
    # but a batch that the ghost size does not divide is fine in evaluation
    bnjax.batch_norm(x, params, state, False, virtual_batch_size=2)


class TestFoldIntoLinearValidates:
    params, state = bnjax.init(2)
    kernel = jnp.ones((3, 2))

    def test_negative_epsilon(self):
        with pytest.raises(
            ValueError, match=r"epsilon must be a finite number >= 0, got epsilon=-2"
        ):
            bnjax.fold_into_linear(self.kernel, None, self.params, self.state, epsilon=-2.0)

    def test_plain_tuple_params(self):
        with pytest.raises(TypeError, match=r"params must be a bnjax\.BatchNormParams .*got tuple"):
            bnjax.fold_into_linear(self.kernel, None, tuple(self.params), self.state)

    def test_plain_tuple_state(self):
        with pytest.raises(TypeError, match=r"state must be a bnjax\.BatchNormState .*got tuple"):
            bnjax.fold_into_linear(self.kernel, None, self.params, tuple(self.state))

    def test_integer_kernel(self):
        with pytest.raises(
            TypeError, match=r"kernel must be a floating-point array, got dtype int32"
        ):
            bnjax.fold_into_linear(2 * jnp.ones((3, 2), jnp.int32), None, self.params, self.state)

    def test_none_kernel(self):
        with pytest.raises(TypeError, match=r"kernel must be an array, got NoneType"):
            bnjax.fold_into_linear(None, None, self.params, self.state)

    def test_integer_bias(self):
        with pytest.raises(
            TypeError, match=r"bias must be a floating-point array, got dtype int32"
        ):
            bnjax.fold_into_linear(self.kernel, jnp.ones(2, jnp.int32), self.params, self.state)

    def test_list_bias_is_accepted(self):
        kernel, bias = bnjax.fold_into_linear(self.kernel, [1.0, 2.0], self.params, self.state)
        np.testing.assert_allclose(bias, np.array([1.0, 2.0]) / np.sqrt(1 + 1e-5), rtol=1e-6)


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: bnjax.init(None), ValueError, r"num_features must be a positive int"),
        (lambda: bnjax.batch_norm(jnp.ones((2, 2)), None, bnjax.init(2)[1], True), TypeError,
         r"params must be a bnjax\.BatchNormParams"),
        (lambda: bnjax.batch_norm(jnp.ones((2, 2)), *bnjax.init(2), None), TypeError,
         r"train must be a static Python bool"),
        (lambda: bnjax.batch_norm(jnp.ones((2, 2)), bnjax.init(2)[0],
                                  bnjax.init(2)[1]._replace(mean=None), True), TypeError,
         r"state\.mean must be an array \(running statistics\), got None"),
        (lambda: bnjax.batch_norm(jnp.ones((2, 2)), *bnjax.init(2), True, epsilon=None), TypeError,
         r"epsilon must be a real scalar \(a finite number >= 0; .*got None"),
        (lambda: bnjax.batch_renorm(jnp.ones((2, 2)), *bnjax.init(2), True, r_max=None), TypeError,
         r"r_max must be a real scalar \(>= 1; .*got None"),
        (lambda: bnjax.BatchNorm(use_running_average=False).init(jax.random.key(0), None),
         TypeError, r"x must be an array, got NoneType"),
        (lambda: bnjax.recompute_population_stats(bnjax.BatchNorm(), {}, None), TypeError,
         r"needs an iterable of model inputs for batches, got NoneType"),
    ],
)  # fmt: skip
def test_none_where_a_value_is_expected_is_named(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_nnx_module_names_x_too():
    from flax import nnx

    with pytest.raises(TypeError, match=r"x must be an array, got NoneType"):
        bnjax.nnx.BatchNorm(2, rngs=nnx.Rngs(0))(None)


@pytest.mark.parametrize("layout", ["rows", "examples under vmap"])
def test_nan_padding_under_a_mask_leaves_the_valid_gradients_finite_and_exact(layout):
    x = random_array((8, 3), seed=31, loc=5.0)
    valid = np.arange(8) != 2
    padded = x.copy()
    padded[2] = np.nan  # padding that holds garbage; the mask leaves it out
    cotangent = np.where(valid[:, None], random_array((8, 3), seed=32), 0.0).astype(np.float32)
    params, state = random_params(3)

    def normalize(x, keep):
        if layout == "rows":
            return bnjax.batch_norm(x, params, state, True, mask=keep[:, None])[0]

        def one(v, k):
            return bnjax.batch_norm(v, params, state, True, axis=0, mask=k, axis_name="b")

        return jax.vmap(one, axis_name="b")(x, keep)[0]

    def loss(x, keep):
        return jnp.sum(normalize(x, keep) * cotangent)

    grad = jax.grad(loss)(padded, valid)
    expected = jax.grad(lambda x: jnp.sum(bnjax.batch_norm(x, params, state, True)[0]
                                          * cotangent[valid]))(x[valid])  # fmt: skip
    np.testing.assert_allclose(np.asarray(grad)[valid], expected, atol=1e-5, rtol=1e-4)
