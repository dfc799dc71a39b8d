"""VGG32: the "classifier32" of Neal et al. (2018), used by ARPL, Vaze et al. and Park et al."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jacosr.models.conv import Conv

# (in, out, stride) of the nine 3x3 convolutions; Dropout2d(0.2) before convs 1, 4 and 7.
_LAYERS = (
    (3, 64, 1),
    (64, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 128, 1),
    (128, 128, 2),
    (128, 128, 1),
    (128, 128, 1),
    (128, 128, 2),
)
_DROPOUT_BEFORE = (0, 3, 6)
WIDTH = 128


def _bn_scale_init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """ARPL's ``weights_init`` for BatchNorm weights: N(1, 0.02^2)."""
    return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class VGG32(nnx.Module):
    """``x: [B, H, W, C] -> [B, 128]``, exactly the ARPL code base's ``classifier32``.

    Nine bias-free 3x3 convolutions (padding 1; strides as in ``_LAYERS``), each followed by
    BatchNorm and LeakyReLU(0.2); channel dropout (PyTorch's ``Dropout2d(0.2)``: one Bernoulli
    per sample and channel, mask ``[B, 1, 1, C]``) before convolutions 1, 4 and 7; global
    average pool. 997,056 convolution weights. Initialisation as ARPL's ``weights_init``:
    conv weights N(0, 0.05^2), BatchNorm scale N(1, 0.02^2), bias 0.

    ``embed_dim`` must be 128, the width of the last convolution: the representation is the
    pooled feature map itself, with no projection (the paper takes the Jacobian of exactly this).
    The first convolution takes ``image_shape[-1]`` channels (3 in the reference model).
    ``dropout``: the Dropout2d rate. ``conv_impl`` selects the convolution
    (see :mod:`jacosr.models.conv`).
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        embed_dim: int = WIDTH,
        *,
        dropout: float = 0.2,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if embed_dim != WIDTH:
            raise ValueError(
                f"VGG32's representation is its last conv width {WIDTH}, not {embed_dim}"
            )
        layers = ((image_shape[-1], *_LAYERS[0][1:]), *_LAYERS[1:])
        conv_init = nnx.initializers.normal(0.05)
        self.convs = nnx.List(
            [
                Conv(a, b, 3, stride=s, padding=1, impl=conv_impl, kernel_init=conv_init, rngs=rngs)
                for a, b, s in layers
            ]
        )
        self.norms = nnx.List(
            [
                nnx.BatchNorm(b, momentum=0.9, epsilon=1e-5, scale_init=_bn_scale_init, rngs=rngs)
                for _, b, _ in layers
            ]
        )
        self.dropout = nnx.Dropout(dropout, broadcast_dims=(1, 2))
        self.out_dim = WIDTH

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        """``x: [B, H, W, C]`` float32 -> ``[B, 128]``.

        ``key`` drives the three dropout layers (one split each) and is required when ``train``
        with a positive dropout rate; eval mode is deterministic and ignores it.
        """
        stochastic = train and self.dropout.rate > 0
        if stochastic and key is None:
            raise ValueError("VGG32 in train mode needs a dropout key")
        keys = iter(jax.random.split(key, len(_DROPOUT_BEFORE))) if stochastic else None
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            if stochastic and i in _DROPOUT_BEFORE:
                x = self.dropout(x, deterministic=False, rngs=next(keys))
            x = nnx.leaky_relu(norm(conv(x), use_running_average=not train), 0.2)
        return x.mean(axis=(1, 2))
