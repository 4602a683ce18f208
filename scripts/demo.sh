#!/usr/bin/env bash
# Set up (if needed), then run the whole pipeline offline on the world LM that ships with mtsae (a small
# Gemma-2 trained on a seeded fictional world with a forget topic, docs/world.md): harvest it over the world
# corpus, then the embedded experiment — the seed's baseline, the default temporal SAE and TopK at matched
# L0, two seeds each, SAE-Bench (reduced) and mtsae unlearn on each, disentanglement analysis — ending with
# its report (experiments/embedded/report/report.html).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1

cache=$(mtsae harvest --model world --dataset world)   # content-addressed: caches/<fingerprint[:12]>, a no-op when present
mtsae cache info "$cache"
mtsae experiment embedded       # trains what is missing, evaluates, analyses, reports
