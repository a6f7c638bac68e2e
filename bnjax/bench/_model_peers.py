"""Each framework's network as a pure training-mode function of its parameters and state.

Every builder takes ``(network, shape, dtype)`` (a ``_networks`` function,
the NHWC input shape, the compute dtype) and returns a ``Model``; parameters
are float32 and, for bfloat16, the layers compute in bfloat16 the way each
framework spells mixed precision.
"""

import contextlib
import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from .. import linen as bnjax_linen
from ._model_kits import BuildKit, HaikuKit, KerasKit, LinenKit, ReplayKit
from ._peers import import_keras


def _fast_init(build: Callable) -> Callable:
    """Runs a builder with threefry's non-partitionable random bits.

    XLA:CPU takes seconds to compile each partitionable threefry initializer
    (the default), a tenth of that for the non-partitionable form; only the
    initial values differ, and they do not matter here.
    """

    @functools.wraps(build)
    def wrapped(*args, **kwargs):
        with jax.threefry_partitionable(False):
            return build(*args, **kwargs)

    return wrapped


@dataclasses.dataclass(frozen=True)
class Model:
    """A network in training mode, as a pure function.

    Attributes:
      apply: ``apply(params, state, x) -> (logits, state)``, batch statistics
        used and the running statistics updated.
      params: the trained parameters (float32).
      state: the running statistics (and whatever else the framework keeps).
      layout: maps the NHWC input to the layout the framework uses.
    """

    apply: Callable
    params: Any
    state: Any
    layout: Callable = lambda a: a


class _LinenNet(nn.Module):
    network: Callable
    norm: Optional[Callable]
    dtype: Any

    @nn.compact
    def __call__(self, x):
        return self.network(LinenKit(self.norm, self.dtype), x)


@_fast_init
def _linen_model(norm: Optional[Callable], network, shape, dtype) -> Model:
    """A flax.linen network with ``norm`` (a linen batch norm class, None for the floor)."""
    net = _LinenNet(network, norm, dtype)
    variables = jax.jit(net.init)(jax.random.key(0), jnp.zeros(shape, dtype))
    params = variables["params"]
    state = {name: value for name, value in variables.items() if name != "params"}

    def apply(params, state, x):
        return net.apply({"params": params, **state}, x, mutable=list(state))

    return Model(apply, params, state)


bnjax_model = functools.partial(_linen_model, bnjax_linen.BatchNorm)
flax_linen_model = functools.partial(_linen_model, nn.BatchNorm)
floor_model = functools.partial(_linen_model, None)
bnjax_model.__doc__ = "The linen network with ``bnjax.BatchNorm(dtype=dtype)``."
flax_linen_model.__doc__ = "The linen network with ``flax.linen.BatchNorm(dtype=dtype)``."
floor_model.__doc__ = "The linen network without normalization: the memory floor."


class _NnxNet(nnx.Module):
    def __init__(self, network, dtype, rngs):
        kit = BuildKit(
            lambda i, o, k, s, p: nnx.Conv(
                i, o, (k, k), strides=s, padding=p, use_bias=False, dtype=dtype, rngs=rngs
            ),
            lambda features: nnx.BatchNorm(features, dtype=dtype, rngs=rngs),
            lambda i, classes: nnx.Linear(i, classes, dtype=dtype, rngs=rngs),
        )
        network(kit, None)
        self.layers = nnx.List(kit.layers)
        self.network = network

    def __call__(self, x):
        kit = ReplayKit(self.layers, lambda layer, x: layer(x, use_running_average=False))
        return self.network(kit, x)


@_fast_init
def flax_nnx_model(network, shape, dtype) -> Model:
    """An NNX network with ``nnx.BatchNorm(dtype=dtype)``, through ``nnx.split``/``nnx.merge``."""
    graphdef, params, stats = nnx.split(
        _NnxNet(network, dtype, nnx.Rngs(0)), nnx.Param, nnx.BatchStat
    )

    def apply(params, stats, x):
        # copy=True: fresh Variables inside the trace (NNX refuses to update ones made outside).
        model = nnx.merge(graphdef, params, stats, copy=True)
        return model(x), nnx.state(model, nnx.BatchStat)

    return Model(apply, params, stats)


