#!/usr/bin/env bash
# Run on a machine with a package registry (the CPU machine): puts into .whl/ (git-ignored) the wheels the GPU
# machine's image lacks, for bench/gpu_check.sh to carry: langid (PyPI has only a source archive, so it is built
# here; pure Python) and liger-kernel (pure Python + Triton: the comparison in bench/loss_kernels.py). ~3 MB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip wheel --quiet --no-deps --wheel-dir .whl "langid==1.1.6"
python3 -m pip download --quiet --no-deps --only-binary=:all: --dest .whl "liger-kernel==0.8.5"
ls -la .whl
