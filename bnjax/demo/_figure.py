"""Figure 1's three panels drawn from the two runs' results (or a loaded results.json)."""

import math
from typing import Any, Dict, List, Optional, Sequence

from ._experiment import PERCENTILES, RUNS, ExperimentConfig

LABELS = {"baseline": "without BN", "bn": "with BN"}
COLORS = {"baseline": "C0", "bn": "C1"}  # one colour per network, solid lines in every panel


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
