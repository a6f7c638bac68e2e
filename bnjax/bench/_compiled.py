"""The programs compiled for an accelerator: the layer, the training steps, the sharded step.

Each ``*_figures`` function builds an implementation's program from the same
pieces as the timed benchmark (the layer peers of ``_peers``, the networks of
``_networks`` in each framework's ``_model_peers`` form, ``_model``'s training
step), compiles it for a described device (``_targets``) from abstract
arguments, and reads the compiled program's figures. Nothing runs and no
device is needed; the figures are deterministic.
"""

import contextlib
import dataclasses
import functools
import math
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from .._core.stats import METHODS, running_first_pass
from . import _hlo, _targets
from ._model import DONATED, MODEL_IMPLS, train_step
from ._modes import BACKWARD_PASSES, FORWARD_PASSES
from ._networks import NETWORKS, Network, resnet50_stage
from ._peers import LAYER_PEERS
from ._timing import DTYPES

Lowered = Tuple[Any, Callable]  # (jax's Lowered program, finish(compiled) -> figures)
REFERENCE = "flax.linen"  # every ratio is against flax.linen.BatchNorm with its defaults
# bnjax compiled as it runs when its TPU statistics need no second pass (``common_path``).
COMMON_PATH = "bnjax, common path"
LAYER_SHAPE = (64, 56, 56, 256)  # NHWC: a ResNet-50 conv2_x activation at batch 64
LAYER_MODES = ("fwd", "fwd+bwd")
# The bytes batch norm must move, in units of |x| (x's bytes). Forward: read x for the
# statistics, read x and write y. Forward and backward in one program that returns dx: the
# backward's passes alone, one reading x and dy for all four sums (Σx, Σx², Σdy, Σdy·x; y is
# never written), one reading x and dy and writing dx.
LAYER_FLOOR = {"fwd": FORWARD_PASSES, "fwd+bwd": BACKWARD_PASSES}


@dataclasses.dataclass(frozen=True)
class CompiledNetwork:
    """A training-step case: a network, its NHWC input image, its batch, the targets it runs on.

    The CIFAR networks (16 to 64 channels at 32×32) are compiled for the H200
    only in a full run: the TPU compiler takes one to two minutes for each of
    their steps on 2 CPU cores, and channel counts that fill an eighth of a
    TPU's 128 lanes are not what a TPU trains; ``step_figures`` compiles them
    for any target on request.
    """

    network: Network
    image: Tuple[int, int, int]
    batch: int
    targets: Tuple[str, ...] = ("h200", "tpu-v5e")


RESNET50_STAGE = Network(
    resnet50_stage,
    "ResNet-50 conv2_x: three bottleneck blocks (64-64-256 channels, 1×1 projection "
    "shortcut) on the 56×56×64 activations of a 224×224 image, 10 convolutions and 10 "
    "batch norms",
)
STEP_NETWORKS = {
    "resnet8": CompiledNetwork(NETWORKS["resnet8"], (32, 32, 3), 128, ("h200",)),
    "plain6": CompiledNetwork(NETWORKS["plain6"], (32, 32, 3), 128, ("h200",)),
    "resnet50-conv2": CompiledNetwork(RESNET50_STAGE, (56, 56, 64), 128),
}
SCALEOUT_BATCH_PER_DEVICE = 8


def _on(sharding) -> Callable:
    """Abstract arrays of ``tree``'s shapes and dtypes, placed with ``sharding``."""

    def place(tree):
        return jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), tree
        )

    return place


def layer_program(
    impl: str, dtype: str, mode: str, shape: Tuple[int, ...]
) -> Tuple[Callable, Tuple]:
    """A peer's layer program and its abstract arguments (shapes and dtypes only).

    ``fwd`` is the training forward ``(x, params) -> y``. ``fwd+bwd`` is one
    program ``(x, params, dy) -> dx``: ``jax.vjp`` of the training forward,
    then the pullback of a given cotangent dy of y's dtype; only the input
    gradient is returned.

    Args:
      impl: a key of ``LAYER_PEERS``.
      dtype: a key of ``DTYPES``.
      mode: one of ``LAYER_MODES``.
      shape: x's shape, features last.

    Returns:
      ``(program, args)``.
    """
    if mode not in LAYER_FLOOR:
        raise ValueError(f"mode must be one of {LAYER_MODES}, got {mode=}")
    small = jnp.zeros((2, *(1,) * (len(shape) - 2), shape[-1]), DTYPES[dtype])  # parameters only
    peer = LAYER_PEERS[impl](small)
    x = jax.eval_shape(peer.layout, jax.ShapeDtypeStruct(shape, DTYPES[dtype]))
    train = functools.partial(peer.forward, train=True)
    if mode == "fwd":
        return train, (x, peer.params)
    y = jax.eval_shape(train, x, peer.params)

    def forward_backward(x, params, dy):
        return jax.vjp(train, x, params)[1](dy)[0]

    return forward_backward, (x, peer.params, y)


