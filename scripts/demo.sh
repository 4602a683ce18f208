#!/usr/bin/env bash
# Set up (if needed), then run the pipeline on the embedded default, offline:
# harvest the tiny Gemma-2 over the bundled corpus, then train the seed's baseline (run0)
# and an MTSAE preset (run2) at the demo budget (docs/training.md).
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
