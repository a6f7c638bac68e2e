"""Accelerators that need not be present: their described devices, and a compiled program's figures.

JAX compiles for a device it only has a description of
(``jax.experimental.topologies.get_topology_desc``): an H200 from its
``GpuTargetConfigProto`` (``targets/h200.txtpb``, through the CUDA plugin,
``jax-cuda12-plugin``), a TPU v5e by its topology name (through ``libtpu``).
``jax.jit(f).lower(*specs).compile()`` against those devices gives the program
the device would run. Nothing runs: the figures are the compiled program's.
"""

import dataclasses
import functools
import importlib
import importlib.util
import os
import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple

import jax

from . import _hlo

TARGET_FILES = pathlib.Path(__file__).resolve().parent / "targets"
CUDA_PLUGIN = "jax_plugins.xla_cuda12"


@dataclasses.dataclass(frozen=True)
class Target:
    """An accelerator to compile for.

    Attributes:
      platform: ``"cuda"`` or ``"tpu"``.
      one: the topology whose first device is the single-device target.
      scaleout: the multi-device topologies of the scale-out figures.
      module: the module that compiles for it (checked before any work).
      install: how to install that module.
      target_config: the ``GpuTargetConfigProto`` file (GPUs), in ``targets/``.
    """

    platform: str
    one: str
    scaleout: Tuple[str, ...]
    module: str
    install: str
    target_config: Optional[str] = None


_PINNED = f"=={jax.__version__}"
TARGETS = {
    "h200": Target(
        "cuda",
        "1x1x1",
        ("1x1x8", "2x1x8"),
        CUDA_PLUGIN,
        f'pip install "jax-cuda12-plugin{_PINNED}" "jax-cuda12-pjrt{_PINNED}"',
        "h200.txtpb",
    ),
    "tpu-v5e": Target(
        "tpu", "v5e:2x2", ("v5e:4x4", "v5e:8x8"), "libtpu", f'pip install "jax[tpu]{_PINNED}"'
    ),
}


def missing_compilers(targets: Sequence[str]) -> Dict[str, str]:
    """Target -> how to install its compiler, for the chosen targets whose compiler is missing."""
    return {
        t: TARGETS[t].install
        for t in targets
        if importlib.util.find_spec(TARGETS[t].module.split(".")[0]) is None
        or importlib.util.find_spec(TARGETS[t].module) is None
    }


def prepare_environment() -> None:
    """Sets what compiling for an absent device needs, before the compilers load.

    ``JAX_SKIP_CUDA_CONSTRAINTS_CHECK=1``: the CUDA plugin checks the CUDA
    libraries when jax's backends start and, without a driver, that check
    fails and the plugin is dropped (``_cuda_topology`` registers it again
    where jax started first). ``ALLOW_MULTIPLE_LIBTPU_LOAD=1``: libtpu takes
    a lock file when it loads, held by any other process that loaded it (any
    ``import jax`` that tried the TPU backend); compiling needs no TPU, so
    several processes may. Variables already set are left as they are.
    """
    os.environ.setdefault("JAX_SKIP_CUDA_CONSTRAINTS_CHECK", "1")
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")


def _cuda_topology(config: str, topology: str):
    from jax.experimental import topologies

    try:
        return topologies.get_topology_desc(
            platform="cuda", target_config=config, topology=topology
        )
    except NotImplementedError:
        # jax started its backends before the check was skipped, so the plugin's initialization
        # failed; it registers now that the variable is set.
        importlib.import_module(CUDA_PLUGIN).initialize()
        return topologies.get_topology_desc(
            platform="cuda", target_config=config, topology=topology
        )


@functools.cache
def devices(target: str, topology: Optional[str] = None) -> Tuple[Any, ...]:
    """The compile-only devices of ``target``'s topology (its single-device one by default).

    Args:
      target: a key of ``TARGETS``.
      topology: e.g. ``"1x1x8"`` (GPUs: slices x hosts x devices) or ``"v5e:4x4"``.

    Returns:
      The devices; for the single-device topology, only its first.
    """
    prepare_environment()
    spec = TARGETS[target]
    name = topology or spec.one
    if spec.platform == "cuda":
        assert spec.target_config is not None
        config = (TARGET_FILES / spec.target_config).read_text()
        found = tuple(_cuda_topology(config, name).devices)
    else:
        from jax.experimental import topologies

        found = tuple(topologies.get_topology_desc(topology_name=name, platform="tpu").devices)
    return found if topology else found[:1]


def _gpu_bytes(compiled) -> float:
    """HloCostAnalysis's bytes accessed, run through the CPU client (the GPU path has none).

    XLA's C++ cost analysis is reached through jaxlib's extension module, which
    is not public API (checked with jax 0.10.2).
    """
    xla = importlib.import_module("jax._src.lib").xla_client._xla
    module = compiled.runtime_executable().hlo_modules()[0]
    cpu = jax.devices("cpu")[0].client
    return float(xla.hlo_module_cost_analysis(cpu, module)["bytes accessed"])


def _tpu_costs(compiled) -> Tuple[float, Optional[float]]:
    """TPU's cost analysis: (bytes accessed, the cost model's seconds).

    The cost model answers a negative time (about -1 s) for a program it cannot
    estimate: that is None here.
    """
    costs = compiled.cost_analysis()
    if isinstance(costs, (list, tuple)):
        costs = costs[0]
    seconds = float(costs["optimal_seconds"])
    return float(costs["bytes accessed"]), seconds if seconds >= 0 else None


def figures(compiled, target: str) -> Dict[str, Any]:
    """What a program compiled for ``target`` will do, read from the compiled program.

    Args:
      compiled: ``jax.jit(f).lower(*specs).compile()`` against ``devices(target)``.
      target: a key of ``TARGETS``.

    Returns:
      A dict: ``bytes`` (XLA's cost analysis: HBM bytes accessed; on GPUs
      custom calls such as cuDNN convolutions count as 0), ``bytes_total``
      (plus, on GPUs, what the custom calls read and write), ``kernels`` (see
      ``_hlo.kernels``) and ``kernel_ops`` (by opcode), ``temp`` (temporary
      memory in bytes) and ``seconds`` (TPU cost-model time; None on GPUs and
      where the cost model gives no estimate).
    """
    text = compiled.as_text()
    ops = _hlo.kernels(text)
    if TARGETS[target].platform == "cuda":
        moved, seconds = _gpu_bytes(compiled), None
        total = moved + _hlo.custom_call_bytes(text)
    else:
        moved, seconds = _tpu_costs(compiled)
        total = moved
    return {
        "bytes": moved,
        "bytes_total": total,
        "kernels": sum(ops.values()),
        "kernel_ops": ops,
        "temp": compiled.memory_analysis().temp_size_in_bytes,
        "seconds": seconds,
    }
