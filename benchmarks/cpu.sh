#!/usr/bin/env bash
# Regenerates the committed CPU results and the performance notebook. Run from the repository
# root on a quiet machine (nothing else running: the figures are ratios, but noise still shows).
set -euo pipefail
python -m bnjax.bench --model --json benchmarks/cpu_model.json --plot benchmarks/cpu_model.png \
  | tee benchmarks/cpu_model.txt
python -m bnjax.bench --layers --json benchmarks/cpu.json --plot benchmarks/cpu.png \
  | tee benchmarks/cpu.txt
(cd notebooks && BNJAX_NOTEBOOK_SMOKE=0 jupyter execute --inplace 06_performance.ipynb)
