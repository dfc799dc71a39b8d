"""Flax NNX models: backbones, heads, and the pure functional view used by training and
the Jacobian engine."""

from jacosr.models.heads import HEAD_SCORES, NORMALISED_HEADS, ClassHead, unit_normalise
from jacosr.models.net import (
    BACKBONES,
    ModelConfig,
    ModelState,
    OpenSetNet,
    Outputs,
    apply_model,
    embedding_fn,
    split_model,
)

__all__ = [
    "BACKBONES",
    "HEAD_SCORES",
    "NORMALISED_HEADS",
    "ClassHead",
    "ModelConfig",
    "ModelState",
    "OpenSetNet",
    "Outputs",
    "apply_model",
    "embedding_fn",
    "split_model",
    "unit_normalise",
]
