"""Bias-free 2-D convolution whose derivatives run on XLA's fast CPU paths, in loops too.

Why this module exists: XLA's CPU backend runs a convolution fast only in its canonical form
(NHWC input, HWIO kernel, no zeros inserted into the input); any other form falls to a
generic loop nest, which is many times slower, and inside ``lax.scan`` / ``fori_loop`` (the
multi-step training dispatch) XLA does not rewrite one form into the other. JAX's own
derivatives of a convolution are in other forms: the weight gradient is a convolution whose
"kernel" is the whole output map, and the input gradient of a strided convolution convolves an
input dilated with zeros (``s^2`` times the products). Here every derivative is written so that
what XLA runs is canonical convolutions and matrix products (``tests/test_conv.py`` checks the
programs):

* Input gradient. The input tangent ``conv(dx, K)`` is handed to XLA with the kernel in HWOI
  layout: the same linear map, whose transpose (a convolution with the reversed kernel and its
  I/O dimensions swapped) then arrives in the canonical HWIO layout. A strided convolution is
  first split into its stride-1 phases (:func:`_phases`), so that the transpose is ``s^2``
  small canonical convolutions, each scattered into its phase of the input gradient.
* Weight gradient. As one canonical convolution with the batch as the feature dimension and
  the input channels as the batch (:func:`_conv_batch_as_features`), whose "kernel" is the
  output gradient; a 1x1 kernel's as one matrix product ``dK = X^T @ dY`` (``[Ci, B Ho Wo] @
  [B Ho Wo, Co]``, :func:`_conv_by_patches`), where the convolution form only adds transposes.
* Small patches. A convolution on 1 to 3 input channels (every backbone's first layer), or
  with a kernel larger than its input map, is one matrix product of its explicit patch matrix
  (im2col, :data:`PATCHES_MAX_ROW`), values and derivatives alike.

XLA's CPU backend has two convolution libraries: YNNPACK (its default) splits a convolution
over tiles of output channels, so that a layer with at most 64 of them (LeNet's, the first
stages of VGG32, WRN-16-4 and ResNet-18) runs on one core; Eigen's convolutions use every core.
:func:`jacosr.config.configure_xla` (called by every jacosr command) hands convolutions to
Eigen, and the forms above are the faster ones there (``benchmarks/train.py``, README "Speed").

The rule is a ``jax.custom_jvp``, not a ``custom_vjp``, so that forward mode (``jax.jvp``,
``jax.jacfwd``, used by :mod:`jacosr.jacobian`) keeps working: the tangent is written as the sum
of two linear maps, the input tangent and the kernel tangent above, and JAX's transposes of
them are the gradients described. A tangent that is symbolically zero (the kernel's, when only
the input is differentiated, as in the Jacobian engine) costs nothing. Values and all
derivatives equal the plain convolution's up to float32 summation order
(``tests/test_conv.py``).

Which implementation: ``impl="auto"`` (the default) resolves at trace time to ``"im2col"``
when ``jax.default_backend() == "cpu"`` and to ``"xla"`` otherwise, because on GPU cuDNN's own
derivatives are the fast ones. ``"xla"`` and ``"im2col"`` force one or the other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax
from jax.custom_derivatives import SymbolicZero

Padding = tuple[tuple[int, int], tuple[int, int]]
ConvFn = Callable[[jax.Array, jax.Array, int, Padding], jax.Array]

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


def _phases(
    xp: jax.Array, kernel: jax.Array, stride: int, out_hw: tuple[int, int]
) -> list[tuple[jax.Array, jax.Array]]:
    """A stride-``s`` convolution of the padded ``xp`` as stride-1 ones over its phases.

    With taps ``i = s a + p`` and ``j = s c + q``, ``xp[s h + i, s w + j] = xp_pq[h + a, w + c]``
    for ``xp_pq = xp[p::s, q::s]``, so ``y = sum_pq conv_valid(xp_pq, K[p::s, q::s])``: the same
    products as the strided convolution, none wasted. Returns the ``(xp_pq, K_pq)`` pairs, each
    ``xp_pq`` cut to the rows and columns that reach an output in ``out_hw``.
    """
    b, _, _, ci = xp.shape
    kh, kw = kernel.shape[:2]
    ho, wo = out_hw
    pairs = []
    for p in range(min(stride, kh)):
        for q in range(min(stride, kw)):
            k_pq = kernel[p::stride, q::stride]
            a, c = k_pq.shape[:2]
            x_pq = lax.slice(
                xp,
                (0, p, q, 0),
                (b, p + stride * (ho + a - 2) + 1, q + stride * (wo + c - 2) + 1, ci),
                (1, stride, stride, 1),
            )
            pairs.append((x_pq, k_pq))
    return pairs


def _input_tangent(dx: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """``conv(dx, K)``, written so that its transpose (the input gradient) is XLA's canonical
    stride-1 convolution: HWOI for stride 1 (see the module), and for larger strides a sum over
    :func:`_phases`, whose transpose scatters each phase's stride-1 gradient into place instead
    of convolving an input dilated with zeros (s^2 times the products, on XLA's slow path)."""
    if stride == 1:
        return _conv_kernel_hwoi(dx, kernel, 1, padding)
    _, h, w, _ = dx.shape
    kh, kw = kernel.shape[:2]
    out_hw = (_out_size(h, padding[0], kh, stride), _out_size(w, padding[1], kw, stride))
    pairs = _phases(_pad(dx, padding), kernel, stride, out_hw)
    terms = [_conv_kernel_hwoi(x_pq, k_pq, 1, ((0, 0), (0, 0))) for x_pq, k_pq in pairs]
    return sum(terms[1:], terms[0])


def _conv_by_patches(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """The convolution as one matrix product ``P @ K``: ``P: [B Ho Wo, kh kw Ci]`` the explicit
    patch matrix (im2col; its column block ``(i, j)`` the strided slice ``X_ij`` of the padded
    input), ``K: [kh kw Ci, Co]``. Plain JAX derivatives: the weight gradient is
    ``P^T @ dY``, the input gradient ``dY @ K^T`` added back into place by the transposes of
    the slices; all of them matrix products and copies, which XLA runs at speed in loops."""
    b, h, w, ci = x.shape
    kh, kw, _, co = kernel.shape
    xp = _pad(x, padding)
    ho = _out_size(h, padding[0], kh, stride)
    wo = _out_size(w, padding[1], kw, stride)
    taps = [
        lax.slice(
            xp,
            (0, i, j, 0),
            (b, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, ci),
            (1, stride, stride, 1),
        )
        for i in range(kh)
        for j in range(kw)
    ]
    patches = taps[0] if len(taps) == 1 else jnp.concatenate(taps, axis=-1)
    return (patches.reshape(-1, kh * kw * ci) @ kernel.reshape(-1, co)).reshape(b, ho, wo, co)


def _conv_batch_as_features(
    x: jax.Array, kernel: jax.Array, stride: int, padding: Padding
) -> jax.Array:
    """:func:`conv_xla` with the batch as XLA's feature dimension and the input channels as its
    batch: ``x`` as ``[Ci, H, W, B]``, the kernel as ``[Ci, kh, kw, Co]``, the output as
    ``[Ho, Wo, B, Co]``. The same values; JAX's transpose in the kernel, the weight gradient
    ``dK[c, i, j, o] = sum_{h, w, b} x[c, s h + i, s w + j, b] dY[h, w, b, o]`` (a convolution
    whose kernel is the output gradient, dilated by the stride), is then in XLA's canonical
    layout (NHWC input, HWIO kernel), which XLA runs at convolution speed inside loops too."""
    y = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0),
        kernel.transpose(2, 0, 1, 3),
        (stride, stride),
        padding,
        dimension_numbers=("CHWN", "IHWO", "HWNC"),
    )
    return y.transpose(2, 0, 1, 3)


