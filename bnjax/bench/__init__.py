"""``python -m bnjax.bench``: bnjax against every JAX batch norm, side by side.

Times bnjax's ``batch_norm`` and its peers, each with its defaults and in its
idiomatic use: ``flax.linen.BatchNorm``, ``flax.nnx.BatchNorm``, Haiku's
``hk.BatchNorm`` (in ``hk.transform_with_state``), Equinox's
``eqx.nn.BatchNorm`` (under ``jax.vmap(..., axis_name="batch")`` with
``eqx.nn.State``, channel-first as Equinox's layers are) and beside it bnjax's
drop-in ``bnjax.equinox.BatchNorm`` called the same way, Keras 3's
``BatchNormalization`` on the JAX backend (``stateless_call``) and PyTorch's
``BatchNorm2d`` in channels_last memory format (``BatchNorm1d`` for dense
shapes), timed with torch itself. A peer that raises on a configuration gets
nothing recorded there, and a note.

Modes: ``fwd`` the training forward; ``fwd+bwd`` the training forward with
``jax.vjp`` as one compiled call that returns the residuals, then the pullback
of a random cotangent as another (for torch: forward, then
``y.backward(cotangent)``); ``eval`` the inference forward with the running
statistics (torch: under ``torch.no_grad()``). torch's ``fwd`` is its
idiomatic training call, with autograd recording and the running statistics
updated in place; the JAX peers' updated statistics are discarded, so XLA may
skip them (per-feature work). ``fwd+bwd (1 jit)`` fuses the
JAX forward and backward into one program and is printed for information only.
Shapes are NHWC activations of early, middle and late ResNet layers and a wide
dense activation, in float32 and bfloat16. Everything runs in one process with
interleaved repetitions, in a new random order each time; the tables report
medians, the ratio peer / bnjax (> 1 means bnjax is faster), the fraction of
the bandwidth of a copy of the same x each implementation reaches, and the
bytes each keeps for the backward beyond x.

The bandwidth fraction: an implementation's rate is the bytes batch norm must
move in its mode (passes over x: 3 for the training forward, 2 for inference,
8 for forward+backward, 7 fused) over its median time. The reference is a
jitted ``x + 1`` (2 passes) on the same x, timed in the same interleaved
repetitions and reduced to its median the same way, so sizes, caches and the
machine's load are the same for both; where an implementation moves its
passes faster than that copy (x can stay in cache between passes), its rate
becomes the reference and a note says so. No fraction exceeds 100%.

The training-step benchmark (``--model``) is where users meet batch norm: a
whole jitted training step (forward, backward, ``optax.sgd`` with momentum,
softmax cross-entropy on random labels) of a small CIFAR ResNet (ResNet-8:
basic blocks with the residual add) and of six plain conv–BN–ReLU blocks, NHWC
32×32×3, batch 32, in float32 and in bfloat16 (bfloat16 compute, float32
parameters, each framework's own mixed precision). Each network is written
once; each framework supplies its layers: bnjax's ``BatchNorm`` and
``flax.linen.BatchNorm`` in the same linen network, ``flax.nnx``, Haiku,
Equinox (with ``eqx.nn.BatchNorm`` and with ``bnjax.equinox.BatchNorm``) and
Keras 3 in theirs, and the same linen network without any
normalization, the floor. It reports the step's median time (ratio peer /
bnjax) and the compiled program's temporary memory
(``jax.jit(step).lower(...).compile().memory_analysis().temp_size_in_bytes``)
as ratios against bnjax and against the floor.

Accelerators (``--target h200``, ``--target tpu-v5e``, or both:
``--target h200,tpu-v5e``) compile instead of timing: compiled programs, not
timings on a device. Each case is compiled for an NVIDIA H200 (described by
its ``GpuTargetConfigProto``, through the CUDA plugin) or a TPU v5e (through
libtpu) without one, and the figures are read from the compiled program: HBM
bytes (XLA's cost analysis; cuDNN convolutions count as 0 bytes on the H200,
so training-step bytes there are the non-convolution bytes, and
``bytes_total`` adds the convolutions' reads and writes), kernels (the
operations of the optimized HLO that launch work), temporary memory and, on
TPU, the compiler's cost-model time, each also as a ratio against
flax.linen's program. The cases: the layer on x of shape (64, 56, 56, 256)
(``fwd``; ``fwd+bwd``, ``jax.vjp`` and the pullback of a given cotangent in
one program returning dx), its bytes also in units of x's bytes against the
pass floor (3 forward, 5 forward+backward); the training step of each
network at batch 128 with every framework and the floor (ResNet-8 and the
six blocks on the H200 only: their 16 to 64 channels take the TPU compiler
minutes), plus a ResNet-50 conv2_x stage (three bottleneck blocks on the
56×56×64 activations of 224×224 images) on both; and the data-parallel step
of ResNet-8 (bnjax and flax.linen, 8 examples a device, batch sharded over
every device, plain ``jax.jit``) on 8 and 16
H200s (topologies 1x1x8, 2x1x8) and TPU v5e slices 4x4 and 8x8, with its
collectives and their bytes per device. ``--quick`` compiles ResNet-8 only
and one multi-device topology a target (big shapes compile as fast as small
ones, and small ones compile into other programs). The compilers are the
test extra's (``jax-cuda12-plugin``, ``jax-cuda12-pjrt``, ``libtpu``, pinned to
jax's version); a missing one stops the run before any work.

Without ``--model`` or ``--layers`` both benchmarks run. A run needs every
peer it times (all JAX peers by default, or those ``--impls`` names), optax
for the training step and, for ``--plot``, matplotlib; anything missing stops
it before any work with exit code 2 and the command that installs the bench
extra (in a checkout, ``pip install -e ".[bench]"``). torch is optional and
skipped with a note when absent. ``--json`` is strict JSON: a value that does
not exist is ``null``.

Usage::

  python -m bnjax.bench [--quick] [--model | --layers] [--impls bnjax,flax.linen,...]
                        [--repeats N] [--batch N] [--json PATH] [--plot PATH]
                        [--target h200,tpu-v5e]
"""

