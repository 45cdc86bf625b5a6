#!/usr/bin/env bash
# The prepared GPU check (see bench/gpu_check.py): writes $OUT/gpu_check.json, or ${1}/gpu_check.json.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/out}}"
python -c "import torch, triton, transformers" 2>/dev/null || pip install -q -r requirements.txt
mkdir -p "$OUT_DIR"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT_DIR/nvidia-smi.txt" 2>&1 || true
python bench/gpu_check.py --out "$OUT_DIR" "${@:2}"
