"""Multi-layer perceptron backbone (for digits, toy2d and other small inputs)."""

from __future__ import annotations

import math
from itertools import pairwise

import jax
from flax import nnx


class MLP(nnx.Module):
    """``[B, H, W, C] -> [B, embed_dim]``: flatten, ``depth`` x (Linear, BatchNorm, ReLU), Linear.

    The last layer is linear so that the representation is not confined to the positive orthant
    before normalisation.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        embed_dim: int,
        *,
        width: int = 256,
        depth: int = 2,
        rngs: nnx.Rngs,
    ):
        sizes = [math.prod(image_shape)] + [width] * depth
        self.hidden = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in pairwise(sizes)])
        self.norms = nnx.List([nnx.BatchNorm(width, momentum=0.9, rngs=rngs) for _ in range(depth)])
        self.out = nnx.Linear(sizes[-1], embed_dim, rngs=rngs)
        self.out_dim = embed_dim

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        del key  # no stochastic layers
        h = x.reshape(x.shape[0], -1)
        for linear, norm in zip(self.hidden, self.norms, strict=True):
            h = nnx.relu(norm(linear(h), use_running_average=not train))
        return self.out(h)
