"""The accelerator mode: every case compiled for every target, as records with ratios.

The cases are the layer (forward, forward+backward) of every JAX peer, the
training step of every network with every framework and the
no-normalization floor, and the data-parallel step on multi-device
topologies. Each record holds the compiled program's figures
(``_targets.figures``) and its ratios against flax.linen's program for the
same case (and, for the training step, against the floor's).
"""

import dataclasses
import functools
import os
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ._compiled import (
    COMMON_PATH,
    LAYER_FLOOR,
    LAYER_MODES,
    LAYER_PEERS,
    REFERENCE,
    STEP_NETWORKS,
    lower_layer,
    lower_scaleout,
    lower_step,
    on_common_path,
)
from ._loading import failure_notes, note_failure
from ._model import FLOOR
from ._progress import progress
from ._targets import TARGETS

SCALEOUT_IMPLS = ("bnjax", REFERENCE)
SCALEOUT_NETWORK = "resnet8"
RATIO_KEYS = ("bytes", "bytes_total", "kernels", "temp", "seconds")


def _ratio(numerator, denominator) -> Optional[float]:
    if numerator is None or denominator is None:
        return None
    if denominator == 0:
        return 1.0 if numerator == 0 else None  # 0 / 0: the same; x / 0: no ratio
    return numerator / denominator


def add_ratios(records: List[Dict], config: Callable, reference: str, suffix: str, keys) -> None:
    """Adds ``<key>_vs_<suffix>``: each record's figure over the reference's for its config."""
    by_config = {config(r): r for r in records if r["impl"] == reference}
    for record in records:
        other = by_config.get(config(record))
        for key in keys:
            value = None if other is None else _ratio(record.get(key), other.get(key))
            record[f"{key}_vs_{suffix}"] = value


@dataclasses.dataclass
class _Case:
    """One program to compile: its record's identifying fields and how to lower it."""

    kind: str  # "layer", "step" or "scaleout"
    fields: Dict[str, Any]
    lower: Callable[[], Tuple[Any, Callable]]  # () -> (lowered, finish)


def _cases(targets, impls, dtypes, layer_shape, networks, batch, topologies) -> List[_Case]:
    """Every case, in the order of the tables."""
    from ._model import MODEL_IMPLS

    cases = []
    for target in targets:
        for dtype in dtypes if layer_shape else ():
            for mode in LAYER_MODES:
                for impl in (n for n in impls if n in LAYER_PEERS):
                    fields = {
                        "target": target,
                        "shape": list(layer_shape),
                        "dtype": dtype,
                        "mode": mode,
                        "impl": impl,
                        "floor_per_x": LAYER_FLOOR[mode],
                    }
                    lower = functools.partial(lower_layer, target, impl, dtype, mode, layer_shape)
                    cases.append(_Case("layer", fields, lower))
                    cases += _common_path_case(target, impl, "layer", fields, lower)
    step_impls = list(dict.fromkeys([*(n for n in impls if n in MODEL_IMPLS), FLOOR]))
    for target in targets:
        for network in (n for n in networks if target in STEP_NETWORKS[n].targets):
            for dtype in dtypes:
                for impl in step_impls:
                    fields = {
                        "target": target,
                        "network": network,
                        "dtype": dtype,
                        "impl": impl,
                        "batch": batch or STEP_NETWORKS[network].batch,
                    }
                    lower = functools.partial(lower_step, target, impl, dtype, network, batch)
                    cases.append(_Case("step", fields, lower))
                    cases += _common_path_case(target, impl, "step", fields, lower)
    for target in targets:
        for topology in topologies(target):
            for impl in (n for n in SCALEOUT_IMPLS if n in impls):
                fields = {
                    "target": target,
                    "topology": topology,
                    "network": SCALEOUT_NETWORK,
                    "dtype": "float32",
                    "impl": impl,
                }
                lower = functools.partial(
                    lower_scaleout, target, impl, topology, "float32", SCALEOUT_NETWORK
                )
                cases.append(_Case("scaleout", fields, lower))
                cases += _common_path_case(target, impl, "scaleout", fields, lower)
    return cases


