"""Checks that need 8 devices; run by test_multidevice.py in a process of their own.

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=8 python multidevice_checks.py NAME...
Prints one JSON object mapping each check's name to "ok" or its error.
"""

import functools
import json
import re
import sys
import traceback

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import bnjax

DEVICES = 8
X = np.random.default_rng(0).normal(1e3, 2.0, (DEVICES, 4, 3, 5)).astype(np.float32)
MASK = np.random.default_rng(1).random((DEVICES, 4, 3, 1)) < 0.6
MASK[2] = False  # one device holds no valid element
MASK[5, :, :] = np.random.default_rng(2).random((4, 3, 1)) < 0.1  # and one very few
MASK[0, 0, 0] = True
PARAMS = bnjax.BatchNormParams(jnp.linspace(0.5, 2.0, 5), jnp.linspace(-1.0, 1.0, 5))
_, STATE = bnjax.init(5)
KW = dict(unbiased=True, momentum=0.9)


def global_reference(x, mask):
    """One device holding the whole batch: outputs, new state, gradient of Σ sin(y)."""
    flat_x, flat_mask = x.reshape(-1, 3, 5), mask.reshape(-1, 3, 1)

    def loss(x):
        y, state = bnjax.batch_norm(x, PARAMS, STATE, True, mask=flat_mask, **KW)
        return jnp.sum(jnp.sin(y)), (y, state)

    (_, (y, state)), grad = jax.value_and_grad(loss, has_aux=True)(flat_x)
    return y.reshape(x.shape), state, grad.reshape(x.shape)


def per_device(x, mask, **kwargs):
    return bnjax.batch_norm(x, PARAMS, STATE, True, mask=mask, **KW, **kwargs)


