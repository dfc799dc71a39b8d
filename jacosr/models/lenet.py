"""A small LeNet-style convolutional backbone (for 8x8 digits up to 32x32 images)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jacosr.models.conv import Conv


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, SAME padding: ``[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]``.

    The same values as ``nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")``, written as a
    reshape and a max over the window axes rather than XLA's ``reduce_window``: the derivative is
    then an element-wise mask (where x equals its window's max) instead of XLA's
    ``select_and_scatter``, which is slow on CPU, most of all vmapped over the d_z cotangents of
    an exact Jacobian norm (``benchmarks/jacobian.py``). At a tie the mask splits the gradient
    between the tied inputs where ``select_and_scatter`` gives it to the first; after a ReLU the
    ties are zeros, whose gradient the ReLU zeroes either way.
    """
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


class LeNet(nnx.Module):
    """``[B, H, W, C] -> [B, embed_dim]``.

    Two blocks of (5x5 bias-free conv, BatchNorm, ReLU, 2x2 max-pool) with 32 and 64 channels, then
    (Linear ``width``, BatchNorm, ReLU) and a linear embedding layer. The pooling is
    :func:`max_pool_2x2`. The convolutions are bias-free (BatchNorm follows) and from
    :mod:`jacosr.models.conv`; ``conv_impl`` selects their derivatives (see there).
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        embed_dim: int,
        *,
        width: int = 256,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        h, w, c = image_shape
        self.conv1 = Conv(c, 32, 5, padding="SAME", impl=conv_impl, rngs=rngs)
        self.bn1 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.conv2 = Conv(32, 64, 5, padding="SAME", impl=conv_impl, rngs=rngs)
        self.bn2 = nnx.BatchNorm(64, momentum=0.9, rngs=rngs)
        flat = math.ceil(math.ceil(h / 2) / 2) * math.ceil(math.ceil(w / 2) / 2) * 64
        self.fc = nnx.Linear(flat, width, rngs=rngs)
        self.bn3 = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
        self.out = nnx.Linear(width, embed_dim, rngs=rngs)
        self.out_dim = embed_dim

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        del key  # no stochastic layers
        avg = not train
        for conv, bn in ((self.conv1, self.bn1), (self.conv2, self.bn2)):
            x = nnx.relu(bn(conv(x), use_running_average=avg))
            x = max_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.bn3(self.fc(x), use_running_average=avg))
        return self.out(x)
