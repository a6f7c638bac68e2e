"""Under ``jax.vmap`` with an axis name, the members' statistics are computed all at once.

An Equinox layer (or any code that vmaps ``batch_norm`` over the examples of a batch with
``axis_name``) makes every example a member whose statistics are combined across the axis.
The members' local moments are computed as one array with the members' axis kept: one first
pass, one error bound and one second pass for all of them (a ``conditional`` in the compiled
program), not a per-member predicate that ``vmap`` turns into computing both passes for
every member (a ``select``, no ``conditional``). Exact all the same: compared here with the
float64 oracle over the whole batch, with one member whose first rows hold an outlier (it
alone breaks the bound) and with nested vmaps.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads
from oracle import batch_stats, normalize

import bnjax

C, H, W = 3, 4, 5
PARAMS, STATE = bnjax.init(C)


def _example(x):
    """One example (C, H, W) normalized with the statistics of every member of axis "b"."""
    return bnjax.batch_norm(x, PARAMS, STATE, True, axis=0, axis_name="b")


def _nested(x):
    """Members along two named axes, "outer" and "inner"."""
    return bnjax.batch_norm(x, PARAMS, STATE, True, axis=0, axis_name=("outer", "inner"))


members = jax.jit(jax.vmap(_example, axis_name="b"))
nested = jax.jit(jax.vmap(jax.vmap(_nested, axis_name="inner"), axis_name="outer"))


def _batch(seed, outlier_member=None):
    x = np.random.default_rng(seed).normal(1e3, 2.0, (8, C, H, W)).astype(np.float32)
    if outlier_member is not None:
        x[outlier_member, :, 0, :] += 1e5  # its first rows: its shift lands far from its mean
    return x


def _assert_matches_the_whole_batch(y, new_state, x):
    nhwc = np.moveaxis(x, 1, -1).reshape(-1, C)
    _, mean, var = batch_stats(nhwc)
    y_ref = np.moveaxis(normalize(nhwc, mean, var, 1.0, 0.0, 1e-5).reshape(8, H, W, C), -1, 1)
    np.testing.assert_allclose(np.asarray(y).reshape(y_ref.shape), y_ref, atol=1e-3, rtol=1e-3)
    expected_mean = 0.01 * mean.ravel()
    expected_var = 0.99 + 0.01 * var.ravel()
    # every member returns the same new state
    member_means = np.asarray(new_state.mean).reshape(-1, C)
    member_vars = np.asarray(new_state.var).reshape(-1, C)
    np.testing.assert_allclose(
        member_means, np.broadcast_to(expected_mean, member_means.shape), rtol=1e-5
    )
    np.testing.assert_allclose(
        member_vars, np.broadcast_to(expected_var, member_vars.shape), rtol=1e-5
    )


def test_the_members_share_one_conditional_in_the_compiled_program():
    x = _batch(0)
    for program, batch in ((members, x), (nested, x.reshape(2, 4, C, H, W))):
        hlo = program.lower(batch).compile().as_text()
        assert len(re.findall(r"\bconditional\(", hlo)) == 1


def test_one_member_breaking_the_bound_gives_every_member_exact_statistics():
    for outlier_member in (None, 0, 5):
        x = _batch(1, outlier_member)
        _assert_matches_the_whole_batch(*members(x), x)
        y, state = nested(x.reshape(2, 4, C, H, W))
        _assert_matches_the_whole_batch(y.reshape(x.shape), state, x)


@pytest.mark.slow
def test_gradients_of_the_members_are_those_of_the_whole_batch():
    x = _batch(2, outlier_member=3) / 1e3  # offset 1, outlier 100: second order stays finite
    cotangent = np.random.default_rng(3).normal(size=x.shape).astype(np.float32)

    def loss_members(x):
        return jnp.sum(jax.vmap(_example, axis_name="b")(x)[0] * cotangent[: len(x)])

    def loss_batch(x):
        y, _ = bnjax.batch_norm(x, PARAMS, STATE, True, axis=1)
        return jnp.sum(y * cotangent)

    np.testing.assert_allclose(
        jax.grad(loss_members)(x), jax.grad(loss_batch)(x), atol=2e-5, rtol=1e-4
    )
    # The derivative rule is the one tests/test_differentiation.py checks to second order;
    # under vmap only the statistics, which the rule does not differentiate, run differently.
    check_grads(loss_members, (x[:4],), order=1, modes=("fwd", "rev"), atol=5e-2, rtol=5e-2)


def _dense_members(x, valid):
    """Members of one element per feature (an Equinox Linear's activations), one masked out."""

    def one(v, keep):
        return bnjax.batch_norm(v, PARAMS, STATE, True, axis=0, mask=keep, axis_name="b")[0]

    return jax.vmap(one, axis_name="b")(x, valid)


def test_dense_members_keep_per_feature_residuals_and_exact_statistics():
    x = np.random.default_rng(4).normal(1e4, 2.0, (16, C)).astype(np.float32)
    x[0] += 1e3  # an outlier first: the members' shared shift lands far from their mean
    x[3] = np.nan  # padding
    valid = np.arange(16) != 3
    y, pullback = jax.vjp(lambda x: _dense_members(x, valid), x)
    full_size = [leaf for leaf in jax.tree.leaves(pullback) if np.size(leaf) >= x.size]
    assert len(full_size) == 1  # x itself: the shift and the offsets stay per feature
    _, mean, var = batch_stats(x[valid])
    y_ref = normalize(x[valid], mean, var, 1.0, 0.0, 1e-5)
    np.testing.assert_allclose(np.asarray(y)[valid], y_ref, atol=1e-3, rtol=1e-3)
