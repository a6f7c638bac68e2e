"""The layer benchmark's report: its tables, summary and plot of the ratios peer / bnjax."""

from typing import Dict, List, Optional, Tuple

from ._modes import ALL_MODES, BACKWARD_PASSES, EVAL_PASSES, FORWARD_PASSES, MODES
from ._registry import IMPLS
from ._report import Panel, Style, Table, impls_in, median_line, number, plot_panels, tables

KEYS = ("shape", "dtype", "mode")
WIDTHS = (20, 10, 17)


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


def format_table(records: List[Dict]) -> str:
    """Medians, ratios to bnjax, bandwidth fractions, saved bytes, and a summary."""
    table = ratios(records)
    printed = [r for r in records if r["mode"] in ALL_MODES]
    specs = (
        Table("median ms", lambda r: f"{r['median_ms']:.3f}"),
        Table(
            "ratio peer / bnjax (> 1: bnjax faster)",
            lambda r: f"{table.get(record_config(r), {}).get(r['impl'], float('nan')):.2f}",
            without=("bnjax",),
        ),
        Table(
            f"fraction of copy bandwidth on the same x ({FORWARD_PASSES} passes of x fwd, "
            f"{EVAL_PASSES} eval, {FORWARD_PASSES + BACKWARD_PASSES} fwd+bwd; 100%: the copy's "
            "rate, or a faster implementation's)",
            lambda r: number(r.get("bandwidth_fraction"), ".0%"),
        ),
        Table(
            "saved for the backward beyond x, fraction of x's bytes",
            lambda r: number(r.get("saved_bytes_ratio"), ".1%"),
            where=lambda r: r["mode"] == "fwd+bwd",
        ),
    )
    lines = tables(specs, printed, KEYS, impls_in(records, IMPLS), WIDTHS)
    return "\n".join(lines + summary(records))


def summary(records: List[Dict]) -> List[str]:
    """Per peer and mode: the median ratio peer / bnjax over shapes and dtypes, min and max."""
    table = ratios(records)
    lines = []
    for peer in (n for n in impls_in(records, IMPLS) if n != "bnjax"):
        for mode in ALL_MODES:
            values = [v[peer] for c, v in table.items() if c[2] == mode and peer in v]
            lines += median_line(f"median {peer}/bnjax ratio, {mode}", values)
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
    peers = [n for n in impls_in(records, IMPLS) if n != "bnjax"]
    groups = list(dict.fromkeys((str(r["shape"]), r["dtype"]) for r in records))
    panels = [
        Panel(
            groups,
            peers,
            lambda g, peer, mode=mode: table.get((*g, mode), {}).get(peer),
            "peer time / bnjax time",
            f"{mode} (> 1: bnjax faster)",
        )
        for mode in MODES
        if any(c[2] == mode for c in table)
    ]
    if figure is None:
        figure = Figure(figsize=plot_size(records), layout="constrained")
    axes = plot_panels(panels, Style(legend=False), figure)
    handles, labels = axes[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside upper center", ncols=len(peers), fontsize=7)
    if path:
        figure.savefig(path, dpi=120)
    return figure
