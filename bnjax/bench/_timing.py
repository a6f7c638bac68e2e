"""Timing: the one timing loop, and the layer benchmark timed with it (and a copy of the same x)."""

import random
import statistics
import time
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from ._layer_report import ratios, record_config
from ._loading import failure_notes, note_failure
from ._modes import PASSES
from ._progress import progress
from ._registry import IMPLS

Key = TypeVar("Key", bound=Hashable)  # what a timed call is known by
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
COPY = ("copy", "copy")  # the reference call, timed among the implementations' calls
COPY_PASSES = 2  # x + 1 reads x and writes a new array of its size
COPY_METHOD = (
    "jit(x + 1) on each configuration's own x, timed interleaved with the implementations, "
    "2 passes of x / median time"
)


def bandwidth_fractions(
    medians_ms: Dict[Tuple[str, str], float], copy_ms: float, nbytes: int
) -> Tuple[Dict[Tuple[str, str], float], float, Optional[Tuple[str, str]]]:
    """Each call's share of the fastest rate at which this configuration's bytes moved.

    A call's rate is the bytes batch norm must move in its mode (``PASSES``
    passes over x's ``nbytes``) over its median time; the copy's, 2 passes
    over its median time, on the same x, in the same interleaved
    repetitions (same sizes, caches and load). The reference is the highest
    of these rates: a call that beats the copy (x staying in cache between
    its passes) becomes the reference, so no fraction exceeds 1.

    Args:
      medians_ms: ``(impl, mode) -> median milliseconds``.
      copy_ms: the copy's median milliseconds.
      nbytes: x's bytes.

    Returns:
      ``(fractions, reference_bytes_per_second, faster)``: fractions by
      ``(impl, mode)``; ``faster`` is the call that set the reference, or
      None when the copy did.

    Examples:
      >>> fractions, reference, faster = bandwidth_fractions(
      ...     {("a", "eval"): 2.0, ("a", "fwd"): 2.0}, copy_ms=1.0, nbytes=10**6)
      >>> fractions, reference, faster
      ({('a', 'eval'): 0.5, ('a', 'fwd'): 0.75}, 2000000000.0, None)
      >>> bandwidth_fractions({("a", "fwd"): 1.0}, copy_ms=1.0, nbytes=10**6)[::2]
      ({('a', 'fwd'): 1.0}, ('a', 'fwd'))
    """
    rates = {key: PASSES[key[1]] * nbytes / (ms / 1e3) for key, ms in medians_ms.items()}
    reference, faster = COPY_PASSES * nbytes / (copy_ms / 1e3), None
    for key, rate in rates.items():
        if rate > reference:
            reference, faster = rate, key
    return {key: rate / reference for key, rate in rates.items()}, reference, faster


def time_once(fn) -> float:
    """Milliseconds one call of ``fn`` takes, to its results being ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) * 1e3


def interleaved_medians(calls: Dict[Key, Callable], repeats: int, bar) -> Dict[Key, float]:
    """The median milliseconds of each call, timed in interleaved repetitions.

    Each repetition runs every call once, in a new random order (seeded, the
    same from run to run): what ran just before a call, and what it left in
    cache, varies.

    Args:
      calls: what to time, by key; each returns arrays to wait for.
      repeats: the repetitions.
      bar: a progress bar, updated once a repetition.

    Returns:
      ``key -> median milliseconds``, in the order of ``calls``.
    """
    times = {key: [] for key in calls}
    order, rng = list(calls), random.Random(0)
    for _ in range(repeats):
        rng.shuffle(order)
        for key in order:
            times[key].append(time_once(calls[key]))
        bar.update()
    return {key: statistics.median(samples) for key, samples in times.items()}


def _inputs(shape, dtype_name: str) -> Tuple[jax.Array, jax.Array]:
    """The input (mean 3, std 2) and a standard normal cotangent, in ``dtype_name``.

    Drawn with NumPy: ``jax.random`` would compile a sampler for every shape.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, shape).astype(np.float32)
    cotangent = rng.normal(0.0, 1.0, shape).astype(np.float32)
    dtype = DTYPES[dtype_name]
    return jnp.asarray(x.astype(dtype)), jnp.asarray(cotangent.astype(dtype))


