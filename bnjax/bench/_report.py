"""The records as tables, a summary and a plot of the ratios peer / bnjax."""

import statistics
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from ._modes import ALL_MODES, BACKWARD_PASSES, EVAL_PASSES, FORWARD_PASSES, MODES
from ._registry import IMPLS

RATIO_TICKS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 7, 10, 20, 50)
MAX_RATIO_TICKS = 10  # labels at least 1/10 of the axis apart: 7-point labels never touch


def ratio_ticks(low: float, high: float, count: int = MAX_RATIO_TICKS) -> List[float]:
    """The ``RATIO_TICKS`` shown on a log axis from ``low`` to ``high``, apart enough to read.

    1 (or the tick nearest to it), then, going outwards, every candidate at
    least 1/``count`` of the axis (in log) from the tick before it: the
    crowded 0.9, 1, 1.1 become 1 alone on a wide axis.

    Examples:
      >>> ratio_ticks(0.7, 3.5)
      [0.8, 1, 1.25, 1.5, 2, 3]
      >>> ratio_ticks(0.95, 1.3)
      [1, 1.1, 1.25]
      >>> ratio_ticks(0.1, 50)
      [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50]
    """
    low, high = sorted((low, high))
    if not 0 < low < high:
        return [t for t in RATIO_TICKS if low <= t <= high]
    gap = np.log10(high / low) / count
    inside = [t for t in RATIO_TICKS if low <= t <= high]
    if not inside:
        return []
    anchor = min(inside, key=lambda t: abs(np.log10(t)))  # 1, or the tick nearest to it
    shown = [anchor]
    for side in ([t for t in inside if t > anchor], [t for t in reversed(inside) if t < anchor]):
        last = anchor
        for tick in side:
            if abs(np.log10(tick / last)) >= gap - 1e-12:
                shown.append(tick)
                last = tick
    return sorted(shown)


