"""bnjax.equinox.BatchNorm: Equinox's API and workflows, checked against the float64 oracle."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import bnjax.equinox
from tests import oracle

BatchNorm = bnjax.equinox.BatchNorm
MODES = ("batch", "ema")


def batched(layer, axis_name="batch"):
    """The layer over a batch of examples (the state shared), as Equinox's docs use it."""
    return jax.vmap(layer, axis_name=axis_name, in_axes=(0, None), out_axes=(0, None))


def data(shape, seed=0, loc=3.0, scale=2.0):
    return np.random.default_rng(seed).normal(loc, scale, shape).astype(np.float32)


def with_affine(bn, seed=1):
    """The layer with random weight and bias, so that they enter the comparison."""
    rng = np.random.default_rng(seed)
    weight = jnp.asarray(rng.normal(1.0, 0.3, bn.input_size).astype(np.float32))
    bias = jnp.asarray(rng.normal(0.0, 0.3, bn.input_size).astype(np.float32))
    return eqx.tree_at(lambda m: (m.weight, m.bias), bn, (weight, bias))


def running(bn, state):
    index = bn.batch_state_index if bn.mode == "batch" else bn.ema_state_index
    return tuple(np.asarray(a, np.float64) for a in state.get(index))


def stats(x):
    """Per-channel float64 mean and biased variance of a batch (B, C, *spatial)."""
    _, mean, var = oracle.batch_stats(x, axis=1)
    return mean.reshape(-1), var.reshape(-1)


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("example", [(3,), (3, 4, 5), (3, 2, 4, 5)], ids=["C", "CHW", "CDHW"])
def test_training_and_inference_match_the_float64_reference(mode, example):
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode=mode, momentum=0.9)
    bn = with_affine(bn)
    x = data((8, *example))
    y, state = batched(bn)(x, state)
    w, b = np.asarray(bn.weight), np.asarray(bn.bias)
    want, _, _ = oracle.reference(x, w, b, None, None, True, axis=1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    mean, var = stats(x)
    np.testing.assert_allclose(running(bn, state), (mean, var), rtol=1e-6, atol=1e-6)
    x2 = data((5, *example), seed=2)
    y2, state2 = batched(eqx.nn.inference_mode(bn))(x2, state)
    want2, _, _ = oracle.reference(x2, w, b, mean, var, False, axis=1)
    np.testing.assert_allclose(y2, want2, rtol=1e-5, atol=1e-5)
    assert eqx.tree_equal(state2, state)  # inference leaves the statistics alone


@pytest.mark.slow
def test_batch_mode_keeps_the_exact_weighted_average_from_the_first_step():
    m = 0.9
    bn, state = eqx.nn.make_with_state(BatchNorm)(2, "batch", mode="batch", momentum=m)
    step = eqx.filter_jit(lambda x, state: batched(bn)(x, state))
    seen = []
    for t in range(1, 5):
        x = data((6, 2), seed=t, loc=t, scale=t)
        _, state = step(x, state)
        seen.append(stats(x))
        weights = np.array([(1 - m) * m ** (t - i) for i in range(1, t + 1)]) / (1 - m**t)
        want = [sum(w * s[k] for w, s in zip(weights, seen, strict=True)) for k in (0, 1)]
        np.testing.assert_allclose(running(bn, state), want, rtol=1e-5)
        assert int(state.get(bn.batch_counter)) == t
    # The example: a first batch of variance 4.5 is stored as 4.5, not 13.5 (Equinox).
    bn, state = eqx.nn.make_with_state(BatchNorm)(1, "batch", mode="batch", momentum=0.9)
    x = jnp.array([[-3.0], [0.0], [3.0], [-1.5], [1.5], [0.0]]) * jnp.sqrt(4.5 / 3.75)
    np.testing.assert_allclose(stats(np.asarray(x))[1], [4.5], rtol=1e-6)  # biased, as stored
    _, state = batched(bn)(x, state)
    np.testing.assert_allclose(running(bn, state)[1], [4.5], rtol=1e-6)


@pytest.mark.slow
def test_batch_mode_momentum_none_keeps_the_cumulative_average_and_unbiased_is_offered():
    bn, state = eqx.nn.make_with_state(BatchNorm)(
        2, "batch", mode="batch", momentum=None, unbiased=True
    )
    xs = [data((4, 2), seed=s, loc=s) for s in range(3)]
    for x in xs:
        _, state = batched(bn)(x, state)
    means = [stats(x)[0] for x in xs]
    unbiased_vars = [stats(x)[1] * 4 / 3 for x in xs]
    np.testing.assert_allclose(
        running(bn, state), (np.mean(means, 0), np.mean(unbiased_vars, 0)), rtol=1e-5
    )


@pytest.mark.slow
def test_ema_mode_is_equinoxs_meaning():
    m = 0.8
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="ema", momentum=m)
    ref, ref_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(3, "batch", mode="ema", momentum=m)
    x1, x2 = data((8, 3, 4)), data((8, 3, 4), seed=2, loc=-1.0)
    (s1, v1), (s2, v2) = stats(x1), stats(x2)
    y1, state = batched(bn)(x1, state)
    np.testing.assert_allclose(running(bn, state), (s1, v1), rtol=1e-6)  # the first fills in
    y2, state = batched(bn)(x2, state)
    mean, var = m * s1 + (1 - m) * s2, m * v1 + (1 - m) * v2
    np.testing.assert_allclose(running(bn, state), (mean, var), rtol=1e-5)
    # training normalizes with the updated running statistics, as Equinox's ema mode
    want, _, _ = oracle.reference(x2, None, None, mean, var, False, axis=1)
    np.testing.assert_allclose(y2, want, rtol=1e-5, atol=1e-5)
    for x, y in ((x1, y1), (x2, y2)):
        y_ref, ref_state = batched(ref)(x, ref_state)
        np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    assert not bool(state.get(bn.ema_first_time_index))


