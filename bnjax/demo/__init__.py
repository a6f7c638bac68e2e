"""python -m bnjax.demo: Ioffe & Szegedy (2015), Figure 1, reproduced.

Trains the paper's network (3 fully connected hidden layers of 100 sigmoid
units, mini-batches of 60, plain SGD, small Gaussian initial weights) with and
without batch norm from the same initialization, then writes

  DIR/results.json  {"bn": ..., "baseline": ...}, each with "step",
                    "test_accuracy", "percentiles" ("15", "50", "85": the
                    input to one sigmoid of the last hidden layer over the
                    test set) and "train_loss", plus "config" (the settings
                    both runs share) and "data"; strict JSON: a value that
                    does not exist (the loss before the first step) or is
                    not finite is null
  DIR/figure1.png   (a) test accuracy, (b) and (c) the percentiles without
                    and with batch norm

and prints a short table. The data is scikit-learn's handwritten digits
(ships offline), or MNIST with --mnist DIR pointing at its IDX files.
The time grows with --steps (each network trains that many steps) and
depends on the CPU and what else runs on it: with the defaults, about 30 s on
2 idle cores, about 50 s on the same cores under a load of 6, each run's
first record including a few seconds of compilation.
Needs the demo extra (optax, scikit-learn, matplotlib): in a checkout,
pip install -e ".[demo]"; where bnjax came from a wheel file,
pip install "path/to/the.whl[demo]".
"""

import argparse
import importlib.util
import json
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from .._extras import install_command
from ._data import Dataset, load_digits, load_mnist, read_idx
from ._experiment import PERCENTILES, ExperimentConfig, check_config, run_experiment

__all__ = [
    "Dataset",
    "ExperimentConfig",
    "accuracy_floor",
    "check_config",
    "figure1",
    "format_table",
    "load_digits",
    "load_mnist",
    "main",
    "missing_requirements",
    "plot_figure1",
    "read_idx",
    "run_experiment",
    "strict_json",
]

RUNS = {"baseline": False, "bn": True}  # results.json key → batch_norm
LABELS = {"baseline": "without BN", "bn": "with BN"}
COLORS = {"baseline": "C0", "bn": "C1"}  # one colour per network, solid lines in every panel
# The demo extra, import name → distribution (optax comes with flax, but only the demo uses it).
REQUIREMENTS = {"optax": "optax", "sklearn": "scikit-learn", "matplotlib": "matplotlib"}


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


def accuracy_floor(results: Dict[str, Dict]) -> float:
    """The lower limit of panel (a)'s inset: the accuracy range where the two curves end up.

    The lowest accuracy either network records in the second half of training,
    less at least 0.05 and at least 60% of its distance to 1 (room for the curves
    to enter from below and for the gap between them), rounded down to a
    multiple of 0.05, and at least 0.

    Examples:
      >>> late = {"step": [0, 50, 100], "test_accuracy": [0.1, 0.95, 0.96]}
      >>> accuracy_floor({"baseline": late, "bn": {**late, "test_accuracy": [0.1, 0.97, 0.99]}})
      0.9
      >>> accuracy_floor({"baseline": {"step": [0, 5], "test_accuracy": [0.1, 0.2]}})
      0.0
    """
    lowest = 1.0
    for name in RUNS:
        if name not in results:
            continue
        steps, accuracy = results[name]["step"], results[name]["test_accuracy"]
        late = [a for s, a in zip(steps, accuracy, strict=True) if s >= steps[-1] / 2]
        lowest = min([lowest, *(a for a in late if a is not None and math.isfinite(a))])
    floor = lowest - max(0.05, 0.6 * (1.0 - lowest))
    return max(0.0, round(math.floor(round(floor / 0.05, 6)) * 0.05, 2))


def _caption(zoomed: bool, momentum: Any) -> str:
    """What the lines are, and why (c) starts where (b) does."""
    accuracy = "the inset zooms in on where the curves end; " if zoomed else ""
    return (
        f"(a) {accuracy}(b, c) the 15th, 50th (thick) and 85th percentiles over the test set. "
        "Evaluation uses batch norm's running statistics, which start at mean 0 and variance 1:"
        "\nat step 0 batch norm only divides by √(1 + ε), so (c)'s first point is (b)'s; the "
        f"running averages then follow the batches (momentum {momentum}: within a few hundred "
        "steps)."
    )