def _common_path_case(target, impl, kind, fields, lower) -> List[_Case]:
    """The case again for bnjax on a TPU, without its statistics' second pass (``common_path``)."""
    if impl != "bnjax" or TARGETS[target].platform != "tpu":
        return []
    common = functools.partial(on_common_path, lower)
    return [_Case(kind, {**fields, "impl": COMMON_PATH}, common)]


def _where(case: _Case) -> str:
    return " ".join(str(v) for k, v in case.fields.items() if k not in ("impl", "floor_per_x"))


def _compile_all(cases: List[_Case], workers: int) -> Tuple[List, Dict]:
    """Lowers each case here, compiles them on ``workers`` threads; failures noted, not fatal.

    XLA compiles without Python's lock, so compilations run side by side; tracing and
    lowering stay on this thread.
    """
    failures: Dict = {}
    results: List = [None] * len(cases)

    def fail(i, error):
        note_failure(failures, cases[i].fields["impl"], error, _where(cases[i]))

    with progress(len(cases), "compiling") as bar, ThreadPoolExecutor(workers) as pool:
        pending = {}
        for i, case in enumerate(cases):
            try:
                lowered, finish = case.lower()
            except Exception as error:  # a peer that does not trace or lower is noted
                fail(i, error)
                bar.update()
                continue
            pending[pool.submit(lowered.compile)] = (i, finish)
        for future in as_completed(pending):
            i, finish = pending[future]
            try:
                results[i] = finish(future.result())
            except Exception as error:  # a peer that does not compile is noted
                fail(i, error)
            bar.update()
    return results, failures


def run_accelerators(
    targets: Sequence[str],
    impls: Sequence[str],
    dtypes: Sequence[str],
    *,
    layer_shape: Optional[Tuple[int, ...]],
    networks: Sequence[str],
    batch: Optional[int] = None,
    scaleout: bool = True,
    quick_scaleout: bool = False,
    workers: Optional[int] = None,
) -> Tuple[Dict[str, Any], List[str]]:
    """Compiles every case for every target and gathers the records.

    Args:
      targets: keys of ``_targets.TARGETS``.
      impls: implementation names (bnjax first); the layer uses those in
        ``LAYER_PEERS``, the training step those in ``MODEL_IMPLS`` plus the
        floor, the scale-out bnjax and flax.linen.
      dtypes: dtype names.
      layer_shape: x's shape for the layer; None: no layer cases.
      networks: keys of ``STEP_NETWORKS`` (none: no training steps).
      batch: the training step's batch; each network's own if None.
      scaleout: whether to compile the sharded step (float32).
      quick_scaleout: only each target's smallest multi-device topology.
      workers: compilations at once (default: the CPU count).

    Returns:
      ``(result, notes)``: ``{"layer": [...], "step": [...], "scaleout": [...]}``
      records, and a note per implementation and error that did not compile.
    """

    def topologies(target):
        return TARGETS[target].scaleout[: 1 if quick_scaleout else None] if scaleout else ()

    cases = _cases(targets, impls, dtypes, layer_shape, networks, batch, topologies)
    results, failures = _compile_all(cases, workers or os.cpu_count() or 1)
    records: Dict[str, List[Dict]] = {"layer": [], "step": [], "scaleout": []}
    for case, found in zip(cases, results, strict=True):
        if found is not None:
            records[case.kind].append({**case.fields, **found})
    for record in records["layer"]:
        record["bytes_vs_floor"] = record["bytes_per_x"] / record["floor_per_x"]
    add_ratios(
        records["layer"],
        lambda r: (r["target"], r["dtype"], r["mode"]),
        REFERENCE,
        "flax",
        RATIO_KEYS,
    )

    def step_config(r):
        return r["target"], r["network"], r["dtype"]

    add_ratios(records["step"], step_config, REFERENCE, "flax", RATIO_KEYS)
    add_ratios(
        records["step"], step_config, FLOOR, "floor", ("bytes", "bytes_total", "temp", "seconds")
    )
    add_ratios(
        records["scaleout"],
        lambda r: (r["target"], r["topology"], r["dtype"]),
        REFERENCE,
        "flax",
        ("collective_count", "collective_bytes", "bytes", "temp", "seconds"),
    )
    kept = {"layer": bool(layer_shape), "step": bool(networks), "scaleout": scaleout}
    return {k: v for k, v in records.items() if kept[k]}, failure_notes(failures, "not compiled on")
