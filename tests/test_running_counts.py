"""The exact average (momentum=None) counts per feature; statistics loaded without a count.

A feature that misses a batch (a NaN/Inf in its values, or a mask that leaves it without a
valid element) averages exactly the batches it saw, in the functional API and both modules.
Statistics that come without their count (a flax.linen / flax.nnx checkpoint) count as one
batch; a count that cannot be right (narrower than int32, negative) is an error.
"""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import jit_batch_norm
from flax import nnx
from jax.experimental import checkify

import bnjax

# 10 batches of 4 rows and 3 features, feature means 100 + batch index. Feature 1 has a NaN
# in batch 0; feature 2 is masked out in batches 0 and 3 (the issue's case: missed first).
BATCHES = [
    (100.0 + i + np.random.default_rng(i).normal(size=(4, 3))).astype(np.float32) for i in range(10)
]
BATCHES[0][2, 1] = np.nan
MASKS = [np.ones((4, 3), bool) for _ in range(10)]
MASKS[0][:, 2] = MASKS[3][:, 2] = False
SEEN = [[i for i in range(10) if np.all(np.isfinite(BATCHES[i][:, f])) and MASKS[i][0, f]]
        for f in range(3)]  # fmt: skip


def expected_average():
    """Per feature: the plain average of the biased batch statistics of the batches it saw."""
    x64 = [b.astype(np.float64) for b in BATCHES]
    mean = [np.mean([x64[i][:, f].mean() for i in SEEN[f]]) for f in range(3)]
    var = [np.mean([x64[i][:, f].var() for i in SEEN[f]]) for f in range(3)]
    return np.array(mean), np.array(var), np.array([len(s) for s in SEEN])


def test_seen_batches_are_as_the_issue_describes():
    assert [len(s) for s in SEEN] == [10, 9, 8] and SEEN[1][0] == 1 and SEEN[2][:2] == [1, 2]


