#!/usr/bin/env bash
# The GPU benchmarks, one call: fused-kernel tests on CUDA, then every benchmark at Gemma-2-2b shapes
# (random weights, built locally: no hub). Results under $OUT (default benchmarks/out/gpu).
#
#   OUT=/path/to/results bash benchmarks/gpu.sh
#
# Needs a CUDA torch with triton (it ships with it) and mtsae's other dependencies:
#   pip install -e ".[test]" transformer-lens     (in the env that has the CUDA torch; see docs/install.md)
# Scratch (a 5 GB random Gemma-2-2b, stores of a few GB, a 4 GB disk test) goes to $BENCH_WORK
# (default: a temp dir, removed at the end); put it on the disk you want the I/O ceiling of.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/out/gpu}"
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1

missing=$(python - <<'PY'
import importlib.util
need = ["torch", "triton", "transformers", "datasets", "zarr", "numcodecs", "transformer_lens", "pytest", "mtsae"]
print(" ".join(n for n in need if importlib.util.find_spec(n) is None))
PY
)
if [ -n "$missing" ]; then
    echo "error: missing python packages: $missing (pip install -e '.[test]' transformer-lens)" >&2
    exit 1
fi
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'error: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
git rev-parse HEAD > "$OUT/commit.txt" 2>/dev/null || true

# 1. The fused kernel against the PyTorch path on the GPU (forward, gradients, every padding mode, bf16).
python -m pytest tests/test_temporal_triton.py -q -p no:cacheprovider 2>&1 | tee "$OUT/kernel-tests.txt"

# 2. Every benchmark, side by side, in one process per benchmark family.
work_args=()
[ -n "${BENCH_WORK:-}" ] && work_args=(--work "$BENCH_WORK")
python -m benchmarks.run --device cuda --profile gpu --out "$OUT" "${work_args[@]}" 2>&1 | tee "$OUT/run.log"
