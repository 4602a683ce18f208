#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv and install mtsae with
# its evaluation, test and remote-cache extras. Idempotent: does nothing when .venv is up to date.
#
#   MTSAE_PYTHON       interpreter to build the venv with (default: python3)
#   MTSAE_CONSTRAINTS  pip constraints file (default: constraints.txt, which pins the CPU
#                      torch 2.13.0 of this project's machines). On a GPU box whose env
#                      already has a CUDA torch, set it to an empty string: see docs/install.md.
set -euo pipefail
cd "$(dirname "$0")/.."

python_bin=${MTSAE_PYTHON:-python3}
constraints=${MTSAE_CONSTRAINTS-constraints.txt}
stamp_input="$(cat pyproject.toml; [ -n "$constraints" ] && cat "$constraints"; echo "$constraints")"
stamp=".venv/.mtsae-setup-$(printf '%s' "$stamp_input" | sha256sum | cut -c1-16)"

if [ -f "$stamp" ]; then
  exit 0
fi
echo "[setup] creating .venv and installing mtsae (first run: about 2-3 minutes)" >&2
[ -x .venv/bin/python ] || "$python_bin" -m venv .venv
. .venv/bin/activate
pip_args=(--quiet --disable-pip-version-check)
[ -n "$constraints" ] && pip_args+=(--constraint "$constraints")
python -m pip install "${pip_args[@]}" --upgrade pip
# torch first, on its own, so pip takes the pinned build rather than resolving a newer one.
[ -n "$constraints" ] && python -m pip install "${pip_args[@]}" torch
python -m pip install "${pip_args[@]}" -e ".[eval,test,remote]"
# sae-bench asks for torchvision; the PyPI build does not match the pinned torch and breaks
# transformers' lazy imports (docs/install.md). Nothing in mtsae uses it.
python -m pip uninstall --quiet --yes torchvision 2>/dev/null || true
python - <<'PY'
import importlib
for name in ("torch", "transformers", "datasets", "zarr", "typer", "sae_bench", "s3fs", "moto.server", "mtsae.cli"):
    importlib.import_module(name)
import torch, zarr
print(f"[setup] ok: torch {torch.__version__}, zarr {zarr.__version__}", flush=True)
PY
rm -f .venv/.mtsae-setup-*
touch "$stamp"
