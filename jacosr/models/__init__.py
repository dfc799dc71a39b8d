"""Flax NNX models: backbones, heads, and the pure functional view used by training and
the Jacobian engine."""

from jacosr.models.conv import CONV_IMPLS, Conv, conv2d
from jacosr.models.heads import HEAD_SCORES, NORMALISED_HEADS, ClassHead, unit_normalise
from jacosr.models.net import (
    BACKBONES,
    ModelConfig,
    ModelState,
    OpenSetNet,
    Outputs,
    apply_model,
    embedding_apply,
    embedding_fn,
    split_model,
)
from jacosr.models.resnet import ResNet18
from jacosr.models.vgg32 import VGG32
from jacosr.models.wrn import WRN

__all__ = [
    "BACKBONES",
    "CONV_IMPLS",
    "HEAD_SCORES",
    "NORMALISED_HEADS",
    "VGG32",
    "WRN",
    "ClassHead",
    "Conv",
    "ModelConfig",
    "ModelState",
    "OpenSetNet",
    "Outputs",
    "ResNet18",
    "apply_model",
    "conv2d",
    "embedding_apply",
    "embedding_fn",
    "split_model",
    "unit_normalise",
]