import argparse
import importlib.metadata
import os
import re
from typing import List

import jax

from . import _deps, _layer_report, _model, _modes, _registry, _targets
from ._accelerators import run_accelerators as run_accelerators
from ._accelerators_report import HEADER as ACCELERATORS_HEADER
from ._accelerators_report import format_accelerator_tables as format_accelerator_tables
from ._accelerators_report import plot_accelerators as plot_accelerators
from ._compiled import COMMON_PATH as COMMON_PATH
from ._compiled import LAYER_FLOOR as LAYER_FLOOR
from ._compiled import LAYER_SHAPE as LAYER_SHAPE
from ._compiled import STEP_NETWORKS as STEP_NETWORKS
from ._compiled import common_path as common_path
from ._compiled import layer_figures as layer_figures
from ._compiled import scaleout_figures as scaleout_figures
from ._compiled import step_figures as step_figures
from ._json import strict as strict
from ._json import write_json as write_json
from ._layer_report import format_table as format_table
from ._layer_report import plot_records as plot_records
from ._layer_report import ratios as ratios
from ._layer_report import summary as summary
from ._model import FLOOR as FLOOR
from ._model import MODEL_IMPLS as MODEL_IMPLS
from ._model import Step as Step
from ._model import compile_step as compile_step
from ._model import model_inputs as model_inputs
from ._model import run_model as run_model
from ._model_peers import Model as Model
from ._model_report import format_model_table as format_model_table
from ._model_report import model_summary as model_summary
from ._model_report import plot_model_records as plot_model_records
from ._modes import MODES as MODES
from ._networks import NETWORKS as NETWORKS
from ._networks import Network as Network
from ._networks import plain as plain
from ._networks import resnet as resnet
from ._peers import Peer as Peer
from ._peers import bnjax_equinox_peer as bnjax_equinox_peer
from ._peers import bnjax_peer as bnjax_peer
from ._peers import equinox_peer as equinox_peer
from ._peers import flax_linen_peer as flax_linen_peer
from ._peers import flax_nnx_peer as flax_nnx_peer
from ._peers import haiku_peer as haiku_peer
from ._peers import keras_peer as keras_peer
from ._registry import IMPLS as IMPLS
from ._registry import Impl as Impl
from ._registry import load_impls as load_impls
from ._targets import TARGETS as TARGETS
from ._targets import devices as accelerator_devices
from ._timing import COPY_METHOD
from ._timing import DTYPES as DTYPES
from ._timing import bandwidth_fractions as bandwidth_fractions
from ._timing import run as run