def assert_matches_global(y, state, grad, x=X, mask=MASK):
    y_ref, state_ref, grad_ref = global_reference(x, mask)
    # Chan's combination rounds the mean of 1e3 to float32 (ulp 6e-5).
    np.testing.assert_allclose(y, y_ref, atol=3e-4)
    chex.assert_trees_all_close(state, state_ref, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(grad, grad_ref, atol=1e-3)


def check_pmap():
    def loss(x, mask):
        y, state = per_device(x, mask, axis_name="d")
        return jnp.sum(jnp.sin(y)), (y, state)

    grad_fn = jax.pmap(jax.value_and_grad(loss, has_aux=True), axis_name="d")
    (_, (y, states)), grad = grad_fn(X, MASK)
    for i in range(DEVICES):
        assert_matches_global(y, jax.tree.map(lambda s, i=i: s[i], states), grad)


def _mesh(axis_type=AxisType.Explicit):
    return jax.make_mesh((DEVICES,), ("d",), axis_types=(axis_type,))


def check_shard_map():
    mesh = _mesh()
    x = X.reshape(-1, 3, 5)
    mask = MASK.reshape(-1, 3, 1)
    normalize = jax.shard_map(
        lambda x, m: per_device(x, m, axis_name="d"),
        mesh=mesh, in_specs=(P("d"), P("d")), out_specs=(P("d"), P()),
    )  # fmt: skip

    def loss(x, mask):
        y, state = normalize(x, mask)
        return jnp.sum(jnp.sin(y)), (y, state)

    with jax.set_mesh(mesh):
        xs = jax.device_put(x, NamedSharding(mesh, P("d")))
        ms = jax.device_put(mask, NamedSharding(mesh, P("d")))
        (_, (y, state)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(xs, ms)
    assert_matches_global(y.reshape(X.shape), state, grad.reshape(X.shape))


def check_outlier_on_one_device():
    """shard_map, an outlier first on device 3, offsets 0 and 1e6: the float64 oracle's numbers."""
    from oracle import reference

    rng = np.random.default_rng(3)
    for offset in (0.0, 1e6):
        x = (offset + rng.normal(size=(DEVICES * 2000, 2))).astype(np.float32)
        x[3 * 2000] = (offset + 3e3, offset - 2e3)
        params, state = bnjax.init(2)
        normalize = jax.shard_map(
            functools.partial(bnjax.batch_norm, params=params, state=state, train=True,
                              axis_name="d", momentum=0.0),
            mesh=_mesh(), in_specs=P("d"), out_specs=(P("d"), P()),
        )  # fmt: skip
        mesh = _mesh()
        with jax.set_mesh(mesh):
            y, new_state = jax.jit(normalize)(jax.device_put(x, NamedSharding(mesh, P("d"))))
        y_ref, _, var_ref = reference(x, None, None, state.mean, state.var, True, momentum=0.0)
        var_err = np.max(np.abs(np.asarray(new_state.var, np.float64) / var_ref.ravel() - 1))
        y_err = np.max(np.abs(np.asarray(y, np.float64) - y_ref) / np.maximum(1, np.abs(y_ref)))
        assert var_err <= 1e-4 and y_err <= 2e-3, (offset, var_err, y_err)


def check_sharded_jit():
    x = X.reshape(-1, 3, 5)
    mask = MASK.reshape(-1, 3, 1)

    def loss(x, mask):
        y, state = per_device(x, mask)
        return jnp.sum(jnp.sin(y)), (y, state)

    for axis_type in (AxisType.Auto, AxisType.Explicit):
        mesh = _mesh(axis_type)
        with jax.set_mesh(mesh):
            xs = jax.device_put(x, NamedSharding(mesh, P("d")))
            ms = jax.device_put(mask, NamedSharding(mesh, P("d")))
            (_, (y, state)), grad = jax.jit(jax.value_and_grad(loss, has_aux=True))(xs, ms)
        assert y.sharding.spec[0] == "d", y.sharding
        assert_matches_global(y.reshape(X.shape), state, grad.reshape(X.shape))


def check_axis_index_groups():
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    f = jax.pmap(lambda x, m: per_device(x, m, axis_name="d", axis_index_groups=groups),
                 axis_name="d")  # fmt: skip
    y, states = f(X, MASK)
    for group in groups:
        y_ref, state_ref, _ = global_reference(X[group], MASK[group])
        np.testing.assert_allclose(y[np.asarray(group)], y_ref, atol=3e-4)
        chex.assert_trees_all_close(jax.tree.map(lambda s, g=group: s[g[0]], states), state_ref,
                                    rtol=1e-5, atol=1e-4)  # fmt: skip


def _raises(error, pattern, call, *args):
    """Asserts that ``call(*args)`` raises ``error`` with a message matching ``pattern``."""
    try:
        call(*args)
    except error as raised:
        assert re.search(pattern, str(raised)), (pattern, str(raised))
        return
    raise AssertionError(f"{call} did not raise {error.__name__} for {args}")


def check_axis_index_groups_errors():
    """Groups that are not a partition of the axis are named where they enter, in every API."""
    cases = [
        ([[0, 1, 2, 3]], ValueError, r"axis_index_groups must be a partition of the 8 indices of "
         r"axis_name='d' \(0\.\.7, each in exactly one group\), got \[\[0, 1, 2, 3\]\]: "
         r"\[4, 5, 6, 7\] are in no group"),
        ([[0, 1, 2, 3], [4, 5, 6, 8]], ValueError, r"partition of the 8 indices .* indices \[8\] "
         r"are outside the axis"),
        ([[0, 0, 1, 2], [3, 4, 5, 6]], ValueError, r"axis_index_groups must name each device once "
         r"\(a partition of the axis\), got \[\[0, 0, 1, 2\], \[3, 4, 5, 6\]\], where \[0\] "
         r"appear more than once"),
        ([[0, 1, 2], [3, 4, 5, 6, 7]], ValueError, r"axis_index_groups must be groups of equal "
         r"size, got .* with sizes \[3, 5\]"),
        ([[0, 1, 2, 3], [4, 5, 6, -7]], ValueError, r"axis_index_groups must hold indices >= 0"),
        ([[0, 1, 2, 3], [4, 5, 6, 7.0]], TypeError, r"axis_index_groups must be a list of lists "
         r"of device indices along axis_name, .*\(every index a Python int\)"),
        ([0, 1, 2, 3], TypeError, r"\(each group a non-empty sequence of device indices\)"),
    ]  # fmt: skip
    x = X.reshape(DEVICES, -1, 5)
    variables = bnjax.BatchNorm(use_running_average=False).init(jax.random.key(0), x[0])
    for groups, error, pattern in cases:
        calls = [
            lambda g: jax.pmap(lambda x, m: per_device(x, m, axis_name="d", axis_index_groups=g),
                               axis_name="d")(X, MASK),
            lambda g: jax.pmap(lambda x: bnjax.batch_renorm(x, PARAMS, STATE, True, axis_name="d",
                                                            axis_index_groups=g), axis_name="d")(X),
            lambda g: jax.pmap(lambda x: bnjax.batch_norm(x, PARAMS, STATE, False, axis_name="d",
                                                          axis_index_groups=g), axis_name="d")(X),
            lambda g: jax.pmap(lambda x: bnjax.BatchNorm(
                use_running_average=False, axis_name="d", axis_index_groups=g
            ).apply(variables, x, mutable=["batch_stats"])[0], axis_name="d")(x),
        ]  # fmt: skip
        for call in calls:
            _raises(error, pattern, call, groups)


def check_axis_index_groups_shard_map():
    """shard_map: groups need check_vma=False (JAX 0.10); then they equal the per-group batches."""
    groups = [[0, 1, 2, 3], [4, 5, 6, 7]]
    mesh = _mesh(AxisType.Auto)
    sharding = NamedSharding(mesh, P("d"))
    x = jax.device_put(X.reshape(-1, 3, 5), sharding)
    mask = jax.device_put(MASK.reshape(-1, 3, 1), sharding)

    def run(check_vma):
        normalize = jax.shard_map(
            lambda x, m: per_device(x, m, axis_name="d", axis_index_groups=groups),
            mesh=mesh, in_specs=(P("d"), P("d")), out_specs=(P("d"), P()), check_vma=check_vma,
        )  # fmt: skip

        def loss(x, m):
            y, state = normalize(x, m)
            return jnp.sum(jnp.sin(y)), (y, state)

        return jax.jit(jax.value_and_grad(loss, has_aux=True))(x, mask)

    _raises(NotImplementedError, r"axis_index_groups under jax\.shard_map \(axis_name='d'\): "
            r"JAX .* does not implement grouped collectives with shard_map's type checking\. "
            r"Pass check_vma=False", run, True)  # fmt: skip
    (_, (y, state)), grad = run(False)
    y, grad = np.asarray(y).reshape(X.shape), np.asarray(grad).reshape(X.shape)
    for i, group in enumerate(groups):
        y_ref, state_ref, grad_ref = global_reference(X[group], MASK[group])
        np.testing.assert_allclose(y[np.asarray(group)], y_ref, atol=3e-4)
        np.testing.assert_allclose(grad[np.asarray(group)], grad_ref, atol=1e-3)
        if i == 0:  # out_specs=P() returns the first device's (its group's) statistics
            chex.assert_trees_all_close(state, state_ref, rtol=1e-5, atol=1e-4)


def _count_collectives(text):
    return len(re.findall(r"all[-_]reduce|all[-_]gather|reduce[-_]scatter|collective[-_]permute",
                          text.split("ENTRY")[-1] if "ENTRY" in text else text))  # fmt: skip


def check_one_collective_forward_one_backward():
    mesh = _mesh()
    x = jax.device_put(X.reshape(-1, 3, 5), NamedSharding(mesh, P("d")))
    normalize = jax.shard_map(
        lambda x: bnjax.batch_norm(x, PARAMS, STATE, True, axis_name="d"),
        mesh=mesh, in_specs=P("d"), out_specs=(P("d"), P()),
    )  # fmt: skip

    def loss(x, params):
        y, _ = jax.shard_map(
            lambda x, p: bnjax.batch_norm(x, p, STATE, True, axis_name="d"),
            mesh=mesh, in_specs=(P("d"), P()), out_specs=(P("d"), P()),
        )(x, params)  # fmt: skip
        return jnp.sum(jnp.sin(y))

    with jax.set_mesh(mesh):
        forward = jax.jit(normalize).lower(x).as_text()
        both = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, PARAMS).as_text()
    assert _count_collectives(forward) == 1, forward
    assert _count_collectives(both) == 2, both


def check_flax_modules():
    x = X.reshape(DEVICES, -1, 5)
    variables = bnjax.BatchNorm(use_running_average=False).init(jax.random.key(0), x[0])
    bn = bnjax.BatchNorm(use_running_average=False, axis_name="d", momentum=0.9)
    y, updates = jax.pmap(lambda x: bn.apply(variables, x, mutable=["batch_stats"]),
                          axis_name="d")(x)  # fmt: skip
    y_ref, ref_updates = bnjax.BatchNorm(use_running_average=False, momentum=0.9).apply(
        variables, x.reshape(-1, 5), mutable=["batch_stats"]
    )
    np.testing.assert_allclose(y.reshape(-1, 5), y_ref, atol=3e-4)
    chex.assert_trees_all_close(jax.tree.map(lambda v: v[3], updates), ref_updates, rtol=1e-5,
                                atol=1e-4)  # fmt: skip

    from flax import nnx

    model = bnjax.nnx.BatchNorm(5, axis_name="d", momentum=0.9, rngs=nnx.Rngs(0))
    reference_model = bnjax.nnx.BatchNorm(5, momentum=0.9, rngs=nnx.Rngs(0))
    y_ref = reference_model(x.reshape(-1, 5))

    @nnx.vmap(in_axes=(None, 0), out_axes=0, axis_name="d")
    def apply(model, x):
        return model(x)

    y = apply(model, x)
    np.testing.assert_allclose(y.reshape(-1, 5), y_ref, atol=3e-4)
    np.testing.assert_allclose(model.mean[...], reference_model.mean[...], rtol=1e-5)


CHECKS = {name[len("check_") :]: f for name, f in globals().items() if name.startswith("check_")}


def main(names):
    assert len(jax.devices()) == DEVICES, jax.devices()
    results = {}
    for name in names or CHECKS:
        try:
            CHECKS[name]()
            results[name] = "ok"
        except Exception:  # noqa: BLE001 - reported to the parent test
            results[name] = traceback.format_exc()[-3000:]
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1:])
