#!/usr/bin/env bash
# Training throughput and Jacobian norms on one GPU, synthetic CIFAR-shaped data (no data set).
#
#   bash benchmarks/gpu.sh          # from the repository root; about 5 minutes on one H100
#
# 1. benchmarks/train.py's table at batch 128: images/s of the library's training dispatch
#    (conv_impl="auto", i.e. XLA's own convolution gradients on GPU) for every backbone, the
#    paper's recipe (weak augmentation and the rotation task: 256 images through the network
#    per step) on the CIFAR backbones, PyTorch eager on CUDA when torch sees the GPU, and
#    seconds per 1000 steps (the paper's run is 20k steps of "paper").
# 2. VGG32 with the CPU workaround (im2col weight gradient) against XLA's, one jitted step
#    each, to check that "auto" picks the faster one on GPU.
# 3. benchmarks/jacobian.py --sizes gpu on VGG32: exact per-sample norms, Hutchinson's
#    estimate, and torch.func beside them.
#
# Installs the project with the cuda12 extra first when jax has no GPU backend or jacosr's
# dependencies are missing. PYTHON picks the interpreter (default: .venv/bin/python, else
# python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

if ! "$PY" -c 'import jax, jacosr.train, sys; sys.exit(jax.default_backend() != "gpu")'; then
  echo "no GPU backend or missing dependencies; installing the project with the cuda12 extra" >&2
  "$PY" -m pip install -q -e ".[cuda12]"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

"$PY" benchmarks/train.py --methods dispatch paper torch --allocators glibc --steps 200 \
  --timeout 150
"$PY" benchmarks/train.py --backbones vgg32 --methods step-im2col step-xla \
  --allocators glibc --steps 20 --timeout 90
"$PY" benchmarks/jacobian.py --sizes gpu --nets vgg32 --groups exact_reverse stochastic torch \
  --allocators glibc