__all__ = [
    # the command line and the layer benchmark
    "main",
    "run",
    "bandwidth_fractions",
    "COPY_METHOD",
    "format_table",
    "summary",
    "ratios",
    "plot_records",
    "SHAPES_FULL",
    "SHAPES_QUICK",
    "DTYPES",
    "MODES",
    # the training-step benchmark
    "run_model",
    "compile_step",
    "Step",
    "Model",
    "model_inputs",
    "MODEL_IMPLS",
    "FLOOR",
    "NETWORKS",
    "Network",
    "resnet",
    "plain",
    "NETWORKS_QUICK",
    "MODEL_BATCH",
    "format_model_table",
    "model_summary",
    "plot_model_records",
    # strict JSON
    "write_json",
    "strict",
    # compiled for an accelerator
    "layer_figures",
    "step_figures",
    "scaleout_figures",
    "common_path",
    "COMMON_PATH",
    "run_accelerators",
    "format_accelerator_tables",
    "plot_accelerators",
    "ACCELERATORS_HEADER",
    "TARGETS",
    "accelerator_devices",
    "LAYER_SHAPE",
    "LAYER_FLOOR",
    "STEP_NETWORKS",
    # the implementations
    "IMPLS",
    "Impl",
    "load_impls",
    "Peer",
    "bnjax_peer",
    "flax_linen_peer",
    "flax_nnx_peer",
    "haiku_peer",
    "equinox_peer",
    "bnjax_equinox_peer",
    "keras_peer",
]

SHAPES_FULL = [(64, 56, 56, 64), (64, 28, 28, 128), (64, 14, 14, 256), (64, 7, 7, 512), (256, 4096)]
SHAPES_QUICK = [(32, 28, 28, 64), (32, 7, 7, 256), (256, 2048)]
NETWORKS_QUICK = ["resnet8"]
MODEL_BATCH = 32


def _parse_impls(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(IMPLS)}")
    return list(dict.fromkeys(["bnjax", *names]))  # bnjax first, each name once


def _parse_targets(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TARGETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(TARGETS)}")
    return names


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _plain_text(rst: str) -> str:
    """Plain text of reStructuredText for ``--help``: no double backquotes, ``::`` as ``:``."""
    return re.sub(r"``(.*?)``", r"\1", rst).replace("::\n", ":\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bnjax.bench",
        description=_plain_text((__doc__ or "").split("Usage::")[0]),
        epilog=f"The bench extra, for this copy of bnjax: {_deps.EXTRA_HINT}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="small shapes and few repetitions")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--model", action="store_true", help="only the training-step benchmark")
    which.add_argument("--layers", action="store_true", help="only the layer benchmark")
    parser.add_argument("--json", metavar="PATH", help="write the records as strict JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the ratios")
    parser.add_argument("--repeats", type=_positive_int, default=None, help="timed repetitions")
    parser.add_argument(
        "--batch",
        type=_positive_int,
        default=None,
        help=f"training-step batch size ({MODEL_BATCH}; with --target, 128)",
    )
    parser.add_argument(
        "--target",
        type=_parse_targets,
        action="append",
        help=f"compile for an accelerator instead of timing: {', '.join(TARGETS)} "
        "(comma-separated or repeated); compiled-program figures, not timings",
    )
    parser.add_argument(
        "--impls",
        type=_parse_impls,
        default=None,
        help=f"comma-separated, from {', '.join(IMPLS)} (bnjax, the reference, is always timed)",
    )
    return parser


def _targets_of(args) -> List[str]:
    """The targets of every ``--target``, each once."""
    return list(dict.fromkeys(t for group in args.target or [] for t in group))


def _check_args(parser: argparse.ArgumentParser, args) -> None:
    """Usage errors and missing dependencies, before any work (exit code 2)."""
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):  # fail now, not after the whole run
            parser.error(f"{option}: the folder of {path!r} does not exist")
    required = [
        IMPLS[n].module for n in args.impls or IMPLS if IMPLS[n].install == _registry.INSTALL_HINT
    ]
    required += ["optax"] if not args.layers else []  # the training step's optimizer
    missing = _deps.missing_modules(required + (["matplotlib"] if args.plot else []))
    if missing:
        parser.exit(2, _deps.missing_message(missing) + "\n")
    compilers = _targets.missing_compilers(_targets_of(args))
    if compilers:
        needs = "; ".join(f"{t} needs its compiler: {hint}" for t, hint in compilers.items())
        parser.exit(2, f"python -m bnjax.bench --target: {needs}\n")


def _run_layers(args, names) -> dict:
    shapes = SHAPES_QUICK if args.quick else SHAPES_FULL
    repeats = args.repeats or (10 if args.quick else 30)
    print(f"layers: {repeats} repetitions; bandwidth reference: {COPY_METHOD}")
    records, notes = run(shapes, list(DTYPES), repeats, names)
    print(format_table(records))
    for note in notes:
        print(f"note: {note}")
    return {
        "copy_bandwidth_method": COPY_METHOD,
        "passes": {mode: _modes.PASSES[mode] for mode in MODES},
        "repeats": repeats,
        "records": [r for r in records if r["mode"] in MODES],
    }


