"""ResNet-18 with the CIFAR stem (He et al. 2016; the common 32x32 variant)."""

from __future__ import annotations

import jax
from flax import nnx

from jacosr.models.conv import Conv, he_normal_fan_out


def _bn(features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    return nnx.BatchNorm(features, momentum=0.9, epsilon=1e-5, rngs=rngs)


class BasicBlock(nnx.Module):
    """``ReLU(BN(conv3x3(ReLU(BN(conv3x3(x, stride))))) + shortcut(x))``.

    The shortcut is ``BN(conv1x1(x, stride))`` when the width or resolution changes (option B
    of He et al.), the identity otherwise.
    """

    def __init__(self, cin: int, cout: int, stride: int, *, conv_impl: str, rngs: nnx.Rngs):
        kw = {"impl": conv_impl, "kernel_init": he_normal_fan_out, "rngs": rngs}
        self.conv1 = Conv(cin, cout, 3, stride=stride, **kw)
        self.bn1 = _bn(cout, rngs)
        self.conv2 = Conv(cout, cout, 3, **kw)
        self.bn2 = _bn(cout, rngs)
        if cin != cout or stride != 1:
            self.shortcut = Conv(cin, cout, 1, stride=stride, padding=0, **kw)
            self.shortcut_bn = _bn(cout, rngs)
        else:
            self.shortcut = self.shortcut_bn = None

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        avg = not train
        h = nnx.relu(self.bn1(self.conv1(x), use_running_average=avg))
        h = self.bn2(self.conv2(h), use_running_average=avg)
        if self.shortcut is not None:
            x = self.shortcut_bn(self.shortcut(x), use_running_average=avg)
        return nnx.relu(h + x)


class ResNet18(nnx.Module):
    """``x: [B, H, W, C] -> [B, 512]``: ResNet-18 for 32x32 inputs.

    CIFAR stem (3x3 convolution, stride 1, 64 channels, BN, ReLU; no max-pool), four stages of
    two basic blocks of widths 64, 128, 256, 512 (strides 1, 2, 2, 2), global average pool.
    Bias-free convolutions with He (fan-out) initialisation, as torchvision. The backbone has
    11,168,832 parameters (11,173,962 with a 10-class linear classifier).

    ``embed_dim`` must be 512, the last width: the representation is the pooled feature map.
    ``conv_impl``: see :mod:`jacosr.models.conv`.
    """

    def __init__(
        self,
        image_shape: tuple[int, ...],
        embed_dim: int = 512,
        *,
        conv_impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        widths = (64, 128, 256, 512)
        if embed_dim != widths[-1]:
            raise ValueError(
                f"ResNet-18's representation is its last width {widths[-1]}; "
                f"set embed_dim={widths[-1]} (got {embed_dim})"
            )
        self.stem = Conv(
            image_shape[-1], 64, 3, impl=conv_impl, kernel_init=he_normal_fan_out, rngs=rngs
        )
        self.stem_bn = _bn(64, rngs)
        blocks, cin = [], 64
        for width, stride in zip(widths, (1, 2, 2, 2), strict=True):
            for i in range(2):
                blocks.append(
                    BasicBlock(cin, width, stride if i == 0 else 1, conv_impl=conv_impl, rngs=rngs)
                )
                cin = width
        self.blocks = nnx.List(blocks)
        self.out_dim = cin

    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None):
        """``x: [B, H, W, C]`` float32 -> ``[B, 512]``; no stochastic layers, ``key`` unused."""
        del key
        h = nnx.relu(self.stem_bn(self.stem(x), use_running_average=not train))
        for block in self.blocks:
            h = block(h, train=train)
        return h.mean(axis=(1, 2))
