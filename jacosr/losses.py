"""Pure, per-sample losses: ``(logits [B, K], labels [B] int) -> [B]``.

``logits`` are the class head's scores (see :mod:`jacosr.models.heads`): linear logits for SCE
and DOC, cosines ``w_k . f`` of unit vectors for N-SCE and m-OvR. Scale and margins are applied
here, so the same head output serves the loss, the loss score (Eq. 22) and the baselines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

# Floor on sin^2(theta) in the margin: keeps d/dc sqrt(1 - c^2) finite at c = +-1.
_SIN2_FLOOR = 1e-7


@dataclass(frozen=True)
class LossConfig:
    """Which loss, and its hyper-parameters (paper defaults).

    Attributes:
      loss: loss name (see ``LOSSES``).
      scale: T, the inverse temperature applied to cosines (N-SCE, m-OvR).
      margin_pos: additive angular margin m of the positive class (Eq. 24).
      margin_neg: additive angular margin of the negative classes. Eq. 24 applies the same +m
        to every class while Proposition 6 speaks of a negative-class margin m_n; the two are
        kept separate, both default to 0.5, which is Eq. 24.
    """

    loss: str = "movr"
    scale: float = 32.0
    margin_pos: float = 0.5
    margin_neg: float = 0.5


def loss_sce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy on linear logits: ``-log softmax(z)_y``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def loss_nsce(cosines: jax.Array, labels: jax.Array, *, scale: float = 32.0) -> jax.Array:
    """Normalised SCE: softmax cross-entropy on scaled cosine logits ``T * s_k``."""
    return loss_sce(scale * cosines, labels)


def one_vs_rest_bce(sigmoid_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-sum_k [1{y=k} log sigmoid(z_k) + 1{y!=k} log(1 - sigmoid(z_k))]``, computed stably."""
    positive = jax.nn.one_hot(labels, sigmoid_logits.shape[-1], dtype=bool)
    return jnp.sum(jax.nn.softplus(jnp.where(positive, -sigmoid_logits, sigmoid_logits)), -1)


def angular_margin(cosines: jax.Array, margin: jax.Array | float) -> jax.Array:
    """``cos(arccos(c) + m)`` with finite gradients everywhere, including ``c = +-1``.

    Uses ``cos(t + m) = c cos m - sin t sin m`` with ``sin t = sqrt(1 - c^2)`` (t in [0, pi]),
    and floors ``1 - c^2`` at a tiny positive value so the derivative stays finite where
    ``arccos`` has an infinite slope.
    """
    c = jnp.clip(cosines, -1.0, 1.0)
    sin = jnp.sqrt(jnp.maximum(1.0 - c * c, _SIN2_FLOOR))
    return c * jnp.cos(margin) - sin * jnp.sin(margin)


def loss_movr(
    cosines: jax.Array,
    labels: jax.Array,
    *,
    scale: float = 32.0,
    margin_pos: float = 0.5,
    margin_neg: float = 0.5,
) -> jax.Array:
    """Marginal one-vs-rest loss (Eq. 23-24).

    ``s_k = cos(arccos(w_k . f) + m)`` with ``m = margin_pos`` for ``k = y`` and ``margin_neg``
    otherwise; ``p(k|x) = sigmoid(T s_k)``; the loss is the sum of the K binary cross-entropies.
    Without margins it is the plain normalised one-vs-rest loss (Proposition 5: the negative
    prototypes then collapse onto ``-f``); the negative margin keeps an angle gap of ``m_n``
    from ``-f`` (Proposition 6).
    """
    positive = jax.nn.one_hot(labels, cosines.shape[-1], dtype=bool)
    s = angular_margin(cosines, jnp.where(positive, margin_pos, margin_neg))
    return one_vs_rest_bce(scale * s, labels)


class LossSpec(NamedTuple):
    """A registered loss: the head it needs, the per-sample loss, and its softmax logits.

    ``loss(logits, labels, config) -> [B]``; ``softmax_logits(logits, config) -> [B, K]``, the
    logits whose softmax is the class posterior used for prediction and for MSP.
    """

    head: str
    loss: Callable[[jax.Array, jax.Array, LossConfig], jax.Array]
    softmax_logits: Callable[[jax.Array, LossConfig], jax.Array]


def _scaled(logits: jax.Array, c: LossConfig) -> jax.Array:
    return c.scale * logits


LOSSES: dict[str, LossSpec] = {
    "sce": LossSpec("linear", lambda z, y, c: loss_sce(z, y), lambda z, c: z),
    "nsce": LossSpec("cosine", lambda z, y, c: loss_nsce(z, y, scale=c.scale), _scaled),
    "movr": LossSpec(
        "cosine",
        lambda z, y, c: loss_movr(
            z, y, scale=c.scale, margin_pos=c.margin_pos, margin_neg=c.margin_neg
        ),
        _scaled,
    ),
}


def loss_spec(name: str) -> LossSpec:
    """The registered loss ``name``; an unknown name lists the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses are: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def per_sample_loss(config: LossConfig, logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The configured loss, per sample: ``[B, K], [B] -> [B]``."""
    return loss_spec(config.loss).loss(logits, labels, config)
