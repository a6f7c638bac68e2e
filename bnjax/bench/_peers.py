"""The JAX peers, each as a pure function of x and its parameters, in its idiomatic use."""

import dataclasses
import functools
import os
import sys
from typing import Any, Callable, Dict

import jax
import jax.numpy as jnp

from .. import batch_norm, init
from ._loading import PeerSkipped, import_peer


@dataclasses.dataclass(frozen=True)
class Peer:
    """A JAX implementation as a pure function, with its parameters.

    Attributes:
      forward: ``forward(x, params, train)`` returns y; ``train`` is a Python
        bool (batch statistics and updated running statistics, discarded, when
        True; the running statistics when False).
      params: the differentiated parameters (scale and bias).
      layout: maps an NHWC (or dense) array to the layout the peer is used
        with; applied once, outside the timed calls.
    """

    forward: Callable
    params: Any
    layout: Callable = lambda a: a


def bnjax_peer(x: jax.Array) -> Peer:
    """``bnjax.batch_norm`` over x's last axis, with ``bnjax.init``'s parameters."""
    params, state = init(x.shape[-1])

    def forward(x, params, train):
        return batch_norm(x, params, state, train=train)[0]

    return Peer(forward, params)


def flax_linen_peer(x: jax.Array) -> Peer:
    """``flax.linen.BatchNorm`` with its defaults, through ``module.apply``."""
    import flax.linen as nn

    module = nn.BatchNorm()
    variables = jax.jit(functools.partial(module.init, use_running_average=False))(
        jax.random.key(0), x
    )
    batch_stats = variables["batch_stats"]

    def forward(x, params, train):
        variables = {"params": params, "batch_stats": batch_stats}
        if train:
            return module.apply(variables, x, use_running_average=False, mutable=["batch_stats"])[0]
        return module.apply(variables, x, use_running_average=True)

    return Peer(forward, variables["params"])


def flax_nnx_peer(x: jax.Array) -> Peer:
    """``flax.nnx.BatchNorm`` with its defaults, through ``nnx.split`` / ``nnx.merge``."""
    from flax import nnx

    graphdef, params, batch_stats = nnx.split(
        nnx.BatchNorm(x.shape[-1], rngs=nnx.Rngs(0)), nnx.Param, nnx.BatchStat
    )

    def forward(x, params, train):
        # copy=True: the training call updates the batch statistics of fresh Variables made
        # inside the trace, not of the ones created outside it (which NNX refuses).
        model = nnx.merge(graphdef, params, batch_stats, copy=True)
        return model(x, use_running_average=not train)

    return Peer(forward, params)


def haiku_peer(x: jax.Array) -> Peer:
    """Haiku's ``hk.BatchNorm`` (scale, offset, decay 0.99) in ``hk.transform_with_state``."""
    import haiku as hk

    def net(x, is_training):
        return hk.BatchNorm(create_scale=True, create_offset=True, decay_rate=0.99)(x, is_training)

    transformed = hk.transform_with_state(net)
    params, state = jax.jit(transformed.init, static_argnums=2)(None, x, True)

    def forward(x, params, train):
        return transformed.apply(params, state, None, x, train)[0]

    return Peer(forward, params)


def _channels_first(a: jax.Array) -> jax.Array:
    """NHWC to NCHW (Equinox's layers take channel-first examples); dense unchanged."""
    return jnp.moveaxis(a, -1, 1) if a.ndim > 2 else a


def equinox_peer(x: jax.Array) -> Peer:
    """Equinox's ``eqx.nn.BatchNorm`` under ``jax.vmap(..., axis_name="batch")``.

    Its default mode: ``mode`` left out resolves to ``"ema"`` with a warning
    asking to choose, so ``"ema"`` is passed. Equinox layers take channel-first
    examples, so NHWC activations are given to it as NCHW.
    """
    import equinox as eqx

    return _equinox_layer_peer(eqx.nn.BatchNorm, x)


def bnjax_equinox_peer(x: jax.Array) -> Peer:
    """``bnjax.equinox.BatchNorm``, the drop-in, called exactly as ``equinox_peer`` calls Equinox's.

    The same arguments (``mode="ema"``), ``eqx.nn.State``, vmap and layout.
    """
    from .. import equinox as bnjax_equinox

    return _equinox_layer_peer(bnjax_equinox.BatchNorm, x)


def _equinox_layer_peer(batch_norm, x: jax.Array) -> Peer:
    """An Equinox-style BatchNorm class as a peer (``make_with_state``, vmap, NCHW)."""
    import equinox as eqx

    layer, state = eqx.nn.make_with_state(batch_norm)(x.shape[-1], "batch", mode="ema")
    params, static = eqx.partition(layer, eqx.is_inexact_array)

    def forward(x, params, train):
        model = eqx.combine(params, static)
        model = model if train else eqx.nn.inference_mode(model)
        batched = jax.vmap(model, axis_name="batch", in_axes=(0, None), out_axes=(0, None))
        return batched(x, state)[0]

    return Peer(forward, params, layout=_channels_first)


def import_keras():
    """Imports Keras 3 on the JAX backend.

    Sets ``KERAS_BACKEND=jax`` if keras is not imported yet (Keras reads it
    once, on import).

    Returns:
      The ``keras`` module.

    Raises:
      PeerSkipped: Keras is missing, or was imported with another backend.
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "jax"
    keras = import_peer("keras")
    backend = keras.backend.backend()
    if backend != "jax":
        raise PeerSkipped(
            f"keras was imported with the {backend} backend "
            "(set KERAS_BACKEND=jax before keras is imported)"
        )
    return keras


def keras_peer(x: jax.Array) -> Peer:
    """Keras 3's ``BatchNormalization`` with its defaults, as ``stateless_call``."""
    keras = import_keras()
    layer = keras.layers.BatchNormalization()
    layer.build(x.shape)
    params = [v.value for v in layer.trainable_variables]
    stats = [v.value for v in layer.non_trainable_variables]

    def forward(x, params, train):
        return layer.stateless_call(params, stats, x, training=train)[0]

    return Peer(forward, params)


# Every JAX layer peer by its implementation's name: what is timed and what is compiled.
LAYER_PEERS: Dict[str, Callable[[jax.Array], Peer]] = {
    "bnjax": bnjax_peer,
    "flax.linen": flax_linen_peer,
    "flax.nnx": flax_nnx_peer,
    "haiku": haiku_peer,
    "equinox": equinox_peer,
    "bnjax.equinox": bnjax_equinox_peer,
    "keras": keras_peer,
}