def test_functional_averages_the_batches_each_feature_saw():
    params, state = bnjax.init(3)
    for x, mask in zip(BATCHES, MASKS, strict=True):
        _, state = jit_batch_norm(x, params, state, True, momentum=None, mask=mask)
    mean, var, count = expected_average()
    np.testing.assert_allclose(state.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(state.var, var, rtol=1e-4)
    np.testing.assert_array_equal(state.count, count)


def test_linen_averages_the_batches_each_feature_saw():
    bn = bnjax.BatchNorm(use_running_average=False, momentum=None)
    variables = bn.init(jax.random.key(0), BATCHES[1])
    np.testing.assert_array_equal(variables["batch_stats"]["count"], [0, 0, 0])
    step = jax.jit(lambda v, x, m: bn.apply(v, x, mask=m, mutable=["batch_stats"])[1])
    for x, mask in zip(BATCHES, MASKS, strict=True):
        variables = {**variables, **step(variables, x, mask)}
    mean, var, count = expected_average()
    np.testing.assert_allclose(variables["batch_stats"]["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(variables["batch_stats"]["var"], var, rtol=1e-4)
    np.testing.assert_array_equal(variables["batch_stats"]["count"], count)


def test_nnx_averages_the_batches_each_feature_saw():
    bn = bnjax.nnx.BatchNorm(3, momentum=None, rngs=nnx.Rngs(0))
    step = nnx.jit(lambda bn, x, m: bn(x, mask=m))
    for x, mask in zip(BATCHES, MASKS, strict=True):
        step(bn, x, mask)
    mean, var, count = expected_average()
    np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.var[...], var, rtol=1e-4)
    np.testing.assert_array_equal(bn.count[...], count)


def test_a_scalar_count_is_still_accepted_and_exact_when_no_feature_misses():
    params, state = bnjax.init(3)
    state = state._replace(count=jnp.zeros((), jnp.int32))
    for x in BATCHES[1:3]:
        _, state = jit_batch_norm(x, params, state, True, momentum=None)
    x64 = np.concatenate(BATCHES[1:3]).astype(np.float64).reshape(2, 4, 3)
    np.testing.assert_allclose(state.mean, x64.mean(1).mean(0), rtol=1e-6)
    assert state.count.shape == () and int(state.count) == 2


# Statistics without their count ---------------------------------------------------------

X = BATCHES[5][:, :2]  # 4 rows, 2 features, means ~105
LOADED_MEAN, LOADED_VAR = np.array([3.0, -2.0], np.float32), np.array([0.5, 4.0], np.float32)


def expected_after_loading():
    """Loaded statistics count as one batch: (loaded + batch)/2, count 2."""
    x64 = X.astype(np.float64)
    return (LOADED_MEAN + x64.mean(0)) / 2, (LOADED_VAR + x64.var(0)) / 2


def test_functional_statistics_without_their_count_count_as_one_batch():
    params, state = bnjax.init(2)
    state = state._replace(mean=jnp.asarray(LOADED_MEAN), var=jnp.asarray(LOADED_VAR))
    _, new = jit_batch_norm(X, params, state, True, momentum=None)
    mean, var = expected_after_loading()
    np.testing.assert_allclose(new.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(new.var, var, rtol=1e-5)
    np.testing.assert_array_equal(new.count, [2, 2])
    _, fresh = jit_batch_norm(X, *bnjax.init(2), True, momentum=None)  # init's: no batch yet
    np.testing.assert_allclose(fresh.mean, X.astype(np.float64).mean(0), rtol=1e-6)
    np.testing.assert_array_equal(fresh.count, [1, 1])


def _flax_linen_variables():
    variables = {
        "params": {"scale": jnp.ones(2), "bias": jnp.zeros(2)},
        "batch_stats": {"mean": jnp.asarray(LOADED_MEAN), "var": jnp.asarray(LOADED_VAR)},
    }
    reference = nn.BatchNorm(use_running_average=True).init(jax.random.key(0), X)
    assert jax.tree.structure(reference) == jax.tree.structure(variables)  # Flax's own tree
    return variables


def test_linen_flax_checkpoint_without_count_by_template_names_the_count():
    """The template of a momentum=None model has a count; Flax and orbax name it as missing."""
    data = flax.serialization.to_bytes(_flax_linen_variables())
    bn = bnjax.BatchNorm(use_running_average=False, momentum=None)
    template = bn.init(jax.random.key(0), X)
    with pytest.raises(ValueError, match=r"target dict contains keys \{'count'\}"):
        flax.serialization.from_bytes(template, data)
    # the documented route: restore without a template; the count appears at the first step
    variables = flax.serialization.msgpack_restore(data)
    _, updates = bn.apply(variables, X, mutable=["batch_stats"])
    mean, var = expected_after_loading()
    np.testing.assert_allclose(updates["batch_stats"]["mean"], mean, rtol=1e-6)
    np.testing.assert_allclose(updates["batch_stats"]["var"], var, rtol=1e-5)
    np.testing.assert_array_equal(updates["batch_stats"]["count"], [2, 2])
    y = bnjax.BatchNorm(use_running_average=True, momentum=None).apply(variables, X)  # evaluates
    np.testing.assert_allclose(y, (X - LOADED_MEAN) / np.sqrt(LOADED_VAR + 1e-5), rtol=1e-5)


def test_linen_orbax_restore_with_and_without_a_template(tmp_path):
    ocp = pytest.importorskip("orbax.checkpoint")
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "flax", _flax_linen_variables())
    checkpointer.wait_until_finished()
    bn = bnjax.BatchNorm(use_running_average=False, momentum=None)
    template = bn.init(jax.random.key(0), X)
    with pytest.raises(
        ValueError, match=r"batch_stats\.count:\s+- Source: \[0 0\]\s+- Target: MISSING"
    ):
        checkpointer.restore(tmp_path / "flax", template)
    variables = checkpointer.restore(tmp_path / "flax")
    _, updates = bn.apply(variables, X, mutable=["batch_stats"])
    np.testing.assert_allclose(
        updates["batch_stats"]["mean"], expected_after_loading()[0], rtol=1e-6
    )
    # bnjax's own checkpoint (with its count) restores by template and keeps its count
    variables = {**variables, **updates}
    checkpointer.save(tmp_path / "bnjax", variables)
    checkpointer.wait_until_finished()
    restored = checkpointer.restore(tmp_path / "bnjax", template)
    np.testing.assert_array_equal(restored["batch_stats"]["count"], [2, 2])


def test_nnx_update_with_flax_state_then_training_counts_it_as_one_batch():
    flax_bn = nnx.BatchNorm(2, rngs=nnx.Rngs(0))
    flax_bn.mean[...], flax_bn.var[...] = jnp.asarray(LOADED_MEAN), jnp.asarray(LOADED_VAR)
    bn = bnjax.nnx.BatchNorm(2, momentum=None, rngs=nnx.Rngs(0))
    nnx.update(bn, nnx.state(flax_bn))
    np.testing.assert_array_equal(bn.count[...], [0, 0])  # nnx.update leaves the count alone
    bn(X)
    mean, var = expected_after_loading()
    np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-6)
    np.testing.assert_allclose(bn.var[...], var, rtol=1e-5)
    np.testing.assert_array_equal(bn.count[...], [2, 2])


# Counts that cannot be right -----------------------------------------------------------


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int16, jnp.uint16])
def test_a_count_narrower_than_int32_is_refused(dtype):
    params, state = bnjax.init(2)
    narrow = state._replace(count=state.count.astype(dtype))
    name = jnp.dtype(dtype).name
    pattern = rf"state\.count has dtype {name}, which wraps around after {jnp.iinfo(dtype).max} "
    for train in (True, False):
        with pytest.raises(TypeError, match=pattern):
            bnjax.batch_norm(X, params, narrow, train)
    variables = bnjax.BatchNorm(use_running_average=False, momentum=None).init(jax.random.key(0), X)
    variables["batch_stats"]["count"] = variables["batch_stats"]["count"].astype(dtype)
    with pytest.raises(TypeError, match=pattern):
        bnjax.BatchNorm(use_running_average=False, momentum=None).apply(
            variables, X, mutable=["batch_stats"]
        )


def test_a_negative_count_is_refused_where_it_is_concrete_and_checked_under_jit():
    params, state = bnjax.init(2)
    negative = state._replace(count=jnp.array([3, -1], jnp.int32))
    with pytest.raises(ValueError, match=r"state\.count must be >= 0 .*got \[3, -1\]"):
        bnjax.batch_norm(X, params, negative, True, momentum=None)
    checked = jax.jit(
        checkify.checkify(lambda s: bnjax.batch_norm(X, params, s, True, check_values=True))
    )
    error, _ = checked(negative)
    assert "bnjax: state.count is negative in 1 feature(s); first offending feature index: 1" in (
        error.get()
    )
    assert checked(state)[0].get() is None


def test_a_failing_call_leaves_the_nnx_state_as_it_was():
    bn = bnjax.nnx.BatchNorm(2, momentum=None, rngs=nnx.Rngs(0))
    bn(X)
    before = jax.tree.map(np.asarray, nnx.state(bn))
    with pytest.raises(ValueError, match=r"mask with shape \(3, 2\) does not broadcast"):
        bn(X, mask=np.ones((3, 2), bool))
    jax.tree.map(np.testing.assert_array_equal, nnx.state(bn), before)
