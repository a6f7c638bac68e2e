"""``python -m bnjax.bench``: bnjax against every JAX batch norm, side by side.

Times bnjax's ``batch_norm`` and its peers, each with its defaults and in its
idiomatic use: ``flax.linen.BatchNorm``, ``flax.nnx.BatchNorm``, Haiku's
``hk.BatchNorm`` (in ``hk.transform_with_state``), Equinox's
``eqx.nn.BatchNorm`` (under ``jax.vmap(..., axis_name="batch")`` with
``eqx.nn.State``, channel-first as Equinox's layers are), Keras 3's
``BatchNormalization`` on the JAX backend (``stateless_call``) and PyTorch's
``BatchNorm2d`` in channels_last memory format (``BatchNorm1d`` for dense
shapes), timed with torch itself. Peers that are not installed are skipped with
a note (``pip install bnjax[bench]``; torch separately); a peer that raises on
a configuration gets nothing recorded there, and a note.

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
the machine's copy bandwidth each implementation reaches, and the bytes each
keeps for the backward beyond x.

Copy bandwidth is measured in the same run: a jitted ``x + 1`` on a 64 MiB
float32 array, (bytes read + bytes written) / median time. An implementation's
bandwidth fraction is the bytes batch norm must move (``*_PASSES`` passes over
x's bytes) / its median time / that copy bandwidth.

Usage::

  python -m bnjax.bench [--quick] [--impls bnjax,flax.linen,...] [--repeats N]
                        [--json PATH] [--plot PATH]
"""

import argparse
import json
import os
from typing import List

import jax

from ._modes import MODES as MODES
from ._modes import PASSES
from ._peers import Peer as Peer
from ._peers import bnjax_peer as bnjax_peer
from ._peers import equinox_peer as equinox_peer
from ._peers import flax_linen_peer as flax_linen_peer
from ._peers import flax_nnx_peer as flax_nnx_peer
from ._peers import haiku_peer as haiku_peer
from ._peers import keras_peer as keras_peer
from ._registry import IMPLS as IMPLS
from ._registry import Impl as Impl
from ._registry import load_impls as load_impls
from ._report import format_table as format_table
from ._report import plot_records as plot_records
from ._report import ratios as ratios
from ._report import summary as summary
from ._timing import COPY_METHOD
from ._timing import DTYPES as DTYPES
from ._timing import copy_bandwidth as copy_bandwidth
from ._timing import run as run

SHAPES_FULL = [(64, 56, 56, 64), (64, 28, 28, 128), (64, 14, 14, 256), (64, 7, 7, 512), (256, 4096)]
SHAPES_QUICK = [(32, 28, 28, 64), (32, 7, 7, 256), (256, 2048)]


def _parse_impls(text: str) -> List[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in IMPLS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(IMPLS)}")
    return list(dict.fromkeys(["bnjax", *names]))  # bnjax first, each name once


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bnjax.bench", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, < 1 minute")
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a PNG of the ratios")
    parser.add_argument("--repeats", type=_positive_int, default=None, help="timed repetitions")
    parser.add_argument(
        "--impls",
        type=_parse_impls,
        default=list(IMPLS),
        help=f"comma-separated, from {', '.join(IMPLS)} (bnjax, the reference, is always timed)",
    )
    args = parser.parse_args(argv)
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        folder = os.path.dirname(os.path.abspath(path)) if path else None
        if folder and not os.path.isdir(folder):  # fail now, not after the whole run
            parser.error(f"{option}: the folder of {path!r} does not exist")
    shapes = SHAPES_QUICK if args.quick else SHAPES_FULL
    repeats = args.repeats or (10 if args.quick else 30)
    names, versions, notes = load_impls(args.impls)
    device = jax.devices()[0].device_kind
    bandwidth = copy_bandwidth(max(repeats, 5))
    print(f"{', '.join(f'{k} {v}' for k, v in versions.items())}; {device}; {repeats} repetitions")
    print(f"copy bandwidth {bandwidth / 1e9:.1f} GB/s ({COPY_METHOD})")
    for note in notes:
        print(note)
    records, run_notes = run(shapes, list(DTYPES), repeats, names, bandwidth)
    print(format_table(records))
    for note in run_notes:
        print(f"note: {note}")
    written = [r for r in records if r["mode"] in MODES]
    if args.json:
        with open(args.json, "w") as f:
            result = {
                "device": device,
                "copy_bandwidth_gbps": bandwidth / 1e9,
                "copy_bandwidth_method": COPY_METHOD,
                "passes": {mode: PASSES[mode] for mode in MODES},
                "versions": versions,
                "repeats": repeats,
                "records": written,
            }
            json.dump(result, f, indent=1)
    if args.plot:
        plot_records(written, args.plot)
    return 0