@pytest.mark.parametrize("mode", MODES)
def test_inference_before_training_uses_mean_0_and_variance_1(mode):
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "b", mode=mode, inference=True)
    bn = with_affine(bn)
    x = data((4, 3, 2))
    y, _ = batched(bn, "b")(x, state)
    w, b = np.asarray(bn.weight), np.asarray(bn.bias)
    want = oracle.normalize(x, 0.0, 1.0, w[:, None], b[:, None], 1e-5)
    np.testing.assert_allclose(y, want, rtol=1e-6, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_input_with_float32_statistics(mode, dtype):
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode=mode)
    before = [a.dtype for a in jax.tree.leaves(state)]
    x = jnp.asarray(data((16, 3, 4, 4))).astype(dtype)
    for _ in range(2):
        y, state = batched(bn)(x, state)
    assert y.dtype == dtype
    assert [a.dtype for a in jax.tree.leaves(state)] == before
    x64 = np.asarray(x.astype(jnp.float32))
    want, _, _ = oracle.reference(x64, None, None, None, None, True, axis=1)
    np.testing.assert_allclose(np.asarray(y, np.float32), want, atol=3e-2)
    np.testing.assert_allclose(running(bn, state)[1], stats(x64)[1], rtol=1e-5)
    y_eval, _ = batched(eqx.nn.inference_mode(bn))(x, state)
    assert y_eval.dtype == dtype


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_nested_vmaps_over_a_tuple_of_names_and_an_unnamed_outer_vmap(mode):
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, ("outer", "inner"), mode=mode)
    x = data((2, 4, 3, 5))
    inner = jax.vmap(bn, axis_name="inner", in_axes=(0, None), out_axes=(0, None))
    y, state = jax.vmap(inner, axis_name="outer", in_axes=(0, None), out_axes=(0, None))(x, state)
    flat = x.reshape(8, 3, 5)
    want, _, _ = oracle.reference(flat, None, None, None, None, True, axis=1)
    np.testing.assert_allclose(y.reshape(flat.shape), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(running(bn, state), stats(flat), rtol=1e-5)
    # a vmap without a name around a named one: one set of statistics per outer member
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode=mode)
    y, states = jax.vmap(batched(bn), in_axes=(0, None))(x, state)
    for i in range(2):
        want, _, _ = oracle.reference(x[i], None, None, None, None, True, axis=1)
        np.testing.assert_allclose(y[i], want, rtol=1e-5, atol=1e-5)
    assert running(bn, states)[0].shape == (2, 3)


@pytest.mark.slow
def test_runs_under_equinoxs_strict_promotion_settings():
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="batch")
    with jax.numpy_rank_promotion("raise"), jax.numpy_dtype_promotion("strict"):
        y, state = batched(bn)(data((4, 3, 2)), state)
        y, state = batched(eqx.nn.inference_mode(bn))(data((4, 3, 2)), state)
    assert y.shape == (4, 3, 2)


@pytest.mark.parametrize("mode", MODES)
def test_the_same_fields_and_state_layout_as_equinoxs(mode):
    ours, state = eqx.nn.make_with_state(BatchNorm)(4, "batch", mode=mode)
    theirs, their_state = eqx.nn.make_with_state(eqx.nn.BatchNorm)(4, "batch", mode=mode)
    their_fields = {f.name for f in dataclasses.fields(theirs)}
    assert their_fields <= {f.name for f in dataclasses.fields(ours)}
    for name in ("input_size", "eps", "channelwise_affine", "momentum", "mode", "inference"):
        assert getattr(ours, name) == getattr(theirs, name)
    shapes = lambda s: [(a.shape, a.dtype) for a in jax.tree.leaves(s)]  # noqa: E731
    assert shapes(state) == shapes(their_state)
    assert isinstance(ours, eqx.nn.StatefulLayer)
    arrays = lambda m: [a for a in jax.tree.leaves(m) if eqx.is_array(a)]  # noqa: E731
    fresh = BatchNorm(4, "batch", mode=mode)  # make_with_state already deleted the initial state
    assert len(arrays(eqx.nn.delete_init_state(fresh))) + 3 == len(arrays(fresh))