def layer_figures(
    target: str,
    impl: str,
    dtype: str = "float32",
    mode: str = "fwd",
    shape: Tuple[int, ...] = LAYER_SHAPE,
) -> Dict[str, Any]:
    """One layer's program compiled for ``target``, and what it would do there.

    Args:
      target: a key of ``_targets.TARGETS`` (``"h200"``, ``"tpu-v5e"``).
      impl: a key of ``LAYER_PEERS``.
      dtype: ``"float32"`` or ``"bfloat16"``.
      mode: ``"fwd"`` or ``"fwd+bwd"`` (see ``layer_program``).
      shape: x's shape, NHWC (or dense, features last).

    Returns:
      ``_targets.figures``' dict, plus ``bytes_per_x`` (HBM bytes in units of
      x's bytes; the pass floor is ``LAYER_FLOOR[mode]``), ``temp_per_x``
      and ``x_bytes``.
    """
    lowered, finish = lower_layer(target, impl, dtype, mode, shape)
    return finish(lowered.compile())


def lower_layer(target, impl, dtype="float32", mode="fwd", shape=LAYER_SHAPE) -> Lowered:
    """``layer_figures`` in two steps: the lowered program, then ``finish(compiled)``."""
    (device,) = _targets.devices(target)  # first: it prepares the compilers' environment
    program, args = layer_program(impl, dtype, mode, shape)
    lowered = jax.jit(program).lower(*_on(SingleDeviceSharding(device))(args))
    x_bytes = math.prod(shape) * jnp.dtype(DTYPES[dtype]).itemsize

    def finish(compiled) -> Dict[str, Any]:
        found = _targets.figures(compiled, target)
        per_x = {"bytes_per_x": found["bytes"] / x_bytes, "temp_per_x": found["temp"] / x_bytes}
        return {**found, "x_bytes": x_bytes, **per_x}

    return lowered, finish


@functools.cache
def _model(impl: str, network: str, dtype: str):
    """A framework's network, built once (parameters do not depend on the batch size)."""
    case = STEP_NETWORKS[network]
    return MODEL_IMPLS[impl](case.network.forward, (2, *case.image), DTYPES[dtype])


def step_program(impl: str, dtype: str, network: str, batch: int) -> Tuple[Callable, Tuple]:
    """An implementation's whole training step and its abstract arguments.

    Args:
      impl: a key of ``MODEL_IMPLS`` (``"floor"``: no normalization).
      dtype: the compute dtype's name.
      network: a key of ``STEP_NETWORKS``.
      batch: the global batch size.

    Returns:
      ``(step, (params, state, opt_state, x, labels))``, x in the framework's layout.
    """
    model = _model(impl, network, dtype)
    step, carry = train_step(model)
    image = jax.ShapeDtypeStruct((batch, *STEP_NETWORKS[network].image), DTYPES[dtype])
    labels = jax.ShapeDtypeStruct((batch,), jnp.int32)
    return step, (*carry, jax.eval_shape(model.layout, image), labels)


def step_figures(
    target: str,
    impl: str,
    dtype: str = "float32",
    network: str = "resnet8",
    batch: Optional[int] = None,
) -> Dict[str, Any]:
    """A whole jitted training step compiled for one device of ``target``.

    Args:
      target: a key of ``_targets.TARGETS``.
      impl: a key of ``MODEL_IMPLS``.
      dtype: ``"float32"`` or ``"bfloat16"`` (bfloat16 compute, float32 parameters).
      network: a key of ``STEP_NETWORKS``.
      batch: the batch size; the network's (``STEP_NETWORKS``) if None.

    Returns:
      ``_targets.figures``' dict. On GPUs ``bytes`` leaves out what the
      convolutions move (cuDNN custom calls count as 0) and ``bytes_total``
      adds it.
    """
    lowered, finish = lower_step(target, impl, dtype, network, batch)
    return finish(lowered.compile())


