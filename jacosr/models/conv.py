"""Bias-free 2-D convolution whose weight gradient is a sum of matrix products on CPU.

Why this module exists: XLA's CPU backend lowers the weight gradient of a convolution to a
convolution whose "kernel" is the whole output map, which runs several times slower than the
forward convolution, and slower still inside ``lax.scan`` (the multi-step training dispatch;
measured: README, "Speed"). Written per kernel tap ``(i, j)`` as a matrix product,

    dK[i, j] = sum_{b, h, w} x_pad[b, s h + i, s w + j, :]^T dy[b, h, w, :]
             = X_ij^T @ dY          ([Ci, B Ho Wo] @ [B Ho Wo, Co]),

(the im2col weight gradient, one column block of the patch matrix at a time), it runs at
matrix-multiply speed in and out of loops, which raises the backbones' training throughput on
CPU (``benchmarks/train.py``; measured: README, "Speed").

The rule is a ``jax.custom_jvp``, not a ``custom_vjp``, so that forward mode (``jax.jvp``,
``jax.jacfwd``, used by :mod:`jacosr.jacobian`) keeps working: the tangent is written as the sum
of two linear maps, ``conv(dx, K)`` and ``sum_ij X_ij @ dK[i, j]``, and JAX's transpose of the
second is exactly the sum of products above. A tangent that is symbolically zero (the kernel's,
when only the input is differentiated, as in the Jacobian engine) costs nothing, so forward and
reverse mode in the input cost what they cost for ``lax.conv_general_dilated``. Values and all
derivatives equal the plain convolution's up to float32 summation order
(``tests/test_conv.py``).

The input tangent ``conv(dx, K)`` is handed to XLA with the kernel in HWOI layout. It is the
same linear map, but its transpose (the input gradient: a convolution with the reversed kernel
and its I/O dimensions swapped) then arrives in XLA's canonical HWIO layout, which keeps it on
the fast convolution path inside ``lax.scan`` (in the default layout it runs several times
slower there; README, "Speed").

Which implementation: ``impl="auto"`` (the default) resolves at trace time to ``"im2col"``
when ``jax.default_backend() == "cpu"`` and to ``"xla"`` otherwise, because on GPU cuDNN's own
weight gradients are the fast ones. ``"xla"`` and ``"im2col"`` force one or the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.custom_derivatives import SymbolicZero

Padding = tuple[tuple[int, int], tuple[int, int]]

# He et al. (2015) initialisation in fan-out mode, as torchvision's ResNets and the WRN code.
he_normal_fan_out = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def conv_xla(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """``x: [B, H, W, Ci], kernel: [kh, kw, Ci, Co] -> [B, Ho, Wo, Co]``; XLA's convolution."""
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), padding, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def _conv_kernel_hwoi(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """:func:`conv_xla` with the kernel handed to XLA as HWOI (same values; see the module)."""
    return lax.conv_general_dilated(
        x,
        kernel.transpose(0, 1, 3, 2),
        (stride, stride),
        padding,
        dimension_numbers=("NHWC", "HWOI", "NHWC"),
    )


def _conv_by_taps(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """The convolution as ``sum_ij X_ij @ K[i, j]``, ``X_ij: [B Ho Wo, Ci]`` a strided slice.

    Bilinear in ``(x, kernel)``; used for the kernel tangent, whose transpose is the weight
    gradient ``dK[i, j] = X_ij^T @ dY``. Each product is 2-D with a single contracting
    dimension, the form XLA runs without first transposing the cotangent.
    """
    b, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
    ho = (h + sum(padding[0]) - kh) // stride + 1
    wo = (w + sum(padding[1]) - kw) // stride + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            tap = lax.slice(
                xp,
                (0, i, j, 0),
                (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, ci),
                (1, stride, stride, 1),
            )
            term = tap.reshape(-1, ci) @ kernel[i, j]
            out = term if out is None else out + term
    return out.reshape(b, ho, wo, co)


@partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Same values as :func:`conv_xla`; derivatives through matrix products (see the module)."""
    return conv_xla(x, kernel, stride, padding)


@partial(conv_im2col.defjvp, symbolic_zeros=True)
def _conv_im2col_jvp(stride, padding, primals, tangents):
    x, kernel = primals
    dx, dkernel = tangents
    y = conv_xla(x, kernel, stride, padding)
    terms = []
    if not isinstance(dx, SymbolicZero):
        terms.append(_conv_kernel_hwoi(dx, kernel, stride, padding))
    if not isinstance(dkernel, SymbolicZero):
        terms.append(_conv_by_taps(x, dkernel, stride, padding))
    dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
    return y, dy


ConvFn = Callable[[jax.Array, jax.Array, int, Padding], jax.Array]

CONV_IMPLS: dict[str, ConvFn] = {"xla": conv_xla, "im2col": conv_im2col}


def resolve_conv_impl(impl: str) -> str:
    """``"auto"`` -> ``"im2col"`` on the CPU backend, ``"xla"`` elsewhere; else ``impl`` itself."""
    if impl == "auto":
        return "im2col" if jax.default_backend() == "cpu" else "xla"
    if impl not in CONV_IMPLS:
        raise ValueError(
            f"unknown conv impl {impl!r}; valid impls are: auto, {', '.join(sorted(CONV_IMPLS))}"
        )
    return impl


def explicit_padding(
    padding: str | int | Sequence[tuple[int, int]],
    in_hw: Sequence[int],
    window: Sequence[int],
    stride: int,
) -> Padding:
    """``"SAME"``, ``"VALID"``, an int p (p on every side, PyTorch's ``padding=p``) or explicit
    ``((top, bottom), (left, right))`` -> explicit pads."""
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(in_hw, window, (stride, stride), padding)
    elif isinstance(padding, int):
        pads = [(padding, padding)] * 2
    else:
        pads = padding
    (top, bottom), (left, right) = pads
    return ((int(top), int(bottom)), (int(left), int(right)))


def conv2d(
    x: jax.Array,
    kernel: jax.Array,
    *,
    stride: int = 1,
    padding: str | int | Sequence[tuple[int, int]] = "SAME",
    impl: str = "auto",
) -> jax.Array:
    """Bias-free convolution ``x: [B, H, W, Ci], kernel: [kh, kw, Ci, Co] -> [B, Ho, Wo, Co]``.

    ``padding``: see :func:`explicit_padding`. ``impl``: ``"auto"``, ``"xla"`` or ``"im2col"``.
    """
    pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], stride)
    return CONV_IMPLS[resolve_conv_impl(impl)](x, kernel, stride, pads)


class Conv(nnx.Module):
    """Bias-free ``nnx.Conv`` replacement (same ``kernel: [kh, kw, Ci, Co]`` parameter).

    ``padding`` defaults to ``(k - 1) // 2`` on every side, the PyTorch convention of the
    reference architectures; for stride 2 this differs from ``"SAME"``, which pads (0, 1).
    ``kernel_init`` defaults to He normal in fan-out mode. ``impl``: see the module docstring.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: str | int | tuple[tuple[int, int], tuple[int, int]] | None = None,
        impl: str = "auto",
        kernel_init: nnx.Initializer = he_normal_fan_out,
        rngs: nnx.Rngs,
    ):
        resolve_conv_impl(impl)  # fail at construction on a bad name
        shape = (kernel_size, kernel_size, in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape))
        self.stride = stride
        self.padding = (kernel_size - 1) // 2 if padding is None else padding
        self.impl = impl

    def __call__(self, x: jax.Array) -> jax.Array:
        """``x: [B, H, W, Ci] -> [B, Ho, Wo, Co]``."""
        return conv2d(x, self.kernel[...], stride=self.stride, padding=self.padding, impl=self.impl)
