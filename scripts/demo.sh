#!/usr/bin/env bash
# Set up (if needed), then run the whole pipeline on the embedded default, offline:
# harvest the tiny Gemma-2 over the bundled corpus, then the embedded experiment — the seed's
# four runs (run0..run3) and TopK/BatchTopK/JumpReLU at matched width, SAE-Bench on each,
# disentanglement analysis — ending with its report (experiments/embedded/report/report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1

cache=$(mtsae harvest)          # content-addressed: caches/<fingerprint[:12]>, a no-op when present
mtsae cache info "$cache"
mtsae experiment embedded       # trains what is missing, evaluates, analyses, reports
