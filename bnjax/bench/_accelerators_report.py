"""The accelerator records as tables and a plot: compiled-program figures, not timings."""

from typing import Dict, List, Optional

from ._compiled import COMMON_PATH, LAYER_FLOOR
from ._model_report import COLORS, ORDER
from ._report import Panel, Style, Table, impls_in, number, plot_panels, tables

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


def _on_tpu(record: Dict) -> bool:
    return record["seconds"] is not None


def _tables(specs, records: List[Dict], keys) -> List[str]:
    return tables(specs, records, keys, impls_in(records, _ORDER, others=True), spaced=True)


def _layer_tables(records: List[Dict]) -> List[str]:
    shape = "×".join(map(str, records[0]["shape"]))
    floor = ", ".join(f"{mode} {passes}" for mode, passes in LAYER_FLOOR.items())
    specs = (
        Table(
            f"layer, x {shape}: HBM bytes / |x| (floor: {floor})",
            lambda r: f"{r['bytes_per_x']:.2f}",
        ),
        Table("layer: HBM bytes / flax.linen's", lambda r: number(r["bytes_vs_flax"], ".2f")),
        Table("layer: kernels", lambda r: str(r["kernels"])),
        Table("layer: temporary memory / |x|", lambda r: f"{r['temp_per_x']:.3f}"),
        Table(
            "layer: TPU cost-model time, µs",
            lambda r: f"{r['seconds'] * 1e6:.1f}",
            where=_on_tpu,
        ),
    )
    return _tables(specs, records, ("target", "dtype", "mode"))


def _step_tables(records: List[Dict]) -> List[str]:
    specs = (
        Table(
            "training step: HBM bytes, MB (H200: non-convolution)",
            lambda r: f"{r['bytes'] / 1e6:.1f}",
        ),
        Table(
            "training step: HBM bytes with the convolutions', MB",
            lambda r: f"{r['bytes_total'] / 1e6:.1f}",
            where=lambda r: r["bytes_total"] != r["bytes"],
        ),
        Table(
            "training step: HBM bytes / flax.linen's", lambda r: number(r["bytes_vs_flax"], ".2f")
        ),
        Table(
            "training step: HBM bytes / the floor's (no normalization)",
            lambda r: number(r["bytes_vs_floor"], ".2f"),
        ),
        Table("training step: kernels", lambda r: str(r["kernels"])),
        Table("training step: temporary memory, MiB", lambda r: f"{r['temp'] / 2**20:.1f}"),
        Table(
            "training step: temporary memory / flax.linen's",
            lambda r: number(r["temp_vs_flax"], ".2f"),
        ),
        Table(
            "training step: TPU cost-model time, µs",
            lambda r: f"{r['seconds'] * 1e6:.0f}",
            where=_on_tpu,
        ),
        Table(
            "training step: TPU cost-model time / flax.linen's",
            lambda r: number(r["seconds_vs_flax"], ".2f"),
            where=_on_tpu,
        ),
    )
    return _tables(specs, records, ("target", "network", "dtype"))


def _scaleout_tables(records: List[Dict]) -> List[str]:
    network, per_device = records[0]["network"], records[0]["batch"] // records[0]["devices"]
    specs = (
        Table(
            f"scale-out, {network} data parallel ({per_device} examples a device): collectives "
            "per step",
            lambda r: str(r["collective_count"]),
        ),
        Table(
            "scale-out: collective bytes per device and step, KiB",
            lambda r: f"{r['collective_bytes'] / 2**10:.1f}",
        ),
        Table(
            "scale-out: collectives by kind (AR all-reduce, AG all-gather, RS reduce-scatter, "
            "A2A all-to-all, CP collective-permute)",
            lambda r: (
                " ".join(
                    f"{_SHORT.get(k, k)}{v['count']}" for k, v in sorted(r["collectives"].items())
                )
                or "0"
            ),
        ),
    )
    return _tables(specs, records, ("target", "topology", "dtype"))


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
        panels.append(
            Panel(
                list(dict.fromkeys((r["target"], r["dtype"], r["mode"]) for r in layer)),
                impls_in(layer, _ORDER, others=True),
                lambda g, n, by=by: (by.get((*g, n)) or {}).get("bytes_vs_floor"),
                "HBM bytes / floor",
                "layer: HBM bytes over the pass floor (1: at the floor; compiled, not timed)",
            )
        )
    if step:
        by = {(r["target"], r["network"], r["dtype"], r["impl"]): r for r in step}
        groups = list(dict.fromkeys((r["target"], r["network"], r["dtype"]) for r in step))
        names = [n for n in impls_in(step, _ORDER, others=True) if n != "flax.linen"]
        for key, label in (
            ("bytes_vs_flax", "HBM bytes (H200: non-convolution)"),
            ("temp_vs_flax", "temporary memory"),
        ):
            panels.append(
                Panel(
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
                Panel(
                    tpu,
                    names,
                    lambda g, n, by=by: (by.get((*g, n)) or {}).get("seconds_vs_flax"),
                    "TPU cost-model time / flax.linen's",
                    "training step on TPU v5e: the compiler's cost-model time over flax.linen's",
                )
            )
    width = max(8.0, 0.9 * max((len(p.groups) for p in panels), default=1) + 2)
    figure = Figure(figsize=(width, 3.0 * max(len(panels), 1)), layout="constrained")
    bars = {name: {"color": color} for name, color in COLORS.items()}
    bars[COMMON_PATH] = {"color": "0.3", "hatch": "//"}  # bnjax's own program, as a variant
    style = Style(bars, ylabel_size=8, title_size=9, group_size=6)
    plot_panels(panels, style, figure, path)
    return figure
