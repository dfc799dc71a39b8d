"""A small LeNet-style convolutional backbone (for 8x8 digits up to 32x32 images)."""

from __future__ import annotations

import math

import jax
from flax import nnx

from jacosr.models.conv import Conv


class LeNet(nnx.Module):
    """``[B, H, W, C] -> [B, embed_dim]``.

    Two blocks of (5x5 bias-free conv, BatchNorm, ReLU, 2x2 max-pool) with 32 and 64 channels, then
    (Linear ``width``, BatchNorm, ReLU) and a linear embedding layer.
    """

    def __init__(
        self, image_shape: tuple[int, ...], embed_dim: int, *, width: int = 256, rngs: nnx.Rngs
    ):
        h, w, c = image_shape
        # Bias-free convolutions (BatchNorm follows) from jacosr.models.conv: on CPU their weight
        # gradient avoids XLA's, which is very slow inside the training dispatch's lax.scan.
        self.conv1 = Conv(c, 32, 5, padding="SAME", rngs=rngs)
        self.bn1 = nnx.BatchNorm(32, momentum=0.9, rngs=rngs)
        self.conv2 = Conv(32, 64, 5, padding="SAME", rngs=rngs)
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
            x = nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
        x = x.reshape(x.shape[0], -1)
        x = nnx.relu(self.bn3(self.fc(x), use_running_average=avg))
        return self.out(x)