def ratio_axis(ax) -> None:
    """A log y axis for ratios: ticks from ``ratio_ticks`` for its final limits, plain labels."""
    from matplotlib.ticker import FuncFormatter, Locator, NullLocator

    class RatioLocator(Locator):
        def __call__(self):
            assert self.axis is not None
            return self.tick_values(*self.axis.get_view_interval())

        def tick_values(self, vmin, vmax):
            return ratio_ticks(vmin, vmax)

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(RatioLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.tick_params(axis="y", labelsize=7)


def record_config(record: Dict) -> Tuple[str, str, str]:
    """A record's configuration: (shape, dtype, mode)."""
    return str(record["shape"]), record["dtype"], record["mode"]


def ratios(records: List[Dict]) -> Dict[Tuple[str, str, str], Dict[str, float]]:
    """Peer median / bnjax median per (shape, dtype, mode), for configurations bnjax ran."""
    reference = {record_config(r): r["median_ms"] for r in records if r["impl"] == "bnjax"}
    table = {}
    for r in records:
        if record_config(r) in reference:
            table.setdefault(record_config(r), {})[r["impl"]] = (
                r["median_ms"] / reference[record_config(r)]
            )
    return table


def _impls_in(records: List[Dict]) -> List[str]:
    present = {r["impl"] for r in records}
    return [name for name in IMPLS if name in present]


def impl_columns(names, values=None) -> str:
    """A table row's implementation columns, right-aligned: ``names`` themselves, or ``values``.

    Each column is at least 11 characters and two wider than its implementation's
    name, so that no name runs into its neighbour.
    """
    widths = [max(11, len(n) + 2) for n in names]
    return "".join(
        f"{v:>{w}}" for v, w in zip(names if values is None else values, widths, strict=True)
    )


def _grid(title: str, records: List[Dict], names, cell: Callable, modes) -> List[str]:
    """One table: a row per (shape, dtype, mode), a column per implementation."""
    by_key = {(record_config(r), r["impl"]): r for r in records}
    rows = [title, f"{'shape':<20}{'dtype':<10}{'mode':<17}" + impl_columns(names)]
    configs = [c for c in dict.fromkeys(record_config(r) for r in records) if c[2] in modes]
    for config in configs:
        cells = [by_key.get((config, n)) for n in names]
        values = impl_columns(names, [cell(r) if r else "-" for r in cells])
        rows.append(f"{config[0]:<20}{config[1]:<10}{config[2]:<17}{values}")
    return rows


def format_table(records: List[Dict]) -> str:
    """Medians, ratios to bnjax, bandwidth fractions, saved bytes, and a summary."""
    names = _impls_in(records)
    peers = [n for n in names if n != "bnjax"]
    table = ratios(records)
    lines = _grid("median ms", records, names, lambda r: f"{r['median_ms']:.3f}", ALL_MODES)
    lines += _grid(
        "ratio peer / bnjax (> 1: bnjax faster)",
        records,
        peers,
        lambda r: f"{table.get(record_config(r), {}).get(r['impl'], float('nan')):.2f}",
        ALL_MODES,
    )
    lines += _grid(
        f"fraction of copy bandwidth on the same x ({FORWARD_PASSES} passes of x fwd, "
        f"{EVAL_PASSES} eval, {FORWARD_PASSES + BACKWARD_PASSES} fwd+bwd; 100%: the copy's "
        "rate, or a faster implementation's)",
        records,
        names,
        lambda r: "-" if r.get("bandwidth_fraction") is None else f"{r['bandwidth_fraction']:.0%}",
        ALL_MODES,
    )
    lines += _grid(
        "saved for the backward beyond x, fraction of x's bytes",
        records,
        names,
        lambda r: "-" if r.get("saved_bytes_ratio") is None else f"{r['saved_bytes_ratio']:.1%}",
        ("fwd+bwd",),
    )
    return "\n".join(lines + summary(records))


def summary(records: List[Dict]) -> List[str]:
    """Per peer and mode: the median ratio peer / bnjax over shapes and dtypes, min and max."""
    table = ratios(records)
    lines = []
    for peer in (n for n in _impls_in(records) if n != "bnjax"):
        for mode in ALL_MODES:
            values = [v[peer] for c, v in table.items() if c[2] == mode and peer in v]
            if values:
                lines.append(
                    f"median {peer}/bnjax ratio, {mode}: {statistics.median(values):.2f} "
                    f"(min {min(values):.2f}, max {max(values):.2f})"
                )
    return lines


def plot_size(records: List[Dict]) -> Tuple[float, float]:
    """The (width, height) in inches of ``plot_records``'s figure."""
    groups = {(str(r["shape"]), r["dtype"]) for r in records}
    modes = {r["mode"] for r in records if r["mode"] in MODES}
    return max(6.0, 1.1 * len(groups)), 3.2 * len(modes)


def plot_records(records: List[Dict], path: Optional[str] = None, figure=None):
    """Grouped bars of peer time / bnjax time per shape and dtype, one panel per mode.

    Bars start at 1 on a log axis: up where bnjax is faster, down where the
    peer is. Works on the ``"records"`` of a ``--json`` file; imports
    matplotlib lazily and uses no pyplot state, so it runs headless.

    Args:
      records: benchmark records (``impl``, ``shape``, ``dtype``, ``mode``,
        ``median_ms``).
      path: if given, the PNG is written there.
      figure: a matplotlib ``Figure`` (or ``SubFigure``) to draw into; a new
        one if None.

    Returns:
      The figure drawn into.
    """
    from matplotlib.figure import Figure

    table = ratios(records)
    peers = [n for n in _impls_in(records) if n != "bnjax"]
    groups = list(dict.fromkeys((str(r["shape"]), r["dtype"]) for r in records))
    modes = [m for m in MODES if any(c[2] == m for c in table)]
    if figure is None:
        figure = Figure(figsize=plot_size(records), layout="constrained")
    axes = figure.subplots(len(modes), 1, squeeze=False)[:, 0]
    width = 0.8 / max(len(peers), 1)
    for ax, mode in zip(axes, modes, strict=True):
        for i, peer in enumerate(peers):
            values = np.array([table.get((s, d, mode), {}).get(peer, np.nan) for s, d in groups])
            offset = (i - (len(peers) - 1) / 2) * width
            ax.bar(np.arange(len(groups)) + offset, values - 1, width, bottom=1, label=peer)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ratio_axis(ax)
        ax.set_ylabel("peer time / bnjax time")
        ax.set_title(f"{mode} (> 1: bnjax faster)")
        ax.set_xticks(np.arange(len(groups)), [f"{s}\n{d}" for s, d in groups], fontsize=7)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=len(peers), fontsize=7)
    if path:
        figure.savefig(path, dpi=120)
    return figure
