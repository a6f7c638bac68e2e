"""The accelerator records as tables and a plot: compiled-program figures, not timings."""

from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from ._compiled import COMMON_PATH
from ._model_report import COLORS, ORDER
from ._report import impl_columns, ratio_axis

HEADER = (
    "Compiled programs, not timings on a device: each case is compiled for the target "
    "without one, and the figures are read from the compiled program (HBM bytes from XLA's "
    "cost analysis, kernels from the optimized HLO, temporary memory from its memory analysis, "
    "time from the TPU compiler's cost model). No autotuning happens: convolution and GEMM "
    "choices are not representative, elementwise and reduction fusion is. On the H200, cuDNN "
    "convolutions count as 0 bytes in the cost analysis: training-step bytes are the fusions' "
    "(non-convolution) bytes, bytes_total adds what the convolutions read and write."
)


_SHORT = {
    "all-reduce": "AR",
    "all-gather": "AG",
    "reduce-scatter": "RS",
    "all-to-all": "A2A",
    "collective-permute": "CP",
}


# bnjax's TPU programs without their statistics' rare second pass, beside bnjax's own
_ORDER = (ORDER[0], COMMON_PATH, *ORDER[1:])


def _impls_in(records: List[Dict]) -> List[str]:
    present = {r["impl"] for r in records}
    return [name for name in _ORDER if name in present] + sorted(present - set(_ORDER))