def _kernel_tangent(x: jax.Array, dkernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """``conv(x, dK)``, in the form whose transpose is the faster weight gradient: one matrix
    product for a 1x1 kernel, one canonical convolution for larger ones."""
    if dkernel.shape[:2] == (1, 1):
        return _conv_by_patches(x, dkernel, stride, padding)
    return _conv_batch_as_features(x, dkernel, stride, padding)


def _pad(x: jax.Array, padding: Padding) -> jax.Array:
    return jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))


def _out_size(n: int, pads: tuple[int, int], k: int, stride: int) -> int:
    return (n + sum(pads) - k) // stride + 1


PATCHES_MAX_ROW = 32
"""A convolution whose patch row ``kh kw Ci`` has at most this many entries (the first layer of
each backbone, on 1 or 3 input channels), or whose kernel is larger than its input map (most of
every window is padding: LeNet's second layer on 8x8 digits), runs as one matrix product of
its explicit patch matrix (:func:`_conv_by_patches`), which is small there; the convolution
kernels of XLA's CPU backend are slow on so few input channels and on so much padding."""


def conv_im2col(x: jax.Array, kernel: jax.Array, stride: int, padding: Padding) -> jax.Array:
    """Same values as :func:`conv_xla`; derivatives through canonical convolutions and matrix
    products (see the module), or the whole convolution as one product of its patch matrix
    (:data:`PATCHES_MAX_ROW`)."""
    kh, kw, ci, _ = kernel.shape
    if kh * kw * ci <= PATCHES_MAX_ROW or kh > x.shape[1] or kw > x.shape[2]:
        return _conv_by_patches(x, kernel, stride, padding)
    return _conv_canonical(x, kernel, stride, padding)


def _bilinear(form: ConvFn) -> ConvFn:
    """``form`` (one way of writing ``conv(x, K)``) as a ``jax.custom_jvp`` whose tangent is
    :func:`_conv_input_form` ``(dx, K)`` + :func:`_conv_kernel_form` ``(x, dK)``: the same
    bilinear map, each term in the form whose transpose is the fast derivative. The terms are
    such functions too, so derivatives of derivatives keep the fast forms: the gradient of a
    Jacobian-vector product (the known-class Jacobian term, :mod:`jacosr.jacobian.penalties`)
    differentiates the tangent ``conv(dx, K)`` in ``K``, which is then the canonical weight
    gradient with ``dx`` as the input, not JAX's own (XLA's slow path inside loops); and the
    value of ``conv(dx, K)`` there is computed in the canonical form, not in the HWOI form
    whose transpose is canonical (the two compute the same values; inside a loop XLA's CPU
    backend runs the HWOI form many times slower)."""
    fn = jax.custom_jvp(form, nondiff_argnums=(2, 3))

    def jvp(stride, padding, primals, tangents):
        x, kernel = primals
        dx, dkernel = tangents
        y = _conv_canonical(x, kernel, stride, padding)  # the same values, the fast form
        terms = []
        if not isinstance(dx, SymbolicZero):
            terms.append(_conv_input_form(dx, kernel, stride, padding))
        if not isinstance(dkernel, SymbolicZero):
            terms.append(_conv_kernel_form(x, dkernel, stride, padding))
        dy = sum(terms[1:], terms[0]) if terms else jnp.zeros_like(y)
        return y, dy

    fn.defjvp(jvp, symbolic_zeros=True)
    return fn


_conv_canonical = _bilinear(conv_xla)
""":func:`conv_xla` with the derivatives of the module docstring."""
_conv_input_form = _bilinear(_input_tangent)
_conv_kernel_form = _bilinear(_kernel_tangent)


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
