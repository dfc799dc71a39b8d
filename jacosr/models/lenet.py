"""A small LeNet-style convolutional backbone (for 8x8 digits up to 32x32 images)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jacosr.models.conv import Conv


def _window_entries(x: jax.Array, fill: float) -> list[jax.Array]:
    """The four entries of each 2x2 window: ``[B, H, W, C] -> 4 x [B, ceil(H/2), ceil(W/2), C]``
    (odd sides padded with ``fill``), in row-major window order."""
    b, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=fill)
    r = x.reshape(b, (h + 1) // 2, 2, (w + 1) // 2, 2, c)
    return [r[:, :, i, :, j] for i in (0, 1) for j in (0, 1)]


@jax.custom_jvp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, SAME padding: ``[B, H, W, C] -> [B, ceil(H/2), ceil(W/2), C]``.

    The same values as ``nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")``, and the same
    derivative (each window's tangent is its first maximum's), written as three comparisons
    and selects over the window's entries rather than XLA's ``reduce_window``, whose
    derivative is XLA's ``select_and_scatter``, slow on CPU, most of all vmapped over the d_z
    cotangents of an exact Jacobian norm (``benchmarks/jacobian.py``). The selects' transpose
    routes each window's gradient to exactly one entry. A mask ``x == max`` (what JAX makes of
    the derivative of a reshaped ``max``) is not robust: it compares two separately computed
    floats for exact equality, and inside jit it gave LeNet gradients far from
    select_and_scatter's (``tests/test_backbones.py``).
    """
    a, b, c, d = _window_entries(x, -jnp.inf)
    return jnp.maximum(jnp.maximum(a, b), jnp.maximum(c, d))


@max_pool_2x2.defjvp
def _max_pool_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    values, slopes = _window_entries(x, -jnp.inf), _window_entries(t, 0.0)
    best, slope = values[0], slopes[0]
    for value, dv in zip(values[1:], slopes[1:], strict=True):
        later = value > best  # strictly: at a tie the first entry keeps the gradient
        best = jnp.where(later, value, best)
        slope = jnp.where(later, dv, slope)
    return best, slope


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
