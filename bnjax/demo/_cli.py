"""The command line, ``python -m bnjax.demo``: its flags, the two runs, the files and the table.

What it writes and prints is described in the package docstring, its ``--help``.
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

from .._extras import install_command
from ._data import load_digits, load_mnist
from ._experiment import PERCENTILES, RUNS, ExperimentConfig, figure1
from ._figure import plot_figure1
from ._json import strict_json

# The demo extra, import name → distribution (optax comes with flax, but only the demo uses it).
REQUIREMENTS = {"optax": "optax", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


def format_table(results: Dict[str, Dict], rows: int = 6) -> str:
    """A short text table: test accuracy and percentiles at a few recorded steps.

    Examples:
      >>> run = {"step": [0, 5], "test_accuracy": [0.1, 0.9],
      ...        "percentiles": {"15": [-1.0, -2.0], "50": [0.0, 0.0], "85": [1.0, 2.0]}}
      >>> print(format_table({"baseline": run, "bn": run}, rows=2))
         step acc baseline  acc BN  baseline 15/50/85 %ile        BN 15/50/85 %ile
            0        0.100   0.100     -1.00   0.00   1.00     -1.00   0.00   1.00
            5        0.900   0.900     -2.00   0.00   2.00     -2.00   0.00   2.00
    """
    steps = results["bn"]["step"]
    picks = sorted({round(i * (len(steps) - 1) / max(rows - 1, 1)) for i in range(rows)})
    header = ("step", "acc baseline", "acc BN", "baseline 15/50/85 %ile", "BN 15/50/85 %ile")
    widths = (7, 13, 8, 24, 24)
    lines = ["".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True))]
    for i in picks:
        cells = [str(steps[i])] + [f"{results[n]['test_accuracy'][i]:.3f}" for n in RUNS]
        for name in RUNS:
            cells.append(
                " ".join(f"{results[name]['percentiles'][str(p)][i]:6.2f}" for p in PERCENTILES)
            )
        lines.append("".join(f"{c:>{w}}" for c, w in zip(cells, widths, strict=True)))
    return "\n".join(lines)


def missing_requirements() -> List[str]:
    """The distributions of the demo extra that cannot be imported here (nothing is imported).

    Examples:
      >>> missing_requirements()
      []
    """
    return [
        dist for module, dist in REQUIREMENTS.items() if importlib.util.find_spec(module) is None
    ]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bnjax.demo",
        description=sys.modules[__name__.rpartition(".")[0]].__doc__,  # the package's, as written
        epilog=f"The demo extra, for this copy of bnjax: {install_command('demo')}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = ExperimentConfig()
    parser.add_argument(
        "--steps",
        type=int,
        default=defaults.steps,
        help="SGD steps per network (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="figure1", help="output folder, created (default: %(default)s)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="initialization, mini-batches and the digits train/test split (default: %(default)s)",
    )
    parser.add_argument("--mnist", metavar="DIR", help="read MNIST IDX files from DIR")
    args = parser.parse_args(argv)
    missing = missing_requirements()
    if missing:
        parser.exit(
            2,
            f"python -m bnjax.demo needs {' and '.join(missing)}, not installed here: "
            f"{install_command('demo')}\n",
        )
    if args.steps < 1:
        parser.error(f"--steps must be a positive integer, got {args.steps}")
    if not 0 <= args.seed < 2**32:
        parser.error(f"--seed must be an integer in [0, 2**32), got {args.seed}")
    if args.mnist is not None and not os.path.isdir(args.mnist):
        parser.error(f"--mnist must be a folder holding the MNIST IDX files, got {args.mnist!r}")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out must be a folder (created if missing), got the file {args.out!r}")
    os.makedirs(args.out, exist_ok=True)  # before training: a bad path fails now, not after it
    data = load_mnist(args.mnist) if args.mnist else load_digits(seed=args.seed)
    config = defaults._replace(steps=args.steps, seed=args.seed)
    print(
        f"Figure 1 of Ioffe & Szegedy (2015) on {data.name}: {len(data.train_x)} training and "
        f"{len(data.test_x)} test examples; {config.steps} SGD steps of {config.batch_size}, "
        f"learning rate {config.learning_rate}, hidden {list(config.hidden)} {config.activation}"
    )
    start = time.perf_counter()
    results = figure1(data, config)
    shared = {k: v for k, v in config._asdict().items() if k != "batch_norm"}  # both runs'
    record = strict_json({**results, "config": shared, "data": data.name})
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(record, f, indent=1, allow_nan=False)
    plot_figure1(record, os.path.join(args.out, "figure1.png"))
    print(format_table(results))
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}/results.json and {args.out}/figure1.png in {seconds:.0f} s")
    return 0
