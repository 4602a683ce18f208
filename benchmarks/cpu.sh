#!/usr/bin/env bash
# The CPU benchmarks (about 2 minutes on 2 cores): python -m benchmarks.run --device cpu --threads 1
# One intra-op thread: on a CPU shared with other jobs OpenMP's spin-waiting slows competitors unevenly.
# Extra arguments go to benchmarks.run (a later --threads 2 overrides).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && source .venv/bin/activate
python -m benchmarks.run --device cpu --profile cpu --threads 1 --out "${OUT:-benchmarks/out/cpu}" "$@"
