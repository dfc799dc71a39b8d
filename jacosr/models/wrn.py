"""Wide ResNet WRN-16-4 (Zagoruyko & Komodakis 2016) for 32x32 images."""

from __future__ import annotations

import jax
from flax import nnx

from jacosr.models.conv import Conv, he_normal_fan_out


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class PreActBlock(nnx.Module):
    """Pre-activation basic block: ``BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3`` plus shortcut.

    When the width or resolution changes, the shortcut is a 1x1 convolution of the
    pre-activated input (as in the authors' code); otherwise it is the identity.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, conv_impl: str, rngs: nnx.Rngs):
        kw = {"impl": conv_impl, "kernel_init": he_normal_fan_out, "rngs": rngs}
        self.bn1 = _bn(cin, rngs)
        self.conv1 = Conv(cin, cout, 3, stride=stride, **kw)
        self.bn2 = _bn(cout, rngs)
        self.conv2 = Conv(cout, cout, 3, **kw)
        projection = cin != cout or stride != 1
        self.shortcut = Conv(cin, cout, 1, stride=stride, padding=0, **kw) if projection else None

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        avg = not train
        a = nnx.relu(self.bn1(x, use_running_average=avg))
        h = self.conv1(a)
        h = self.conv2(nnx.relu(self.bn2(h, use_running_average=avg)))
        return h + (self.shortcut(a) if self.shortcut is not None else x)


class WRN(nnx.Module):
    """``x: [B, H, W, C] -> [B, 16 k]``: WRN-``depth``-``k``, by default WRN-16-4 (256-d).

    A 3x3 convolution to 16 channels, three groups of ``(depth - 4) / 6`` pre-activation basic
    blocks of widths ``16k, 32k, 64k`` (strides 1, 2, 2), BatchNorm + ReLU, global average pool.
    Bias-free convolutions with He (fan-out) initialisation; no dropout. For WRN-16-4 the
    backbone has 2,746,320 parameters (2,748,890 with a 10-class linear classifier).

    ``embed_dim`` must equal the last width ``64 k`` (256): the representation is the pooled
    feature map itself. ``conv_impl``: see :mod:`jacosr.models.conv`.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        embed_dim: int = 256,
        *,
        depth: int = 16,
        widen: int = 4,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6 n + 4, got {depth}")
        widths = (16 * widen, 32 * widen, 64 * widen)
        if embed_dim != widths[-1]:
            raise ValueError(
                f"WRN-{depth}-{widen}'s representation is its last width {widths[-1]}; "
                f"set embed_dim={widths[-1]} (got {embed_dim})"
            )
        n = (depth - 4) // 6
        self.stem = Conv(
            image_shape[-1], 16, 3, impl=conv_impl, kernel_init=he_normal_fan_out, rngs=rngs
        )
        blocks, cin = [], 16
        for width, stride in zip(widths, (1, 2, 2), strict=True):
            for i in range(n):
                blocks.append(
                    PreActBlock(cin, width, stride if i == 0 else 1, conv_impl=conv_impl, rngs=rngs)
                )
                cin = width
        self.blocks = nnx.List(blocks)
        self.bn = _bn(cin, rngs)
        self.out_dim = cin

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        """``x: [B, H, W, C]`` float32 -> ``[B, 64 k]``; no stochastic layers, ``key`` unused."""
        del key
        h = self.stem(x)
        for block in self.blocks:
            h = block(h, train=train)
        h = nnx.relu(self.bn(h, use_running_average=not train))
        return h.mean(axis=(1, 2))
