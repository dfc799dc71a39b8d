"""Pure, per-sample losses.

Two layers:

* array losses, ``loss_*(scores [B, K], labels [B] int, ..., **hyper) -> [B]``, on the class
  head's scores (see :mod:`jacosr.models.heads`): linear logits for SCE and DOC, cosines
  ``w_k . f`` of unit vectors for N-SCE and m-OvR, negative squared distances to class centres
  for GCPL, squared distances to reciprocal points (and the radius R) for RPL;
* the typed registry ``LOSSES`` of :class:`LossSpec`, whose entries take the network's whole
  :class:`~jacosr.models.Outputs` so that a loss may use the embedding or the head's radius,
  ``loss(outputs, labels, config) -> [B]``.

Scale, temperature and margins are applied here, so the same head output serves the loss, the
loss score (Eq. 22) and the baselines.

The reference formulas for the baselines, as in their papers and the ARPL code base
(github.com/iCGY96/ARPL, ``loss/Dist.py``, ``loss/GCPLoss.py``, ``loss/RPLoss.py``), with
``D`` the embedding size and ``d(f, c) = ||f - c||^2 / D`` (ARPL's ``Dist``, l2 metric):

* DOC (Shu et al. 2017): K independent sigmoids on linear logits, the sum of the K binary
  cross-entropies (one-vs-rest, no normalisation, no margin).
* GCPL / CPN (Yang et al. CVPR 2018, "Robust classification with convolutional prototype
  learning"): logits ``-d(f, c_k) / tau``; loss ``CE + lambda * d(f, c_y) / 2``, the "prototype
  loss" pulling f onto its class centre (ARPL: ``F.mse_loss(x, centers[y]) / 2``).
* RPL (Chen et al. ECCV 2020, "Learning open set network with discriminative reciprocal
  points"): logits ``+d(f, p_k) / tau`` (far from the reciprocal point of k = class k); loss
  ``CE + lambda * (d(f, p_y) - R)^2`` with one learnable radius R that bounds the open space
  (ARPL: ``F.mse_loss(_dis, self.radius)``; the paper writes the open-space term as a hinge
  ``max(d - R, 0)``, the code base squares the difference, which we follow).

ARPL's defaults are ``tau = 1`` (``--temp``) and ``lambda = 0.1`` (``--weight-pl``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jacosr.config import require
from jacosr.models import Outputs

# Floor on sin^2(theta) in the margin: keeps d/dc sqrt(1 - c^2) finite at c = +-1.
_SIN2_FLOOR = 1e-7


@dataclass(frozen=True)
class LossConfig:
    """Which loss, and its hyper-parameters (paper defaults).

    Attributes:
      loss: loss name (see ``LOSSES``): sce, nsce, doc, movr, gcpl, rpl.
      scale: T, the inverse temperature applied to cosines (N-SCE, m-OvR).
      margin_pos: additive angular margin m of the positive class (Eq. 24).
      margin_neg: additive angular margin of the negative classes. Eq. 24 applies the same +m
        to every class while Proposition 6 speaks of a negative-class margin m_n; the two are
        kept separate, both default to 0.5, which is Eq. 24. Both 0: the plain normalised
        one-vs-rest loss (the ablation's "OvR + N" without "m").
      temperature: tau, the temperature of the distance logits of GCPL and RPL (ARPL's --temp).
      weight_pl: lambda of GCPL's prototype term and RPL's radius term (ARPL's --weight-pl).

    Refused when built (``ValueError`` naming the flag): an unknown loss; a margin outside
    [0, pi) (a negative margin loosens the class boundary it should tighten, and one of pi or
    more turns the cosine around); a scale or temperature that is not a positive finite number;
    a negative or infinite weight_pl.
    """

    loss: str = "movr"
    scale: float = 32.0
    margin_pos: float = 0.5
    margin_neg: float = 0.5
    temperature: float = 1.0
    weight_pl: float = 0.1

    def __post_init__(self):
        require(self.loss in LOSSES, "--loss", f"one of {', '.join(sorted(LOSSES))}", self.loss)
        for flag, margin in (("--margin-pos", self.margin_pos), ("--margin-neg", self.margin_neg)):
            require(
                0 <= margin < math.pi, flag, "an angle in [0, pi) radians (0: no margin)", margin
            )
        require(
            math.isfinite(self.scale) and self.scale > 0,
            "--scale",
            "> 0 (T, the inverse temperature of the cosine logits)",
            self.scale,
        )
        require(
            math.isfinite(self.temperature) and self.temperature > 0,
            "--temperature",
            "> 0 (tau, the temperature of GCPL's and RPL's distance logits)",
            self.temperature,
        )
        require(
            math.isfinite(self.weight_pl) and self.weight_pl >= 0,
            "--weight-pl",
            ">= 0 (lambda of GCPL's prototype and RPL's radius term; 0: off)",
            self.weight_pl,
        )


def loss_sce(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Softmax cross-entropy on linear logits: ``-log softmax(z)_y``. ``[B, K], [B] -> [B]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def loss_nsce(cosines: jax.Array, labels: jax.Array, *, scale: float = 32.0) -> jax.Array:
    """Normalised SCE: softmax cross-entropy on scaled cosine logits ``T * s_k``."""
    return loss_sce(scale * cosines, labels)


def one_vs_rest_bce(sigmoid_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``-sum_k [1{y=k} log sigmoid(z_k) + 1{y!=k} log(1 - sigmoid(z_k))]``, computed stably."""
    positive = jax.nn.one_hot(labels, sigmoid_logits.shape[-1], dtype=bool)
    return jnp.sum(jax.nn.softplus(jnp.where(positive, -sigmoid_logits, sigmoid_logits)), -1)


def loss_doc(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """DOC (Shu et al. 2017): one-vs-rest sigmoids on raw linear logits, ``[B, K], [B] -> [B]``.

    The sum of the K binary cross-entropies, with neither normalisation nor margin: the
    ablation's "OvR" alone.
    """
    return one_vs_rest_bce(logits, labels)


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


def _at_label(values: jax.Array, labels: jax.Array) -> jax.Array:
    """``values[b, labels[b]]``: ``[B, K], [B] -> [B]``."""
    return jnp.take_along_axis(values, labels[:, None], axis=-1)[:, 0]


def loss_gcpl(
    neg_sq_distances: jax.Array,
    labels: jax.Array,
    *,
    dim: int,
    temperature: float = 1.0,
    weight_pl: float = 0.1,
) -> jax.Array:
    """GCPL / CPN: distance cross-entropy plus the prototype loss (see the module docstring).

    Args:
      neg_sq_distances: ``[B, K]`` the ``distance`` head's ``-||f - c_k||^2``.
      labels: ``[B]`` int.
      dim: D, the embedding size; ``d_k = ||f - c_k||^2 / D``.
      temperature, weight_pl: tau and lambda.

    Returns:
      ``[B]``: ``-log softmax(-d / tau)_y + lambda d_y / 2``.
    """
    d = -neg_sq_distances / dim
    return loss_sce(-d / temperature, labels) + weight_pl * _at_label(d, labels) / 2.0


def loss_rpl(
    sq_distances: jax.Array,
    radius: jax.Array,
    labels: jax.Array,
    *,
    dim: int,
    temperature: float = 1.0,
    weight_pl: float = 0.1,
) -> jax.Array:
    """RPL: reciprocal-point cross-entropy plus the radius term (see the module docstring).

    Args:
      sq_distances: ``[B, K]`` the ``reciprocal`` head's ``||f - p_k||^2``.
      radius: ``[B]`` the learnable radius R (one scalar, repeated per sample).
      labels: ``[B]`` int.
      dim: D, the embedding size; ``d_k = ||f - p_k||^2 / D``.
      temperature, weight_pl: tau and lambda.

    Returns:
      ``[B]``: ``-log softmax(d / tau)_y + lambda (d_y - R)^2``.
    """
    d = sq_distances / dim
    return loss_sce(d / temperature, labels) + weight_pl * jnp.square(_at_label(d, labels) - radius)


def loss_rotation(rotation_logits: jax.Array, rotations: jax.Array) -> jax.Array:
    """Self-supervised rotation loss: 4-way cross-entropy, ``[B, 4], [B] in 0..3 -> [B]``."""
    return loss_sce(rotation_logits, rotations)


class LossSpec(NamedTuple):
    """A registered loss: the head it needs, the per-sample loss, and its softmax logits.

    ``loss(outputs, labels, config) -> [B]``; ``softmax_logits(outputs, config) -> [B, K]``,
    the logits whose softmax is the class posterior (used for MSP, max-logit, energy, OpenMax).
    """

    head: str
    loss: Callable[[Outputs, jax.Array, LossConfig], jax.Array]
    softmax_logits: Callable[[Outputs, LossConfig], jax.Array]


def _raw(o: Outputs, c: LossConfig) -> jax.Array:
    return o.class_scores


def _scaled(o: Outputs, c: LossConfig) -> jax.Array:
    return c.scale * o.class_scores


def _per_dim(o: Outputs, c: LossConfig) -> jax.Array:
    # +-||f - c_k||^2 / (D tau): -d / tau for GCPL, +d / tau for RPL.
    return o.class_scores / (o.embedding.shape[-1] * c.temperature)


LOSSES: dict[str, LossSpec] = {
    "sce": LossSpec("linear", lambda o, y, c: loss_sce(o.class_scores, y), _raw),
    "nsce": LossSpec(
        "cosine", lambda o, y, c: loss_nsce(o.class_scores, y, scale=c.scale), _scaled
    ),
    "doc": LossSpec("linear", lambda o, y, c: loss_doc(o.class_scores, y), _raw),
    "movr": LossSpec(
        "cosine",
        lambda o, y, c: loss_movr(
            o.class_scores, y, scale=c.scale, margin_pos=c.margin_pos, margin_neg=c.margin_neg
        ),
        _scaled,
    ),
    "gcpl": LossSpec(
        "distance",
        lambda o, y, c: loss_gcpl(
            o.class_scores,
            y,
            dim=o.embedding.shape[-1],
            temperature=c.temperature,
            weight_pl=c.weight_pl,
        ),
        _per_dim,
    ),
    "rpl": LossSpec(
        "reciprocal",
        lambda o, y, c: loss_rpl(
            o.class_scores,
            o.radius,
            y,
            dim=o.embedding.shape[-1],
            temperature=c.temperature,
            weight_pl=c.weight_pl,
        ),
        _per_dim,
    ),
}


def loss_spec(name: str) -> LossSpec:
    """The registered loss ``name``; an unknown name lists the valid ones."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; valid losses are: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def per_sample_loss(config: LossConfig, outputs: Outputs, labels: jax.Array) -> jax.Array:
    """The configured loss, per sample: ``Outputs of [B] inputs, labels [B] -> [B]``."""
    return loss_spec(config.loss).loss(outputs, labels, config)