@_fast_init
def haiku_model(network, shape, dtype) -> Model:
    """A Haiku network with ``hk.BatchNorm``; bfloat16 through Haiku's jmp policies.

    For bfloat16 the network computes in bfloat16 with float32 parameters and
    batch norm in float32 with bfloat16 output, as in Haiku's ImageNet example.
    """
    import haiku as hk

    class HaikuNet(hk.Module):
        def __call__(self, x):
            return network(HaikuKit(), x)

    def policies():
        stack = contextlib.ExitStack()
        if dtype != jnp.float32:
            import jmp

            name = jnp.dtype(dtype).name
            net = jmp.get_policy(f"params=float32,compute={name},output=float32")
            bn = jmp.get_policy(f"params=float32,compute=float32,output={name}")
            stack.enter_context(hk.mixed_precision.push_policy(HaikuNet, net))
            stack.enter_context(hk.mixed_precision.push_policy(hk.BatchNorm, bn))
        return stack

    transformed = hk.transform_with_state(lambda x: HaikuNet()(x))
    with policies():
        params, state = jax.jit(transformed.init)(jax.random.key(0), jnp.zeros(shape, dtype))

    def apply(params, state, x):
        with policies():
            return transformed.apply(params, state, None, x)

    return Model(apply, params, state)


def equinox_model(network, shape, dtype) -> Model:
    """An Equinox network with ``eqx.nn.BatchNorm(mode="ema")``, vmapped over the batch.

    Equinox's layers take one channel-first example: the input is NCHW and the
    network runs under ``jax.vmap(..., axis_name="batch")``. For bfloat16 the
    float32 parameters are cast at use (Equinox has no dtype policy).
    """
    import equinox as eqx

    return _equinox_network(eqx.nn.BatchNorm, network, shape, dtype)


def bnjax_equinox_model(network, shape, dtype) -> Model:
    """``equinox_model`` with ``bnjax.equinox.BatchNorm`` (the drop-in, same arguments)."""
    from .. import equinox as bnjax_equinox

    return _equinox_network(bnjax_equinox.BatchNorm, network, shape, dtype)


@_fast_init
def _equinox_network(batch_norm, network, shape, dtype) -> Model:
    """An Equinox network whose norms are ``batch_norm(features, "batch", mode="ema")``."""
    import equinox as eqx

    class EquinoxNet(eqx.Module):
        layers: tuple

        def __init__(self, key):
            keys = iter(jax.random.split(key, 64))
            kit = BuildKit(
                lambda i, o, k, s, p: eqx.nn.Conv2d(i, o, k, s, p, use_bias=False, key=next(keys)),
                lambda features: batch_norm(features, "batch", mode="ema"),
                lambda i, classes: eqx.nn.Linear(i, classes, key=next(keys)),
            )
            network(kit, None)
            self.layers = tuple(kit.layers)

        def __call__(self, x, state):
            holder = [state]

            def call_norm(layer, x):
                y, holder[0] = layer(x, holder[0])
                return y

            return network(ReplayKit(self.layers, call_norm), x), holder[0]

    model, state = eqx.nn.make_with_state(EquinoxNet)(jax.random.key(0))
    params, static = eqx.partition(model, eqx.is_inexact_array)

    def apply(params, state, x):
        params = jax.tree.map(lambda p: p.astype(dtype), params)
        model = eqx.combine(params, static)
        return jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))(x, state)

    def layout(a):
        return jnp.moveaxis(a, -1, 1)

    return Model(apply, params, state, layout)


@_fast_init
def keras_model(network, shape, dtype) -> Model:
    """A Keras 3 functional model with ``BatchNormalization``, through ``stateless_call``.

    bfloat16 is Keras's ``"mixed_bfloat16"`` dtype policy on every layer.
    """
    keras = import_keras()
    policy = "float32" if dtype == jnp.float32 else f"mixed_{jnp.dtype(dtype).name}"
    inputs = keras.Input(shape=shape[1:], batch_size=shape[0], dtype=jnp.dtype(dtype).name)
    model = keras.Model(inputs, network(KerasKit(keras, policy), inputs))
    params = [v.value for v in model.trainable_variables]
    state = [v.value for v in model.non_trainable_variables]

    def apply(params, state, x):
        return model.stateless_call(params, state, x, training=True)

    return Model(apply, params, state)