def plot_figure1(results: Dict[str, Any], path: Optional[str] = None):
    """Draws the three panels of Figure 1; saves a PNG when ``path`` is given.

    Panel (a) shows the test accuracy from 0 to 1, so that both curves'
    starts show, and an inset zooms on where they end (from
    :func:`accuracy_floor` to 1; no inset where that is 0). Panels (b) and
    (c) show the 15th, 50th (thick) and 85th percentiles of the followed
    unit's input on one shared scale, each line labelled at its end. One
    legend above the panels names the networks (a colour each, solid lines
    everywhere); a caption under them says what the lines are and why (c)'s
    first point equals (b)'s: the evaluation uses the running statistics,
    which before training are ``init``'s (mean 0, variance 1), so batch norm
    is then the identity up to 1/√(1 + ε).

    Args:
      results: ``{"baseline": result, "bn": result}`` from :func:`figure1`, or a
        loaded ``results.json``; its optional ``"data"`` (the data set's name)
        and ``"config"`` (``activation``, ``momentum``) go into the titles
        and the caption.
      path: where to write the PNG, or None.

    Returns:
      The matplotlib figure.

    Examples:
      >>> run = {"step": [0, 5], "test_accuracy": [0.1, 0.9],
      ...        "percentiles": {"15": [-1.0, -2.0], "50": [0.0, 0.0], "85": [1.0, 2.0]}}
      >>> fig = plot_figure1({"baseline": run, "bn": run, "data": "digits"})
      >>> len(fig.axes), len(fig.axes[0].child_axes), fig.get_suptitle()  # (a) has an inset
      (3, 1, 'Figure 1 of Ioffe & Szegedy (2015) reproduced on digits')
    """
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    config = results.get("config") or {}
    activation = config.get("activation", "sigmoid")
    fig = Figure(figsize=(13, 4.9), layout="constrained")
    axes = fig.subplots(1, 3)
    title = "Figure 1 of Ioffe & Szegedy (2015) reproduced"
    if results.get("data"):
        title += f" on {results['data']}"
    fig.suptitle(title)
    floor = accuracy_floor(results)
    _plot_accuracy(axes[0], results, floor)
    bounds = [
        v
        for name in RUNS
        for p in ("15", "85")
        for v in _floats(results[name]["percentiles"][p])
        if math.isfinite(v)
    ] or [0.0]
    margin = 0.1 * (max(bounds) - min(bounds)) + 1e-3
    for ax, name, letter in ((axes[1], "baseline", "b"), (axes[2], "bn", "c")):
        run = results[name]
        for p in PERCENTILES:
            values = _floats(run["percentiles"][str(p)])
            ax.plot(run["step"], values, color=COLORS[name], lw=2.0 if p == 50 else 1.0)
            if values and math.isfinite(values[-1]):  # the line's name at its end
                ax.annotate(
                    f"{p}th",
                    xy=(1, values[-1]),
                    xycoords=("axes fraction", "data"),
                    xytext=(3, 0),
                    textcoords="offset points",
                    va="center",
                    fontsize=8,
                    color=COLORS[name],
                )
        ax.set(
            title=f"({letter}) {LABELS[name]}: 15th, 50th, 85th percentiles",
            ylabel=f"input to one {activation} (last hidden layer)",
            ylim=(min(bounds) - margin, max(bounds) + margin),
        )
    for ax in axes:
        ax.set_xlabel("training steps")
        ax.grid(alpha=0.3)
    handles = [axes[0].lines[i] for i in range(len(RUNS))]
    fig.legend(handles, [LABELS[n] for n in RUNS], loc="outside upper right", ncols=2)
    momentum = config.get("momentum", ExperimentConfig().momentum)
    fig.supxlabel(_caption(floor > 0, momentum), fontsize=8)
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


def _plot_accuracy(ax, results: Dict[str, Any], floor: float) -> None:
    """Panel (a): the accuracy from 0 to 1 and, where ``floor`` > 0, an inset from it to 1."""
    inset = ax.inset_axes((0.3, 0.1, 0.66, 0.55)) if floor > 0 else None
    for target in (ax, inset) if inset is not None else (ax,):
        for name in RUNS:
            run = results[name]
            target.plot(run["step"], _floats(run["test_accuracy"]), color=COLORS[name])
    ax.set(title="(a) test accuracy", ylabel="test accuracy", ylim=(0, 1))
    if inset is not None:
        inset.set(ylim=(floor, 1), xlim=ax.get_xlim())
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3)
        ax.indicate_inset_zoom(inset, edgecolor="0.5")


def _floats(values: Sequence[Optional[float]]) -> List[float]:
    """The values as floats, with NaN where results.json holds null."""
    return [math.nan if v is None else float(v) for v in values]


def strict_json(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None (JSON null).

    Python's json module writes NaN and Infinity as bare words that strict
    parsers (JavaScript, ``json.loads(..., parse_constant=...)``) reject.

    Examples:
      >>> strict_json({"train_loss": [float("nan"), 2.3], "x": (float("inf"), 1)})
      {'train_loss': [None, 2.3], 'x': [None, 1]}
    """
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


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
        description=__doc__,  # plain text, printed as written
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
