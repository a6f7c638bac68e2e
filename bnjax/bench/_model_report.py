"""The training-step records as tables, a summary and a plot."""

import statistics
from typing import Callable, Dict, List, Optional

import numpy as np

from ._report import impl_columns, ratio_axis

FLOOR = "floor"
ORDER = ("bnjax", "flax.linen", "flax.nnx", "haiku", "equinox", "bnjax.equinox", "keras", FLOOR)
# The layer plot's colours for the peers (matplotlib's cycle in IMPLS order), bnjax in black.
COLORS = {"bnjax": "black", **{n: f"C{i}" for i, n in enumerate(ORDER[1:-1])}, FLOOR: "C7"}


def _impls_in(records: List[Dict]) -> List[str]:
    present = {r["impl"] for r in records}
    return [name for name in ORDER if name in present]


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _grid(title: str, records: List[Dict], names, cell: Callable) -> List[str]:
    """One table: a row per (network, dtype), a column per implementation."""
    by_key = {(r["network"], r["dtype"], r["impl"]): r for r in records}
    rows = [title, f"{'network':<10}{'dtype':<10}" + impl_columns(names)]
    for network, dtype in dict.fromkeys((r["network"], r["dtype"]) for r in records):
        cells = [by_key.get((network, dtype, n)) for n in names]
        rows.append(
            f"{network:<10}{dtype:<10}"
            + impl_columns(names, [cell(r) if r else "-" for r in cells])
        )
    return rows


def format_model_table(records: List[Dict]) -> str:
    """Step medians, time ratios, temporary memory and its ratios, and a summary."""
    names = _impls_in(records)
    peers = [n for n in names if n != "bnjax"]
    lines = _grid("training step, median ms", records, names, lambda r: f"{r['median_ms']:.1f}")
    lines += _grid(
        "training step time, peer / bnjax (> 1: bnjax faster)",
        records,
        peers,
        lambda r: _number(r["time_ratio_vs_bnjax"], ".2f"),
    )
    lines += _grid(
        "compiled temporary memory, MiB",
        records,
        names,
        lambda r: f"{r['temp_bytes'] / 2**20:.2f}",
    )
    lines += _grid(
        "temporary memory, peer / bnjax (> 1: bnjax uses less)",
        records,
        peers,
        lambda r: _number(r["memory_ratio_vs_bnjax"], ".2f"),
    )
    lines += _grid(
        "temporary memory / the floor's (no normalization; 1: batch norm costs nothing)",
        records,
        [n for n in names if n != FLOOR],
        lambda r: _number(r["memory_ratio_vs_floor"], ".2f"),
    )
    return "\n".join(lines + model_summary(records))


def model_summary(records: List[Dict]) -> List[str]:
    """Per peer: the median time and memory ratios peer / bnjax over networks and dtypes."""
    lines = []
    for peer in (n for n in _impls_in(records) if n != "bnjax"):
        for key, what in (("time_ratio_vs_bnjax", "time"), ("memory_ratio_vs_bnjax", "memory")):
            values = [r[key] for r in records if r["impl"] == peer and r[key] is not None]
            if values:
                lines.append(
                    f"training step {what}, median {peer}/bnjax ratio: "
                    f"{statistics.median(values):.2f} "
                    f"(min {min(values):.2f}, max {max(values):.2f})"
                )
    return lines


def plot_model_records(records: List[Dict], path: Optional[str] = None, figure=None):
    """Two panels: step time peer / bnjax, temporary memory / the floor's, per network and dtype.

    Bars start at 1 on a log axis. Works on the ``"model"["records"]`` of a
    ``--json`` file; imports matplotlib lazily and uses no pyplot state.

    Args:
      records: training-step records.
      path: if given, the PNG is written there.
      figure: a matplotlib ``Figure`` (or ``SubFigure``) to draw into; a new
        one if None.

    Returns:
      The figure drawn into.
    """
    from matplotlib.figure import Figure

    names = _impls_in(records)
    groups = list(dict.fromkeys((r["network"], r["dtype"]) for r in records))
    by_key = {(r["network"], r["dtype"], r["impl"]): r for r in records}
    panels = (
        ("time_ratio_vs_bnjax", [n for n in names if n != "bnjax"], "step time / bnjax's",
         "training step time (> 1: bnjax faster)"),
        ("memory_ratio_vs_floor", [n for n in names if n != FLOOR], "temp memory / floor's",
         "compiled temporary memory over the no-normalization floor (1: no cost)"),
    )  # fmt: skip
    if figure is None:
        figure = Figure(figsize=(max(7.0, 1.6 * len(groups) + 1.5), 6.4), layout="constrained")
    axes = figure.subplots(2, 1, squeeze=False)[:, 0]
    for ax, (key, impls, ylabel, title) in zip(axes, panels, strict=True):
        width = 0.8 / max(len(impls), 1)
        for i, name in enumerate(impls):
            values = np.array(
                [
                    np.nan if (r := by_key.get((*g, name))) is None or r[key] is None else r[key]
                    for g in groups
                ]
            )
            offset = (i - (len(impls) - 1) / 2) * width
            color = COLORS[name]  # one colour per implementation in every panel
            x = np.arange(len(groups)) + offset
            ax.bar(x, values - 1, width, bottom=1, label=name, color=color)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ratio_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        ax.set_xticks(np.arange(len(groups)), [f"{n}\n{d}" for n, d in groups], fontsize=7)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if path:
        figure.savefig(path, dpi=120)
    return figure