def test_constructor_errors_and_the_legacy_warning():
    with pytest.warns(UserWarning, match="defaults to 'ema'"):
        bn = BatchNorm(3, "batch")
    assert bn.mode == "ema"
    with pytest.raises(ValueError, match="Invalid mode"):
        BatchNorm(3, "batch", mode="nope")
    with pytest.raises(ValueError, match="mode='batch'"):
        BatchNorm(3, "batch", mode="ema", momentum=None)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(3, "batch", mode="batch", momentum=1.5)
    assert BatchNorm(3, "batch", mode="batch", channelwise_affine=False).weight is None


def test_call_errors_name_the_problem():
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="batch")
    wrap = r"inside jax.vmap\(layer, axis_name='batch', in_axes=\(0, None\), out_axes=\(0, None\)\)"
    with pytest.raises(NameError, match="no enclosing mapped axis is named 'batch'. .*" + wrap):
        bn(jnp.ones(3), state)
    with pytest.raises(NameError, match="named 'batch'"):
        jax.vmap(bn, in_axes=(0, None), out_axes=(0, None))(jnp.ones((2, 3)), state)
    nested, nested_state = eqx.nn.make_with_state(BatchNorm)(3, ("outer", "inner"), mode="ema")
    with pytest.raises(NameError, match=r"axis_name=\('outer', 'inner'\)\): .* named 'inner'"):
        jax.vmap(nested, axis_name="outer", in_axes=(0, None), out_axes=(0, None))(
            jnp.ones((2, 3)), nested_state
        )


def test_wrong_input_size_and_x_without_the_channel_axis_are_named():
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="batch")
    with pytest.raises(
        ValueError, match=r"input_size=3\): x must be one example .* got shape \(4,\)"
    ):
        batched(bn)(jnp.ones((2, 4)), state)
    with pytest.raises(ValueError, match=r"input_size=3\): .* channels first, got shape \(5, 3\)"):
        batched(bn)(jnp.ones((2, 5, 3)), state)  # channels last
    with pytest.raises(ValueError, match=r"x must be one example .* got a scalar"):
        batched(bn)(jnp.ones((3,)), state)  # a batch of numbers: no channel axis


def test_a_state_from_another_model_is_named():
    bn, _ = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="batch")
    _, ema_state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="ema")
    _, wider_state = eqx.nn.make_with_state(BatchNorm)(4, "batch", mode="batch")
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match="holds nothing for this layer's batch_state_index .* "
                       "another model; pass the state made with this model"):  # fmt: skip
        batched(bn)(x, ema_state)
    with pytest.raises(ValueError, match=r"holds \[\(4,\), \(4,\)\], not \(mean, var\) of "
                       r"shape \(3,\): it is another layer's state"):  # fmt: skip
        batched(eqx.nn.inference_mode(bn))(x, wider_state)


