#!/usr/bin/env bash
# The GPU check: the CUDA paths as tests (tests/test_cuda.py: fused optimizers, bf16/fp16, compile,
# DDP over nccl, seeded determinism, resume CPU <-> CUDA), then the training-speed table on the GPU.
# Without CUDA the tests skip and the table is skipped, so it passes anywhere. Under 10 minutes.
#
#   AEVB_DATA_DIR=/path/to/shared/data benchmarks/gpu_check.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${OUT:-runs/gpu_check}}"
mkdir -p "$OUT"
python - <<'PY'
import torch
print("torch", torch.__version__, "| CUDA available:", torch.cuda.is_available(),
      "|", torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU")
PY
python -m pytest -q -p no:cacheprovider tests/test_cuda.py --durations=10 2>&1 | tee "$OUT/gpu_tests.log"
if python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    python benchmarks/train_speed.py speed --device cuda --systems aevb,aevb-bf16,aevb-fast --rounds 2 --epochs 3 \
        --json "$OUT/bench-train-speed-cuda.json" 2>&1 | tee "$OUT/gpu_speed.log"
else
    echo "no CUDA device: the training-speed table is skipped"
fi
