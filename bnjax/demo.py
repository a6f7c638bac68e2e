"""``python -m bnjax.demo``: Ioffe & Szegedy (2015), Figure 1, reproduced.

Trains the paper's network (3 fully connected hidden layers of 100 sigmoid
units, mini-batches of 60, plain SGD, small Gaussian initial weights) with and
without batch norm from the same initialization, then writes

- ``DIR/results.json``: ``{"bn": ..., "baseline": ...}``, each with
  ``"step"``, ``"test_accuracy"``, ``"percentiles"`` (``"15"``, ``"50"``,
  ``"85"``: the input to one sigmoid of the last hidden layer over the test
  set) and ``"train_loss"``, plus ``"config"`` (the settings both runs share)
  and ``"data"``;
- ``DIR/figure1.png``: (a) test accuracy, (b) and (c) the percentiles
  without and with batch norm;

and prints a short table. The data is scikit-learn's handwritten digits
(ships offline), or MNIST with ``--mnist DIR`` pointing at its IDX files.

Usage::

  python -m bnjax.demo [--steps N] [--out DIR] [--seed S] [--mnist DIR]
"""

import argparse
import json
import os
import sys
import time
from typing import Dict, Optional, Sequence

from ._data import Dataset, load_digits, load_mnist, read_idx
from ._experiment import PERCENTILES, ExperimentConfig, check_config, run_experiment

__all__ = [
    "Dataset",
    "ExperimentConfig",
    "check_config",
    "figure1",
    "format_table",
    "load_digits",
    "load_mnist",
    "main",
    "plot_figure1",
    "read_idx",
    "run_experiment",
]

RUNS = {"baseline": False, "bn": True}  # results.json key → batch_norm


def figure1(
    data: Dataset, config: Optional[ExperimentConfig] = None, *, progress: bool = True
) -> Dict[str, Dict]:
    """Runs ``config`` without and with batch norm (same initialization and batches).

    Args:
      data: the train/test split.
      config: settings shared by both runs (default: the paper's); its
        ``batch_norm`` is overridden.
      progress: show tqdm progress bars.

    Returns:
      ``{"baseline": result, "bn": result}`` with results of :func:`run_experiment`.

    Examples:
      >>> config = ExperimentConfig(steps=10, num_records=1, hidden=(8,))
      >>> results = figure1(load_digits(), config, progress=False)
      >>> sorted(results), results["bn"]["step"]
      (['baseline', 'bn'], [0, 10])
    """
    config = config or ExperimentConfig()
    return {
        name: run_experiment(config._replace(batch_norm=bn), data, progress=progress)
        for name, bn in RUNS.items()
    }


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


def plot_figure1(results: Dict[str, Dict], path: Optional[str] = None):
    """Draws the three panels of Figure 1; saves a PNG when ``path`` is given.

    Returns:
      The matplotlib figure.

    Examples:
      >>> run = {"step": [0, 5], "test_accuracy": [0.1, 0.9],
      ...        "percentiles": {"15": [-1.0, -2.0], "50": [0.0, 0.0], "85": [1.0, 2.0]}}
      >>> len(plot_figure1({"baseline": run, "bn": run}).axes)
      3
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    fig = Figure(figsize=(13, 3.8), layout="tight")
    axes = fig.subplots(1, 3)
    labels = {"baseline": "Without BN", "bn": "With BN"}
    for name, style in (("baseline", "--"), ("bn", "-")):
        run = results[name]
        axes[0].plot(run["step"], run["test_accuracy"], style, label=labels[name])
    axes[0].set(title="(a) test accuracy", xlabel="training steps", ylim=(0.0, 1.0))
    axes[0].legend(loc="lower right")
    low = min(min(results[n]["percentiles"]["15"]) for n in RUNS)
    high = max(max(results[n]["percentiles"]["85"]) for n in RUNS)
    margin = 0.1 * (high - low) + 1e-3
    for ax, name, letter in ((axes[1], "baseline", "b"), (axes[2], "bn", "c")):
        run = results[name]
        for p in PERCENTILES:
            ax.plot(run["step"], run["percentiles"][str(p)], "k", lw=1.5 if p == 50 else 0.8)
        ax.set(
            title=f"({letter}) {labels[name]}: sigmoid input, 15/50/85th %ile",
            xlabel="training steps",
            ylim=(low - margin, high + margin),
        )
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m bnjax.demo", description=__doc__.splitlines()[0]
    )
    defaults = ExperimentConfig()
    parser.add_argument("--steps", type=int, default=defaults.steps, help="SGD steps per network")
    parser.add_argument("--out", default="figure1", help="output folder (created)")
    parser.add_argument(
        "--seed",
        type=int,
        default=defaults.seed,
        help="initialization, mini-batches and the digits train/test split",
    )
    parser.add_argument("--mnist", metavar="DIR", help="read MNIST IDX files from DIR")
    args = parser.parse_args(argv)
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
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({**results, "config": shared, "data": data.name}, f, indent=1)
    plot_figure1(results, os.path.join(args.out, "figure1.png"))
    print(format_table(results))
    seconds = time.perf_counter() - start
    print(f"wrote {args.out}/results.json and {args.out}/figure1.png in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
