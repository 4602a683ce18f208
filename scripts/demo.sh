#!/usr/bin/env bash
# Set up (if needed), then run the whole pipeline on the embedded default, offline:
# harvest the tiny Gemma-2 over the bundled corpus, train the seed's baseline (run0) and an
# MTSAE (run2) at the demo budget (docs/training.md), evaluate both with SAE-Bench, report.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1

cache=caches/embedded-demo
mtsae harvest --out "$cache"
mtsae cache info "$cache"

demo_budget=(--d-sae 512 --lr 3e-3 --batch-windows 8)
mtsae train --cache "$cache" --preset run0 "${demo_budget[@]}" --train-tokens 4800000 --out runs/demo-run0
mtsae train --cache "$cache" --preset run2 "${demo_budget[@]}" --train-tokens 1200000 --out runs/demo-run2

for run in demo-run0 demo-run2; do
  mtsae eval "runs/$run" --out "runs/$run/eval"
done
mtsae report runs/demo-run0 runs/demo-run2 --out reports/demo