@pytest.mark.slow
def test_uneven_batches_across_devices_are_weighted_by_their_valid_examples():
    """A per-example mask: 4 valid examples on one device, 1 on the other; ranks (C, H)."""
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, ("device", "batch"), mode="batch")
    bn = with_affine(bn)
    x = data((2, 4, 3, 5))
    valid = np.array([[True] * 4, [False, True, False, False]])
    inner = jax.vmap(
        lambda x, m, s: bn(x, s, mask=m), axis_name="batch", in_axes=(0, 0, None),
        out_axes=(0, None),
    )  # fmt: skip
    outer = jax.vmap(inner, axis_name="device", in_axes=(0, 0, None), out_axes=(0, None))
    y, state = outer(x, jnp.asarray(valid), state)
    w, b = np.asarray(bn.weight), np.asarray(bn.bias)
    want, _, _ = oracle.reference(x[valid], w, b, None, None, True, axis=1)
    np.testing.assert_allclose(np.asarray(y)[valid], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(running(bn, state), stats(x[valid]), rtol=1e-5, atol=1e-6)
    # the mean of the two devices' means would be another number
    per_device = np.mean([stats(x[i][valid[i]])[0] for i in range(2)], axis=0)
    assert not np.allclose(per_device, stats(x[valid])[0], atol=1e-3)


def test_lax_scan_carries_the_state_through_training_steps():
    m = 0.9
    bn, state = eqx.nn.make_with_state(BatchNorm)(2, "batch", mode="batch", momentum=m)
    xs = np.stack([data((6, 2, 3), seed=t, loc=t, scale=1 + t) for t in range(3)])
    params, static = eqx.partition(bn, eqx.is_array)

    def step(state, x):
        y, state = batched(eqx.combine(params, static))(x, state)
        return state, y

    state, ys = jax.lax.scan(step, state, jnp.asarray(xs))
    for t in range(3):
        want, _, _ = oracle.reference(xs[t], None, None, None, None, True, axis=1)
        np.testing.assert_allclose(ys[t], want, rtol=1e-5, atol=1e-5)
    weights = np.array([(1 - m) * m ** (3 - i) for i in range(1, 4)]) / (1 - m**3)
    seen = [stats(x) for x in xs]
    want = [sum(w * s[k] for w, s in zip(weights, seen, strict=True)) for k in (0, 1)]
    np.testing.assert_allclose(running(bn, state), want, rtol=1e-5)
    assert int(state.get(bn.batch_counter)) == 3


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_filter_vmap_ensemble_keeps_one_set_of_statistics_per_member(mode):
    @eqx.filter_vmap
    def make(key):
        return eqx.nn.make_with_state(eqx.nn.Sequential)(
            [eqx.nn.Linear(2, 3, key=key), BatchNorm(3, "batch", mode=mode, momentum=0.5)]
        )

    models, states = make(jax.random.split(jax.random.key(0), 2))
    xs = data((2, 8, 2))
    run = eqx.filter_vmap(lambda model, state, x: batched(model)(x, state))
    ys, states = run(models, states, jnp.asarray(xs))
    index = models[1].batch_state_index if mode == "batch" else models[1].ema_state_index
    means, variances = (np.asarray(a) for a in states.get(index))
    for i in range(2):
        weight, bias = (np.asarray(a[i], np.float64) for a in (models[0].weight, models[0].bias))
        h = xs[i].astype(np.float64) @ weight.T + bias
        want, _, _ = oracle.reference(h, None, None, None, None, True, axis=1)
        np.testing.assert_allclose(ys[i], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose((means[i], variances[i]), stats(h), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_sequential_training_step_with_filter_jit_and_filter_grad():
    key1, key2 = jax.random.split(jax.random.key(0))
    model, state = eqx.nn.make_with_state(eqx.nn.Sequential)(
        [
            eqx.nn.Linear(2, 4, key=key1),
            BatchNorm(4, "batch", mode="batch"),
            eqx.nn.Lambda(jax.nn.relu),
            eqx.nn.Linear(4, 1, key=key2),
        ]
    )
    x = jnp.asarray(data((16, 2)))
    target = jnp.sum(x, axis=1, keepdims=True)

    def loss(model, state, x):
        y, state = batched(model)(x, state)
        return jnp.mean((y - target) ** 2), state

    @eqx.filter_jit
    def step(model, state, x):
        (value, state), grads = eqx.filter_value_and_grad(loss, has_aux=True)(model, state, x)
        model = eqx.apply_updates(model, jax.tree.map(lambda g: -0.05 * g, grads))
        return model, state, value

    grads = eqx.filter_grad(lambda m: loss(m, state, x)[0])(model)
    assert jnp.all(jnp.isfinite(grads[1].weight))
    values = []
    for _ in range(20):
        model, state, value = step(model, state, x)
        values.append(float(value))
    assert values[-1] < values[0]
    y, _ = batched(eqx.nn.inference_mode(model))(x, state)
    assert y.shape == (16, 1) and bool(jnp.all(jnp.isfinite(y)))


@pytest.mark.slow
def test_state_round_trips_through_serialisation(tmp_path):
    bn, state = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="batch")
    _, state = batched(bn)(data((4, 3)), state)
    eqx.tree_serialise_leaves(tmp_path / "bn.eqx", (bn, state))
    fresh = eqx.nn.make_with_state(BatchNorm)(3, "batch", mode="batch")
    loaded = eqx.tree_deserialise_leaves(tmp_path / "bn.eqx", fresh)
    assert eqx.tree_equal(loaded[1], state)
    x = data((5, 3), seed=3)
    y, _ = batched(eqx.nn.inference_mode(loaded[0]))(x, loaded[1])
    mean, var = running(bn, state)
    want, _, _ = oracle.reference(x, None, None, mean, var, False, axis=1)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)


def test_the_batch_statistics_are_gathered_once_not_once_per_example():
    """Under vmap the cross-example statistics are one stacked array, not members × members."""
    bn, state = eqx.nn.make_with_state(BatchNorm)(8, "batch", mode="batch")
    x = jnp.ones((64, 8))
    forward = jax.jit(lambda x: batched(bn)(x, state)[0])
    gradient = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(batched(bn)(x, state)[0]))))
    for step in (forward, gradient):
        assert "[64,64," not in step.lower(x).compile().as_text()