def _number(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _grid(title: str, records: List[Dict], keys: Sequence[str], names, cell: Callable) -> List[str]:
    """One table: a row per configuration (the ``keys`` of a record), a column per impl."""
    by_key = {(tuple(r[k] for k in keys), r["impl"]): r for r in records}
    widths = [max(len(k), *(len(str(r[k])) for r in records)) + 2 for k in keys]
    head = "".join(f"{k:<{w}}" for k, w in zip(keys, widths, strict=True))
    rows = ["", title, head + impl_columns(names)]
    for config in dict.fromkeys(tuple(r[k] for k in keys) for r in records):
        cells = [by_key.get((config, n)) for n in names]
        label = "".join(f"{str(v):<{w}}" for v, w in zip(config, widths, strict=True))
        rows.append(label + impl_columns(names, [cell(r) if r else "-" for r in cells]))
    return rows


def _layer_tables(records: List[Dict]) -> List[str]:
    names = _impls_in(records)
    keys = ("target", "dtype", "mode")
    shape = "×".join(map(str, records[0]["shape"]))
    lines = _grid(
        f"layer, x {shape}: HBM bytes / |x| (floor: fwd 3, fwd+bwd 5)",
        records,
        keys,
        names,
        lambda r: f"{r['bytes_per_x']:.2f}",
    )
    lines += _grid(
        "layer: HBM bytes / flax.linen's",
        records,
        keys,
        names,
        lambda r: _number(r["bytes_vs_flax"], ".2f"),
    )
    lines += _grid("layer: kernels", records, keys, names, lambda r: str(r["kernels"]))
    lines += _grid(
        "layer: temporary memory / |x|", records, keys, names, lambda r: f"{r['temp_per_x']:.3f}"
    )
    tpu = [r for r in records if r["seconds"] is not None]
    if tpu:
        lines += _grid(
            "layer: TPU cost-model time, µs",
            tpu,
            keys,
            names,
            lambda r: f"{r['seconds'] * 1e6:.1f}",
        )
    return lines


def _step_tables(records: List[Dict]) -> List[str]:
    names = _impls_in(records)
    keys = ("target", "network", "dtype")
    lines = _grid(
        "training step: HBM bytes, MB (H200: non-convolution)",
        records,
        keys,
        names,
        lambda r: f"{r['bytes'] / 1e6:.1f}",
    )
    gpu = [r for r in records if r["bytes_total"] != r["bytes"]]
    if gpu:
        lines += _grid(
            "training step: HBM bytes with the convolutions', MB",
            gpu,
            keys,
            names,
            lambda r: f"{r['bytes_total'] / 1e6:.1f}",
        )
    lines += _grid(
        "training step: HBM bytes / flax.linen's",
        records,
        keys,
        names,
        lambda r: _number(r["bytes_vs_flax"], ".2f"),
    )
    lines += _grid(
        "training step: HBM bytes / the floor's (no normalization)",
        records,
        keys,
        names,
        lambda r: _number(r["bytes_vs_floor"], ".2f"),
    )
    lines += _grid("training step: kernels", records, keys, names, lambda r: str(r["kernels"]))
    lines += _grid(
        "training step: temporary memory, MiB",
        records,
        keys,
        names,
        lambda r: f"{r['temp'] / 2**20:.1f}",
    )
    lines += _grid(
        "training step: temporary memory / flax.linen's",
        records,
        keys,
        names,
        lambda r: _number(r["temp_vs_flax"], ".2f"),
    )
    tpu = [r for r in records if r["seconds"] is not None]
    if tpu:
        lines += _grid(
            "training step: TPU cost-model time, µs",
            tpu,
            keys,
            names,
            lambda r: f"{r['seconds'] * 1e6:.0f}",
        )
        lines += _grid(
            "training step: TPU cost-model time / flax.linen's",
            tpu,
            keys,
            names,
            lambda r: _number(r["seconds_vs_flax"], ".2f"),
        )
    return lines


def _scaleout_tables(records: List[Dict]) -> List[str]:
    names = _impls_in(records)
    keys = ("target", "topology", "dtype")
    network, per_device = records[0]["network"], records[0]["batch"] // records[0]["devices"]
    lines = _grid(
        f"scale-out, {network} data parallel ({per_device} examples a device): collectives "
        "per step",
        records,
        keys,
        names,
        lambda r: str(r["collective_count"]),
    )
    lines += _grid(
        "scale-out: collective bytes per device and step, KiB",
        records,
        keys,
        names,
        lambda r: f"{r['collective_bytes'] / 2**10:.1f}",
    )
    lines += _grid(
        "scale-out: collectives by kind (AR all-reduce, AG all-gather, RS reduce-scatter, "
        "A2A all-to-all, CP collective-permute)",
        records,
        keys,
        names,
        lambda r: (
            " ".join(f"{_SHORT.get(k, k)}{v['count']}" for k, v in sorted(r["collectives"].items()))
            or "0"
        ),
    )
    return lines


def format_accelerator_tables(result: Dict) -> str:
    """The layer, training-step and scale-out tables of an accelerator run, whichever ran."""
    lines: List[str] = []
    records = [r for part in ("layer", "step") for r in result.get(part) or []]
    if any(r["impl"] == COMMON_PATH for r in records):
        lines += [
            f"'{COMMON_PATH}': bnjax's TPU program without the rarely taken second pass of",
            "its statistics (run where the running mean is far from the batch mean); the 'bnjax'",
            "column counts that branch as if it ran on every step.",
        ]
    if result.get("layer"):
        lines += _layer_tables(result["layer"])
    if result.get("step"):
        lines += _step_tables(result["step"])
    if result.get("scaleout"):
        lines += _scaleout_tables(result["scaleout"])
    return "\n".join(lines).lstrip("\n")


def _bars(ax, groups, names, value: Callable, ylabel: str, title: str) -> None:
    """Grouped bars from 1 on a log axis, one colour per implementation."""
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        values = np.array([np.nan if (v := value(g, name)) is None else v for g in groups])
        x = np.arange(len(groups)) + (i - (len(names) - 1) / 2) * width
        common = name == COMMON_PATH  # bnjax's own program, drawn as a variant of its bars
        color = "0.3" if common else COLORS.get(name)
        ax.bar(
            x, values - 1, width, bottom=1, label=name, color=color, hatch="//" if common else None
        )
    ax.axhline(1.0, color="black", linewidth=0.8)
    ratio_axis(ax)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.set_xticks(np.arange(len(groups)), ["\n".join(map(str, g)) for g in groups], fontsize=6)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def plot_accelerators(result: Dict, path: Optional[str] = None):
    """Bars of HBM bytes (and TPU time) against flax.linen's, per case and target.

    Panels, whichever ran: the layer's HBM bytes over the pass floor (3|x|
    forward, 5|x| forward+backward); the training step's HBM bytes over
    flax.linen's; its temporary memory over flax.linen's; its TPU cost-model
    time over flax.linen's. Imports matplotlib lazily, no pyplot state.

    Args:
      result: the ``"accelerators"`` part of a ``--json`` file.
      path: if given, the PNG is written there.

    Returns:
      The figure.
    """
    from matplotlib.figure import Figure

    panels = []
    layer, step = result.get("layer") or [], result.get("step") or []
    if layer:
        by = {(r["target"], r["dtype"], r["mode"], r["impl"]): r for r in layer}
        groups = list(dict.fromkeys((r["target"], r["dtype"], r["mode"]) for r in layer))
        panels.append(
            (
                groups,
                _impls_in(layer),
                lambda g, n, by=by: (by.get((*g, n)) or {}).get("bytes_vs_floor"),
                "HBM bytes / floor",
                "layer: HBM bytes over the pass floor (1: at the floor; compiled, not timed)",
            )
        )
    if step:
        by = {(r["target"], r["network"], r["dtype"], r["impl"]): r for r in step}
        groups = list(dict.fromkeys((r["target"], r["network"], r["dtype"]) for r in step))
        names = [n for n in _impls_in(step) if n != "flax.linen"]
        for key, label in (
            ("bytes_vs_flax", "HBM bytes (H200: non-convolution)"),
            ("temp_vs_flax", "temporary memory"),
        ):
            panels.append(
                (
                    groups,
                    names,
                    lambda g, n, k=key, by=by: (by.get((*g, n)) or {}).get(k),
                    f"{label} / flax.linen's",
                    f"training step: {label} over flax.linen's (< 1: less than Flax)",
                )
            )
        tpu = [g for g in groups if (by.get((*g, "flax.linen")) or {}).get("seconds")]
        if tpu:
            panels.append(
                (
                    tpu,
                    names,
                    lambda g, n, by=by: (by.get((*g, n)) or {}).get("seconds_vs_flax"),
                    "TPU cost-model time / flax.linen's",
                    "training step on TPU v5e: the compiler's cost-model time over flax.linen's",
                )
            )
    width = max(8.0, 0.9 * max((len(p[0]) for p in panels), default=1) + 2)
    figure = Figure(figsize=(width, 3.0 * max(len(panels), 1)), layout="constrained")
    axes = figure.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    for ax, (groups, names, value, ylabel, title) in zip(axes, panels, strict=False):
        _bars(ax, groups, names, value, ylabel, title)
    if path:
        figure.savefig(path, dpi=120)
    return figure
