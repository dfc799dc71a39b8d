"""Heads on the representation: class scores from prototypes, and the rotation head.

The class head turns the embedding ``f: [B, D]`` into one score per known class, ``[B, K]``.
Which score depends on the loss (see ``jacosr.losses.LOSSES``):

- ``linear``: ``W f + b`` (SCE, DOC).
- ``cosine``: ``w_k . f`` with both unit-normalised, the paper's "N" (N-SCE, m-OvR); values in
  [-1, 1]. The loss applies the scale T and the margin.
- ``distance``: ``-||f - c_k||^2`` to learnable class centres (GCPL / CPN, Yang et al. 2018).
- ``reciprocal``: ``||f - p_k||^2`` to learnable reciprocal points (RPL, Chen et al. 2020);
  far from the reciprocal point of k means more likely class k. This head also owns RPL's
  learnable radius ``R`` (a scalar, initialised to 0 as in the ARPL code base).

Every head's scores rank the classes (argmax = prediction); the losses turn them into logits
(scale, margin, the 1/D of the distance heads).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

_EPS = 1e-12


def unit_normalise(v: jax.Array, axis: int = -1) -> jax.Array:
    """``v / ||v||`` along ``axis``, with a floor that keeps the gradient finite at ``v = 0``."""
    return v * jax.lax.rsqrt(jnp.maximum(jnp.sum(v * v, axis=axis, keepdims=True), _EPS))


def _sq_distances(f: jax.Array, centres: jax.Array) -> jax.Array:
    """``[B, D], [K, D] -> [B, K]`` squared Euclidean distances."""
    return (
        jnp.sum(f * f, axis=-1, keepdims=True)
        - 2.0 * f @ centres.T
        + jnp.sum(centres * centres, axis=-1)[None, :]
    )


# (f [B, D], prototypes [K, D], bias [K] or None) -> [B, K]; only ``linear`` has a bias.
HEAD_SCORES: dict[str, Callable[[jax.Array, jax.Array, jax.Array | None], jax.Array]] = {
    "linear": lambda f, w, b: f @ w.T + b,
    "cosine": lambda f, w, b: unit_normalise(f) @ unit_normalise(w).T,
    "distance": lambda f, w, b: -_sq_distances(f, w),
    "reciprocal": lambda f, w, b: _sq_distances(f, w),
}

# Heads whose embedding is unit-normalised (the representation the Jacobian is taken of).
NORMALISED_HEADS = frozenset({"cosine"})


class ClassHead(nnx.Module):
    """Learnable class prototypes ``w: [K, D]``, plus a bias ``b: [K]`` for ``linear`` and the
    radius ``R: []`` for ``reciprocal`` (each None for the other heads)."""

    def __init__(self, dim: int, num_classes: int, kind: str, *, rngs: nnx.Rngs):
        if kind not in HEAD_SCORES:
            raise ValueError(
                f"unknown head {kind!r}; valid heads are: {', '.join(sorted(HEAD_SCORES))}"
            )
        self.kind = kind
        init = nnx.initializers.lecun_normal()
        self.prototypes = nnx.Param(init(rngs.params(), (num_classes, dim)))
        self.bias = nnx.Param(jnp.zeros((num_classes,))) if kind == "linear" else None
        self.radius = nnx.Param(jnp.zeros(())) if kind == "reciprocal" else None

    def __call__(self, f: jax.Array) -> jax.Array:
        """``f: [B, D] -> [B, K]`` class scores of this head's kind."""
        bias = None if self.bias is None else self.bias[...]
        return HEAD_SCORES[self.kind](f, self.prototypes[...], bias)
