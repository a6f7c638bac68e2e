"""The training-step benchmark's report: its tables, summary and plot."""

from typing import Dict, List, Optional

from ._model import FLOOR, MODEL_IMPLS
from ._report import Panel, Style, Table, impls_in, median_line, number, plot_panels, tables

ORDER = tuple(MODEL_IMPLS)  # bnjax, the peers, the floor
# The layer plot's colours for the peers (matplotlib's cycle in IMPLS order), bnjax in black.
COLORS = {"bnjax": "black", **{n: f"C{i}" for i, n in enumerate(ORDER[1:-1])}, FLOOR: "C7"}
KEYS = ("network", "dtype")
WIDTHS = (10, 10)


def format_model_table(records: List[Dict]) -> str:
    """Step medians, time ratios, temporary memory and its ratios, and a summary."""
    specs = (
        Table("training step, median ms", lambda r: f"{r['median_ms']:.1f}"),
        Table(
            "training step time, peer / bnjax (> 1: bnjax faster)",
            lambda r: number(r["time_ratio_vs_bnjax"], ".2f"),
            without=("bnjax",),
        ),
        Table("compiled temporary memory, MiB", lambda r: f"{r['temp_bytes'] / 2**20:.2f}"),
        Table(
            "temporary memory, peer / bnjax (> 1: bnjax uses less)",
            lambda r: number(r["memory_ratio_vs_bnjax"], ".2f"),
            without=("bnjax",),
        ),
        Table(
            "temporary memory / the floor's (no normalization; 1: batch norm costs nothing)",
            lambda r: number(r["memory_ratio_vs_floor"], ".2f"),
            without=(FLOOR,),
        ),
    )
    lines = tables(specs, records, KEYS, impls_in(records, ORDER), WIDTHS)
    return "\n".join(lines + model_summary(records))


def model_summary(records: List[Dict]) -> List[str]:
    """Per peer: the median time and memory ratios peer / bnjax over networks and dtypes."""
    lines = []
    for peer in (n for n in impls_in(records, ORDER) if n != "bnjax"):
        for key, what in (("time_ratio_vs_bnjax", "time"), ("memory_ratio_vs_bnjax", "memory")):
            values = [r[key] for r in records if r["impl"] == peer and r[key] is not None]
            lines += median_line(f"training step {what}, median {peer}/bnjax ratio", values)
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

    names = impls_in(records, ORDER)
    groups = list(dict.fromkeys((r["network"], r["dtype"]) for r in records))
    by_key = {(r["network"], r["dtype"], r["impl"]): r for r in records}

    def value(key):
        return lambda group, name: (by_key.get((*group, name)) or {}).get(key)

    panels = (
        Panel(groups, [n for n in names if n != "bnjax"], value("time_ratio_vs_bnjax"),
              "step time / bnjax's", "training step time (> 1: bnjax faster)"),
        Panel(groups, [n for n in names if n != FLOOR], value("memory_ratio_vs_floor"),
              "temp memory / floor's",
              "compiled temporary memory over the no-normalization floor (1: no cost)"),
    )  # fmt: skip
    if figure is None:
        figure = Figure(figsize=(max(7.0, 1.6 * len(groups) + 1.5), 6.4), layout="constrained")
    style = Style({name: {"color": color} for name, color in COLORS.items()}, title_size=9)
    plot_panels(panels, style, figure, path)
    return figure
