"""Unknown-class scores from model outputs. Convention: higher = more likely unknown, always.

Each score is ``score_fn(outputs, loss_config) -> [B]`` in the typed registry ``SCORES``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from jacosr.losses import LossConfig, loss_spec, per_sample_loss
from jacosr.models import Outputs


def score_loss(outputs: Outputs, config: LossConfig) -> jax.Array:
    """The training loss evaluated at the pseudo label ``argmax_k logits`` (Eq. 22).

    Uses the same similarity, scale and margins as training. A known sample fits its predicted
    class well (low loss); an unknown one fits none (high loss).
    """
    pseudo = jnp.argmax(outputs.logits, axis=-1)
    return per_sample_loss(config, outputs.logits, pseudo)


def score_msp(outputs: Outputs, config: LossConfig) -> jax.Array:
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017) of the loss's logits."""
    logits = loss_spec(config.loss).softmax_logits(outputs.logits, config)
    return -jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


SCORES: dict[str, Callable[[Outputs, LossConfig], jax.Array]] = {
    "loss": score_loss,
    "msp": score_msp,
}


def score_fn(name: str) -> Callable[[Outputs, LossConfig], jax.Array]:
    """The registered score ``name``; an unknown name lists the valid ones."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; valid scores are: {', '.join(sorted(SCORES))}")
    return SCORES[name]
