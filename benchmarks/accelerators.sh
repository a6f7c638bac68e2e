#!/usr/bin/env bash
# Regenerates the committed accelerator results: every case compiled for an NVIDIA H200 and a
# TPU v5e without either (compiled-program figures, not timings). Needs the test extra's
# compilers (jax-cuda12-plugin, jax-cuda12-pjrt, libtpu); no device. Run from the repository
# root; the figures are deterministic, so a busy machine only makes it slower.
set -euo pipefail
export JAX_PLATFORMS=cpu TF_CPP_MIN_LOG_LEVEL=3  # no device to look for: quiet logs
python -m bnjax.bench --target h200,tpu-v5e --json benchmarks/accelerators.json \
  --plot benchmarks/accelerators.png 2> >(grep -v -e '^WARNING' -e 'libtpu' -e 'TPU_' \
  -e 'Source Location' -e '^===' -e 'cudart_stub' >&2) | tee benchmarks/accelerators.txt
