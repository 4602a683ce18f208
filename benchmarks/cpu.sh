#!/usr/bin/env bash
# The CPU benchmarks (about 3 minutes on 2 cores): python -m benchmarks.run --device cpu
set -euo pipefail
cd "$(dirname "$0")/.."
[ -f .venv/bin/activate ] && source .venv/bin/activate
python -m benchmarks.run --device cpu --profile cpu --out "${OUT:-benchmarks/out/cpu}" "$@"
