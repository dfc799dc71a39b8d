#!/usr/bin/env bash
# Table I (Protocol A): VGG32, m-OvR, the paper's optimiser, augmentation and rotation task,
# 20k steps, on all six benchmarks and their five standard splits. A GPU job.
set -euo pipefail
python -m jacosr.experiments.protocol_a \
  --benchmarks mnist svhn cifar10 cifar+10 cifar+50 tinyimagenet \
  --splits 0 1 2 3 4 --backbone vgg32 --loss movr --steps 20000 \
  --workdir runs/table1-movr "$@"
