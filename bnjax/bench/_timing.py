"""Timing: the machine's copy bandwidth, and every implementation on every configuration."""

import random
import statistics
import time
from typing import Dict, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from ._loading import error_text
from ._modes import PASSES
from ._progress import progress
from ._registry import IMPLS
from ._report import ratios, record_config

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
COPY_BYTES = 64 << 20  # the array copied to measure bandwidth: well beyond the CPU caches
COPY_METHOD = f"jit(x + 1), x donated, {COPY_BYTES >> 20} MiB float32, 2 * bytes / median time"


def time_once(fn) -> float:
    """Milliseconds one call of ``fn`` takes, to its results being ready."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) * 1e3


def copy_bandwidth(repeats: int, nbytes: int = COPY_BYTES) -> float:
    """The machine's copy bandwidth in bytes per second.

    A jitted ``x + 1`` on a float32 array of ``nbytes`` reads and writes
    ``nbytes`` each: 2·nbytes / median time over ``repeats`` calls. x is
    donated, so XLA writes in place: a fresh output that large is mapped page
    by page by the operating system on every call, which would time page
    faults (about 5 GB/s on the 2-core development machine, against 23 GB/s).
    """
    add_one = jax.jit(lambda x: x + 1, donate_argnums=0)
    x = jax.block_until_ready(add_one(jnp.zeros(nbytes // 4, jnp.float32)))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        x = jax.block_until_ready(add_one(x))
        times.append(time.perf_counter() - start)
    return 2 * x.nbytes / statistics.median(times)


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
        failures.setdefault((name, error_text(error)), []).append(
            f"{list(shape)} {dtype_name}{where}"
        )

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


def _run_config(shape, dtype_name, repeats, names, bandwidth, failures, bar) -> List[Dict]:
    """Times every implementation on one shape and dtype; returns its records."""
    x, cotangent = _inputs(shape, dtype_name)
    calls, saved = {}, {}
    for name in names:
        warm, saved[name] = _warm_calls(name, shape, dtype_name, x, cotangent, failures)
        calls.update({(name, mode): call for mode, call in warm.items()})
        bar.update()
    times = {key: [] for key in calls}
    order, rng = list(calls), random.Random(0)
    for _ in range(repeats):  # interleaved repetitions, each in a new order
        rng.shuffle(order)  # what ran just before (and what it left in cache) varies
        for key in order:
            times[key].append(time_once(calls[key]))
        bar.update()
    records = []
    for (name, mode), samples in times.items():
        median_ms = statistics.median(samples)
        records.append(
            {
                "impl": name,
                "shape": list(shape),
                "dtype": dtype_name,
                "mode": mode,
                "median_ms": median_ms,
                "bandwidth_fraction": PASSES[mode] * x.nbytes / (median_ms / 1e3) / bandwidth,
                "saved_bytes_ratio": saved[name],
            }
        )
    return records


def run(shapes, dtypes, repeats: int, names: Sequence[str], bandwidth: float):
    """Times the implementations on every shape and dtype.

    Args:
      shapes: input shapes, NHWC or (batch, features).
      dtypes: keys of ``DTYPES``.
      repeats: timed repetitions of each call, interleaved.
      names: the implementations to time (available ones, keys of ``IMPLS``).
      bandwidth: the copy bandwidth in bytes per second.

    Returns:
      ``(records, notes)``: one record per implementation, shape, dtype and
      mode that ran (with ``ratio_vs_bnjax``), and a note per error.
    """
    records, failures = [], {}
    with progress(len(shapes) * len(dtypes) * (len(names) + repeats), "layers") as bar:
        for shape in shapes:
            for dtype_name in dtypes:
                records += _run_config(shape, dtype_name, repeats, names, bandwidth, failures, bar)
    table = ratios(records)
    for record in records:
        record["ratio_vs_bnjax"] = table.get(record_config(record), {}).get(record["impl"])
    notes = [
        f"{name}: nothing recorded on {', '.join(configs)}: {error}"
        for (name, error), configs in failures.items()
    ]
    return records, notes
