#!/usr/bin/env bash
# Training throughput of every backbone on one GPU, synthetic CIFAR-shaped data (no data set).
#
#   bash benchmarks/gpu.sh          # from the repository root; about 4 minutes on one H100
#
# Prints benchmarks/train.py's table: images/s at batch 128 and seconds per 1000 steps of the
# library's training dispatch (conv_impl="auto", i.e. XLA's own convolution gradients on GPU),
# then VGG32 with the CPU workaround (im2col weight gradient) against XLA's, one jitted step
# each, to check that "auto" picks the faster one there. Installs the project with the cuda12
# extra first when jax has no GPU backend.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

if ! "$PY" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
  echo "jax has no GPU backend here; installing the project with the cuda12 extra" >&2
  "$PY" -m pip install -q -e ".[cuda12]"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PY" benchmarks/train.py --methods dispatch --allocators glibc --steps 50 --timeout 90
"$PY" benchmarks/train.py --backbones vgg32 --methods step-im2col step-xla \
  --allocators glibc --steps 20 --timeout 60
