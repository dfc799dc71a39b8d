#!/usr/bin/env bash
# Table I (Protocol A), block "Strong Data Augmentation - Flip/Crop/Color Jitter (Standard
# Hyperparameter)": SCE and m-OvR on ResNet-18, over the five standard splits of CIFAR10,
# CIFAR+10, CIFAR+50, SVHN and TinyImageNet. A GPU job.
#
# The paper's recipe: "In the case of the ResNet-18 backbone, on the other hand, the model is
# trained for 200 epochs under the SGD optimizer with a momentum of 0.9 and a learning rate of
# 0.06 that decays to 0 by the cosine learning scheduler" (Sec. VI); "The strong data
# augmentation we applied includes color jittering, image crop, and image flip"; "In this case,
# we do not apply auxiliary self-supervision. To compare fairly, we only vary the loss
# function from SCE to m-OvR" (Sec. VI-A). Batch 128 and weight decay 1e-3 are the paper's
# defaults (Sec. VI; Table II: "the weight decay is applied in default").
#
# Run length: --epochs 200 becomes 200 x (known training images // 128) steps per split,
# counted on the prepared data: CIFAR10 30,000 images -> 46,800 steps; CIFAR+10/+50 20,000 ->
# 31,200; TinyImageNet 10,000 -> 15,600; SVHN 41,684-47,203 depending on the split ->
# 65,000-73,600 (TFDS svhn_cropped class counts).
#
# Size and cost: the command prints the grid's size before it trains (`grid: 50 runs, ...`);
# `python benchmarks/gpu_cost.py protocol_a <the flags below>` prints the expected time on one
# H100 from the throughput benchmarks/gpu.sh measured (it counts the epochs on the prepared
# data, as the command does): 50 runs, 1.94M steps x 4.7 s/1k = 2.5 h of training, up to 4x
# that for the TinyImageNet runs (64x64).
set -euo pipefail
python -m jacosr.experiments.protocol_a \
  --methods SCE m-OvR \
  --benchmarks cifar10 cifar+10 cifar+50 svhn tinyimagenet --splits 0 1 2 3 4 \
  --backbone resnet18 --embed-dim 512 --epochs 200 \
  --lr 0.06 --lr-min 0 --momentum 0.9 --batch-size 128 --weight-decay 1e-3 \
  --augment strong --val-fraction 0 \
  --workdir runs/table1-resnet18-strong "$@"
