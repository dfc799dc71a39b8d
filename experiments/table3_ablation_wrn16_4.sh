#!/usr/bin/env bash
# Table III (ablation): the paper's fourteen rows (Baseline, m-OvR, one out a-d, w/o A+S e-g,
# w/o S h-j, on m k, Ours) on WRN-16-4, each over the five standard splits of CIFAR10,
# CIFAR+10, CIFAR+50, SVHN and TinyImageNet (Protocol A, as the caption says); AUROC of the
# loss score, mean ± std over the splits, and the paper's Avg. column. A GPU job.
#
# Backbone: WRN-16-4 (the Baseline row's numbers are those of Table I's SCE / WRN row).
# Run length: 20,000 steps ("For WRN-16-4 and VGG, our model is trained by SGD with 20k
# training iterations unless specified otherwise", Sec. VI; Table III's Ours row equals Table
# I's WRN Ours row except on CIFAR10, where Table I used 100k, so 20k here). SGD, cosine LR
# 0.1 -> 1e-5, batch 128; momentum 0.9 (stated by the paper for ResNet-18 only; the ARPL code
# base's). Each row sets the loss, W (weight decay 1e-3 or 0), A (weak augmentation or none)
# and S (rotation task, lambda_self 0.1, or off); see jacosr/recipe.py (the rows and the rule
# that turns W, A and S on) and jacosr/experiments/ablation.py.
#
# Size and cost: the command prints the grid's size before it trains (`grid: 350 runs, ...`);
# `python benchmarks/gpu_cost.py ablation <the flags below>` prints the expected time on one
# H100 from the throughput benchmarks/gpu.sh measured: 350 runs, 7M steps: 4M x 3.4 s/1k (no
# rotation) + 3M x 6.0 s/1k (rotation) = 8.8 h of training, up to 4x that for the TinyImageNet
# runs (64x64 images).
set -euo pipefail
python -m jacosr.experiments.ablation \
  --benchmarks cifar10 cifar+10 cifar+50 svhn tinyimagenet --splits 0 1 2 3 4 \
  --backbone wrn16_4 --embed-dim 256 --steps 20000 \
  --lr 0.1 --lr-min 1e-5 --momentum 0.9 --batch-size 128 --val-fraction 0 \
  --workdir runs/table3-wrn16_4 "$@"
