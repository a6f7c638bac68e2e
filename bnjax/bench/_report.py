"""One report path for every benchmark: tables of records, summary lines and ratio bar plots.

A table has a row per configuration (some fields of a record) and a column
per implementation; a plot panel has a group of bars per configuration, a
bar per implementation, from 1 on a log axis. The layer, training-step and
accelerator reports are lists of ``Table`` and ``Panel`` specifications
drawn by ``tables`` and ``plot_panels``.
"""

import dataclasses
import statistics
from typing import Callable, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

RATIO_TICKS = (0.1, 0.2, 0.3, 0.5, 0.7, 0.8, 0.9, 1, 1.1, 1.25, 1.5, 2, 3, 5, 7, 10, 20, 50)
MAX_RATIO_TICKS = 10  # labels at least 1/10 of the axis apart: 7-point labels never touch


def impls_in(records: List[Dict], order: Collection[str], others: bool = False) -> List[str]:
    """The implementations of ``records`` in ``order``; with ``others``, the rest sorted after."""
    present = {r["impl"] for r in records}
    return [n for n in order if n in present] + (sorted(present - set(order)) if others else [])


def number(value, spec: str) -> str:
    """``value`` formatted with ``spec``, or ``-`` where it is None."""
    return "-" if value is None else format(value, spec)


def impl_columns(names, values=None) -> str:
    """A table row's implementation columns, right-aligned: ``names`` themselves, or ``values``.

    Each column is at least 11 characters and two wider than its implementation's
    name, so that no name runs into its neighbour.
    """
    widths = [max(11, len(n) + 2) for n in names]
    return "".join(
        f"{v:>{w}}" for v, w in zip(names if values is None else values, widths, strict=True)
    )


@dataclasses.dataclass(frozen=True)
class Table:
    """One table of a report.

    Attributes:
      title: the line above it.
      cell: a record's cell text.
      without: implementations left out of its columns.
      where: the records it shows; None: all. A table whose ``where`` keeps
        no record is left out.
    """

    title: str
    cell: Callable[[Dict], str]
    without: Tuple[str, ...] = ()
    where: Optional[Callable[[Dict], bool]] = None


def tables(
    specs: Sequence[Table],
    records: List[Dict],
    keys: Sequence[str],
    names: Sequence[str],
    widths: Optional[Sequence[int]] = None,
    spaced: bool = False,
) -> List[str]:
    """The lines of each table in ``specs``: a row per configuration, a column per implementation.

    Args:
      specs: the tables.
      records: the records, each with ``impl`` and the ``keys``.
      keys: the fields whose values make a configuration, left columns.
      names: the implementation columns, in order.
      widths: the key columns' widths; None: two wider than the longest value.
      spaced: an empty line before each table.

    Returns:
      The lines.
    """
    lines = []
    for spec in specs:
        shown = records if spec.where is None else [r for r in records if spec.where(r)]
        if spec.where is not None and not shown:
            continue
        columns = [n for n in names if n not in spec.without]
        lines += [""] * spaced + _grid(spec.title, shown, keys, columns, spec.cell, widths)
    return lines


def _grid(title, records, keys, names, cell, widths) -> List[str]:
    def config(r):
        return tuple(str(r[k]) for k in keys)

    by_key = {(config(r), r["impl"]): r for r in records}
    if widths is None:  # two wider than the longest value
        widths = [max(len(k), *(len(str(r[k])) for r in records)) + 2 for k in keys]
    rows = [title, "".join(f"{k:<{w}}" for k, w in zip(keys, widths, strict=True))]
    rows[1] += impl_columns(names)
    for values in dict.fromkeys(config(r) for r in records):
        cells = [by_key.get((values, n)) for n in names]
        label = "".join(f"{v:<{w}}" for v, w in zip(values, widths, strict=True))
        rows.append(label + impl_columns(names, [cell(r) if r else "-" for r in cells]))
    return rows


def median_line(what: str, values: Sequence[float]) -> List[str]:
    """A summary line: the median of ``values``, with their min and max; none without values."""
    if not values:
        return []
    median = statistics.median(values)
    return [f"{what}: {median:.2f} (min {min(values):.2f}, max {max(values):.2f})"]


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


@dataclasses.dataclass(frozen=True)
class Panel:
    """One plot panel: grouped bars of ratios from 1 on a log axis.

    Attributes:
      groups: the configurations, a group of bars each (labelled by their
        values, one per line).
      names: the implementations, a bar each in every group.
      value: ``value(group, name)``: the ratio, or None where there is none.
      ylabel: the y axis's label.
      title: the panel's title.
    """

    groups: Sequence[Tuple]
    names: Sequence[str]
    value: Callable[[Tuple, str], Optional[float]]
    ylabel: str
    title: str


@dataclasses.dataclass(frozen=True)
class Style:
    """How a report draws its panels.

    Attributes:
      bars: an implementation's ``ax.bar`` keywords (colour, hatch); none:
        matplotlib's colour cycle.
      ylabel_size, title_size, group_size: font sizes of the y label, the
        title and the group labels.
      legend: a legend beside each panel; otherwise the report draws its own.
    """

    bars: Mapping[str, Dict] = dataclasses.field(default_factory=dict)
    ylabel_size: Union[str, float] = "medium"  # matplotlib's own, as the title's
    title_size: Union[str, float] = "large"
    group_size: Union[str, float] = 7
    legend: bool = True


def plot_panels(panels: Sequence[Panel], style: Style, figure, path: Optional[str] = None):
    """Draws ``panels`` one above the other into ``figure``; writes a PNG at ``path`` if given.

    Returns:
      The panels' axes.
    """
    axes = figure.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    for ax, panel in zip(axes, panels, strict=False):
        _bars(ax, panel, style)
    if path:
        figure.savefig(path, dpi=120)
    return axes


def _bars(ax, panel: Panel, style: Style) -> None:
    groups, names = panel.groups, panel.names
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = np.array([np.nan if (v := panel.value(g, name)) is None else v for g in groups])
        x = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        ax.bar(x, values - 1, width, bottom=1, label=name, **style.bars.get(name, {}))
    ax.axhline(1.0, color="black", linewidth=0.8)
    ratio_axis(ax)
    ax.set_ylabel(panel.ylabel, fontsize=style.ylabel_size)
    ax.set_title(panel.title, fontsize=style.title_size)
    labels = ["\n".join(map(str, g)) for g in groups]
    ax.set_xticks(np.arange(len(groups)), labels, fontsize=style.group_size)
    if style.legend:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
