"""``python -m bnjax.bench``: bnjax vs ``flax.linen.BatchNorm``, side by side.

Times training-mode batch norm, forward alone and forward + backward
(``jax.vjp`` then the pullback of a random cotangent), on NHWC convolution
activations and wide dense activations in float32 and bfloat16. Both
implementations run in one process with interleaved repetitions; the table
reports medians and the ratio flax/bnjax (> 1 means bnjax is faster), plus the
bytes each keeps for the backward beyond x.

Usage::

  python -m bnjax.bench [--quick] [--json PATH] [--repeats N]
"""

import argparse
import json
import statistics
import sys
import time
from typing import Callable, Dict, List

import jax
import jax.numpy as jnp

from . import _core

SHAPES_FULL = [(64, 56, 56, 64), (64, 28, 28, 128), (64, 14, 14, 256), (64, 7, 7, 512), (256, 4096)]
SHAPES_QUICK = [(32, 28, 28, 64), (32, 7, 7, 256), (256, 2048)]
MODES = ("fwd", "fwd+bwd")  # the modes written to --json
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def bnjax_forward(x: jax.Array) -> Callable:
    """Jitted training forward of ``bnjax.batch_norm`` over x's last axis."""
    params, state = _core.init(x.shape[-1])

    def forward(x, params):
        return _core.batch_norm(x, params, state, train=True)[0]

    return forward, params


def flax_forward(x: jax.Array) -> Callable:
    """Jitted training forward of ``flax.linen.BatchNorm`` with its defaults."""
    import flax.linen as nn

    module = nn.BatchNorm(use_running_average=False)
    variables = module.init(jax.random.key(0), x)

    def forward(x, params):
        y, _ = module.apply(
            {"params": params, "batch_stats": variables["batch_stats"]},
            x,
            mutable=["batch_stats"],
        )
        return y

    return forward, variables["params"]


IMPLS = {"bnjax": bnjax_forward, "flax.linen": flax_forward}


def _timed_fns(forward, params, x, cotangent):
    """The timed calls: forward alone, and ``jax.vjp`` then the pullback.

    The forward with ``jax.vjp`` is one compiled call that returns the
    residuals (what the backward keeps), the pullback another: what is kept
    for the backward crosses memory, as in a model that does not fit one
    fused program. ``"fwd+bwd (1 jit)"`` fuses both into one program, the
    way a small jitted train step runs; it is printed for information.
    """
    out = jax.eval_shape(forward, x, params)
    cotangent = cotangent.astype(out.dtype)  # Flax returns float32 for bfloat16 input
    fwd = jax.jit(forward)
    vjp = jax.jit(lambda x, params: jax.vjp(forward, x, params)[1])
    pull = jax.jit(lambda pullback, cotangent: pullback(cotangent))

    @jax.jit
    def fused(x, params, cotangent):
        return jax.vjp(forward, x, params)[1](cotangent)

    return {
        "fwd": lambda: fwd(x, params),
        "fwd+bwd": lambda: pull(vjp(x, params), cotangent),
        "fwd+bwd (1 jit)": lambda: fused(x, params, cotangent),
    }


def residual_bytes(forward, params, x) -> int:
    """Bytes kept by ``jax.vjp`` of the jitted forward, beyond x itself."""
    _, pullback = jax.vjp(jax.jit(forward), x, params)
    leaves = [leaf for leaf in jax.tree.leaves(pullback) if hasattr(leaf, "nbytes")]
    return sum(leaf.nbytes for leaf in leaves if leaf is not x)


def _time_once(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return (time.perf_counter() - start) * 1e3


def run(shapes, dtypes, repeats: int) -> List[Dict]:
    """Times every implementation on every shape and dtype; returns records."""
    records = []
    for shape in shapes:
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            key_x, key_c = jax.random.split(jax.random.key(0))
            x = (3.0 + 2.0 * jax.random.normal(key_x, shape, jnp.float32)).astype(dtype)
            cotangent = jax.random.normal(key_c, shape, jnp.float32).astype(dtype)
            fns, saved = {}, {}
            for impl, make in IMPLS.items():
                forward, params = make(x)
                for mode, fn in _timed_fns(forward, params, x, cotangent).items():
                    jax.block_until_ready(fn())  # compile and warm up
                    fns[(impl, mode)] = fn
                saved[impl] = residual_bytes(forward, params, x)
            times = {key: [] for key in fns}
            for _ in range(repeats):  # interleaved repetitions
                for key, fn in fns.items():
                    times[key].append(_time_once(fn))
            for (impl, mode), samples in times.items():
                records.append(
                    {
                        "impl": impl,
                        "shape": list(shape),
                        "dtype": dtype_name,
                        "mode": mode,
                        "median_ms": statistics.median(samples),
                        "saved_bytes_ratio": saved[impl] / x.nbytes,
                    }
                )
    return records


def format_table(records: List[Dict]) -> str:
    """Medians per shape, dtype and mode, with the ratio flax.linen / bnjax."""
    index = {(str(r["shape"]), r["dtype"], r["mode"], r["impl"]): r for r in records}
    lines = [
        f"{'shape':<22}{'dtype':<10}{'mode':<17}{'bnjax ms':>10}{'flax ms':>10}"
        f"{'flax/bnjax':>12}{'saved bnjax':>13}{'saved flax':>12}"
    ]
    ratios = {"fwd": [], "fwd+bwd": [], "fwd+bwd (1 jit)": []}
    for shape, dtype, mode, impl in index:
        if impl != "bnjax":
            continue
        ours, theirs = index[(shape, dtype, mode, impl)], index[(shape, dtype, mode, "flax.linen")]
        ratio = theirs["median_ms"] / ours["median_ms"]
        ratios[mode].append(ratio)
        lines.append(
            f"{shape:<22}{dtype:<10}{mode:<17}{ours['median_ms']:>10.3f}"
            f"{theirs['median_ms']:>10.3f}{ratio:>12.2f}"
            f"{ours['saved_bytes_ratio']:>12.1%}{theirs['saved_bytes_ratio']:>12.0%}"
        )
    for mode, values in ratios.items():
        if values:
            lines.append(
                f"median flax/bnjax ratio, {mode}: {statistics.median(values):.2f} "
                f"(min {min(values):.2f}, max {max(values):.2f})"
            )
    lines.append("saved = bytes kept for the backward beyond x, as a fraction of x's bytes")
    return "\n".join(lines)


def main(argv=None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small shapes, < 1 minute")
    parser.add_argument("--json", metavar="PATH", help="write the records as JSON")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions")
    args = parser.parse_args(argv)
    shapes = SHAPES_QUICK if args.quick else SHAPES_FULL
    repeats = args.repeats or (15 if args.quick else 30)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; {repeats} repetitions")
    records = run(shapes, list(DTYPES), repeats)
    print(format_table(records))
    if args.json:
        with open(args.json, "w") as f:
            written = [r for r in records if r["mode"] in MODES]
            json.dump({"device": jax.devices()[0].device_kind, "records": written}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
