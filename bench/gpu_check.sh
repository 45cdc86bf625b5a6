#!/usr/bin/env bash
# The prepared GPU check, for the lent GPU machine as it is: python3, no package registry, no network. Wheels the
# image lacks (langid; liger-kernel for the comparison) are carried in .whl/ (made by bench/gpu_wheels.sh on a
# machine with a registry) and installed into a temporary folder, never from the network.
#   bash bench/gpu_check.sh OUT_DIR [--only STEP ...]       -> OUT_DIR/gpu_check.json, rewritten after every step
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-bench/out}}"
mkdir -p "$OUT_DIR"
shopt -s nullglob
WHEELS=(.whl/*.whl)
if [ ${#WHEELS[@]} -gt 0 ]; then
  DEPS="$(mktemp -d)"
  if ! PIP_NO_INDEX=1 python3 -m pip install --quiet --no-index --no-deps --target "$DEPS" "${WHEELS[@]}" 2>/dev/null; then
    # no pip on the image: a wheel is a zip of importable files
    python3 -c "import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]" "$DEPS" "${WHEELS[@]}"
  fi
  export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT_DIR/nvidia-smi.txt"
python3 bench/gpu_check.py --out "$OUT_DIR" "${@:2}"