def lower_step(target, impl, dtype="float32", network="resnet8", batch=None) -> Lowered:
    """``step_figures`` in two steps: the lowered program, then ``finish(compiled)``."""
    (device,) = _targets.devices(target)  # first: it prepares the compilers' environment
    batch = batch or STEP_NETWORKS[network].batch
    step, args = step_program(impl, dtype, network, batch)
    lowered = jax.jit(step, donate_argnums=DONATED).lower(*_on(SingleDeviceSharding(device))(args))
    return lowered, functools.partial(_targets.figures, target=target)


def scaleout_figures(
    target: str,
    impl: str,
    topology: str,
    dtype: str = "float32",
    network: str = "resnet8",
    batch_per_device: int = SCALEOUT_BATCH_PER_DEVICE,
) -> Dict[str, Any]:
    """The data-parallel training step compiled for every device of a topology.

    The batch is sharded over all devices (a one-axis ``Mesh``), parameters,
    statistics and optimizer state are replicated, and the step is plain
    ``jax.jit`` over those sharded arrays: the compiler partitions it, batch
    statistics included, and inserts the collectives.

    Args:
      target: a key of ``_targets.TARGETS``.
      impl: a key of ``MODEL_IMPLS``.
      topology: e.g. ``"1x1x8"`` (8 GPUs in one host), ``"2x1x8"``, ``"v5e:4x4"``.
      dtype: the compute dtype's name.
      network: a key of ``STEP_NETWORKS``.
      batch_per_device: the global batch is this times the number of devices.

    Returns:
      ``_targets.figures``' dict for one device's program, plus ``devices``,
      ``batch``, ``collectives`` (kind -> count and bytes per device, see
      ``_hlo.collectives``), ``collective_count`` and ``collective_bytes``.
    """
    lowered, finish = lower_scaleout(target, impl, topology, dtype, network, batch_per_device)
    return finish(lowered.compile())


def lower_scaleout(
    target,
    impl,
    topology,
    dtype="float32",
    network="resnet8",
    batch_per_device=SCALEOUT_BATCH_PER_DEVICE,
) -> Lowered:
    """``scaleout_figures`` in two steps: the lowered program, then ``finish(compiled)``."""
    devices = _targets.devices(target, topology)
    mesh = Mesh(np.array(devices), ("batch",))
    batch = batch_per_device * len(devices)
    step, (*carry, x, labels) = step_program(impl, dtype, network, batch)
    specs = (
        *_on(NamedSharding(mesh, PartitionSpec()))(tuple(carry)),
        *_on(NamedSharding(mesh, PartitionSpec("batch")))((x, labels)),
    )
    lowered = jax.jit(step, donate_argnums=DONATED).lower(*specs)

    def finish(compiled) -> Dict[str, Any]:
        kinds = _hlo.collectives(compiled.as_text())
        return {
            **_targets.figures(compiled, target),
            "devices": len(devices),
            "batch": batch,
            "collectives": kinds,
            "collective_count": sum(k["count"] for k in kinds.values()),
            "collective_bytes": sum(k["bytes"] for k in kinds.values()),
        }

    return lowered, finish


@contextlib.contextmanager
def common_path():
    """Lowers bnjax's XLA:TPU statistics without their rarely taken second pass.

    A compiled program's figures count a conditional's branch as if it ran. The
    TPU's statistics (``stats._running_pass``) centre their sums on the
    running mean and run a second pass only where its error bound is broken
    (the first steps on offset data, a shift in the data). Programs lowered
    inside this context are the path that runs otherwise, reported beside the
    whole program's figures. Other backends' programs are unchanged.
    """
    whole = METHODS["running"]

    def first_pass(x, mask, reduce_axes, count, hint=None):
        if hint is None:
            return whole(x, mask, reduce_axes, count, hint)
        return running_first_pass(x, mask, reduce_axes, count, hint)[:3]

    METHODS["running"] = first_pass
    try:
        yield
    finally:
        METHODS["running"] = whole


def on_common_path(lower: Callable[[], Lowered]) -> Lowered:
    """``lower()`` inside ``common_path``: the lowered program and its ``finish``."""
    with common_path():
        return lower()