def _warm_calls(name: str, shape, dtype_name: str, x, cotangent, failures: Dict):
    """Builds and warms up one implementation's calls on one configuration.

    Errors are recorded in ``failures`` ((name, error) -> configurations) and
    leave the failing mode (or, if building failed, every mode) out.

    Returns:
      ``(calls, saved_bytes_ratio)``; calls is empty if building failed.
    """

    def note(error, where):
        note_failure(failures, name, error, f"{list(shape)} {dtype_name}{where}")

    try:
        calls, saved = IMPLS[name].timed(x, cotangent)
    except Exception as error:  # a peer that fails is noted, never fatal
        note(error, "")
        return {}, None
    warm = {}
    for mode, call in calls.items():
        try:
            jax.block_until_ready(call())  # compile and warm up
        except Exception as error:
            note(error, f" {mode}")
            continue
        warm[mode] = call
    return warm, saved


def _run_config(shape, dtype_name, repeats, names, failures, notes, bar) -> List[Dict]:
    """Times every implementation and the copy on one shape and dtype; returns the records."""
    x, cotangent = _inputs(shape, dtype_name)
    calls, saved = {}, {}
    for name in names:
        warm, saved[name] = _warm_calls(name, shape, dtype_name, x, cotangent, failures)
        calls.update({(name, mode): call for mode, call in warm.items()})
        bar.update()
    copy = jax.jit(lambda x: x + 1)
    jax.block_until_ready(copy(x))  # compile and warm up
    calls[COPY] = lambda: copy(x)
    medians = interleaved_medians(calls, repeats, bar)
    copy_ms = medians.pop(COPY)
    fractions, reference, faster = bandwidth_fractions(medians, copy_ms, x.nbytes)
    copy_gbps = COPY_PASSES * x.nbytes / (copy_ms / 1e3) / 1e9
    if faster is not None:
        notes.append(
            f"{list(shape)} {dtype_name}: {faster[0]} {faster[1]} moved its {PASSES[faster[1]]} "
            f"passes of x at {reference / 1e9:.1f} GB/s, faster than the copy of the same x "
            f"({copy_gbps:.1f} GB/s): the fractions there are of that rate"
        )
    return [
        {
            "impl": name,
            "shape": list(shape),
            "dtype": dtype_name,
            "mode": mode,
            "median_ms": median_ms,
            "copy_gbps": copy_gbps,
            "bandwidth_fraction": fractions[(name, mode)],
            "saved_bytes_ratio": saved[name],
        }
        for (name, mode), median_ms in medians.items()
    ]


def run(shapes, dtypes, repeats: int, names: Sequence[str]):
    """Times the implementations, and a copy of the same x, on every shape and dtype.

    Args:
      shapes: input shapes, NHWC or (batch, features).
      dtypes: keys of ``DTYPES``.
      repeats: timed repetitions of each call, interleaved.
      names: the implementations to time (available ones, keys of ``IMPLS``).

    Returns:
      ``(records, notes)``: one record per implementation, shape, dtype and
      mode that ran (with ``ratio_vs_bnjax``, ``copy_gbps`` and
      ``bandwidth_fraction``, see ``bandwidth_fractions``), and a note per
      error and per configuration where an implementation outran the copy.
    """
    records, failures, bandwidth_notes = [], {}, []
    with progress(len(shapes) * len(dtypes) * (len(names) + repeats), "layers") as bar:
        for shape in shapes:
            for dtype_name in dtypes:
                records += _run_config(
                    shape, dtype_name, repeats, names, failures, bandwidth_notes, bar
                )
    table = ratios(records)
    for record in records:
        record["ratio_vs_bnjax"] = table.get(record_config(record), {}).get(record["impl"])
    return records, failure_notes(failures, "nothing recorded on") + bandwidth_notes