def _run_model(args, names) -> dict:
    networks = NETWORKS_QUICK if args.quick else list(NETWORKS)
    repeats = args.repeats or (5 if args.quick else 20)
    batch = args.batch or MODEL_BATCH
    print(
        f"training step: batch {batch}, {'×'.join(map(str, _model.IMAGE))}, {_model.OPTIMIZER}; "
        f"{repeats} repetitions"
    )
    for network in networks:
        print(f"  {network}: {NETWORKS[network].description}")
    records, notes = run_model(networks, list(DTYPES), batch, repeats, names)
    print(format_model_table(records))
    for note in notes:
        print(f"note: {note}")
    return {
        "batch": batch,
        "image": list(_model.IMAGE),
        "optimizer": _model.OPTIMIZER,
        "networks": {network: NETWORKS[network].description for network in networks},
        "repeats": repeats,
        "records": records,
        "notes": notes,
    }


def _run_accelerators(args, names) -> dict:
    """Compiles every case for every target: compiled-program figures, not timings."""
    targets = _targets_of(args)
    print(ACCELERATORS_HEADER)
    described = {}
    for target in targets:
        device = TARGETS[target]
        kind = accelerator_devices(target)[0].device_kind
        described[target] = {
            "device": kind,
            "topology": device.one,
            "scaleout": list(device.scaleout),
        }
        print(f"  {target}: {kind} (compiled for; not present)")
    networks = [] if args.layers else (NETWORKS_QUICK if args.quick else list(STEP_NETWORKS))
    layer_shape = None if args.model else LAYER_SHAPE  # big shapes compile as fast as small ones
    for network in networks:
        case = STEP_NETWORKS[network]
        image = "×".join(map(str, case.image))
        print(f"  {network}, batch {args.batch or case.batch}, {image}: {case.network.description}")
    result, notes = run_accelerators(
        targets,
        names,
        list(DTYPES),
        layer_shape=layer_shape,
        networks=networks,
        batch=args.batch,
        scaleout=not args.layers,
        quick_scaleout=args.quick,
    )
    print(format_accelerator_tables(result))
    for note in notes:
        print(f"note: {note}")
    return {
        "compiled_not_timed": ACCELERATORS_HEADER,
        "targets": described,
        "layer_floor_per_x": dict(LAYER_FLOOR),
        "networks": {
            n: {
                "description": STEP_NETWORKS[n].network.description,
                "batch": args.batch or STEP_NETWORKS[n].batch,
                "image": list(STEP_NETWORKS[n].image),
            }
            for n in networks
        },
        "optimizer": _model.OPTIMIZER,
        **result,
        "notes": notes,
    }


def _compiler_versions() -> dict:
    versions = {}
    for distribution in ("jax-cuda12-plugin", "jax-cuda12-pjrt", "libtpu"):
        try:
            versions[distribution] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _plot(result: dict, path: str) -> None:
    """One PNG: the layer ratios above the training-step panels, whichever ran."""
    from matplotlib.figure import Figure

    layers, model = result.get("records"), result.get("model", {}).get("records")
    heights = ([_layer_report.plot_size(layers)[1]] if layers else []) + ([6.4] if model else [])
    width = max([_layer_report.plot_size(layers)[0]] if layers else [6.0])
    figure = Figure(figsize=(width, sum(heights)), layout="constrained")
    panels = figure.subfigures(len(heights), 1, height_ratios=heights, squeeze=False)[:, 0]
    if layers:
        plot_records(layers, figure=panels[0])
    if model:
        plot_model_records(model, figure=panels[-1])
    figure.savefig(path, dpi=120)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = _parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    if args.target:
        _targets.prepare_environment()  # before jax starts its backends
    default = [n for n in IMPLS if not (args.model and n not in MODEL_IMPLS)]  # no torch step
    default = [n for n in default if not (args.target and n == "torch")]  # not a JAX program
    names, versions, notes = load_impls(args.impls or default)
    device = jax.devices()[0].device_kind
    if not args.layers:
        versions["optax"] = importlib.metadata.version("optax")
    if args.target:
        versions.update(_compiler_versions())
    print(f"{', '.join(f'{k} {v}' for k, v in versions.items())}; {device}")
    for note in notes:
        print(note)
    result = {"device": device, "versions": versions}
    if args.target:
        result["accelerators"] = _run_accelerators(args, names)
        if args.json:
            write_json(result, args.json)
        if args.plot:
            plot_accelerators(result["accelerators"], args.plot)
        return 0
    if not args.model:
        result.update(_run_layers(args, names))
    if not args.layers:
        result["model"] = _run_model(args, names)
    if args.json:
        write_json(result, args.json)
    if args.plot:
        _plot(result, args.plot)
    return 0
