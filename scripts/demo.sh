#!/usr/bin/env bash
# Set up (if needed), then run the pipeline on the embedded default, offline:
# harvest the tiny Gemma-2 over the bundled corpus and describe the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1

cache=caches/embedded-demo
mtsae harvest --out "$cache"
mtsae cache info "$cache"
