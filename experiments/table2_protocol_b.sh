#!/usr/bin/env bash
# Table II (Protocol B): VGG32 trained on all CIFAR10 classes with m-OvR (20k steps), macro-F1
# against ImageNet/LSUN crop/resize with the threshold rejecting 10% of known-val (10% of the
# known training images held out: Protocol B keeps its validation split). A GPU job.
set -euo pipefail
python -m jacosr.experiments.protocol_b \
  --ood imagenet_crop imagenet_resize lsun_crop lsun_resize \
  --backbone vgg32 --loss movr --steps 20000 --reject-rate 0.1 --val-fraction 0.1 \
  --workdir runs/table2-movr "$@"
