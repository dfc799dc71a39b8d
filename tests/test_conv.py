"""The im2col convolution against lax.conv_general_dilated: values, gradients, forward mode."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import canonical, convolutions
from jax import lax

from jacosr.models import (
    BACKBONES,
    VGG32,
    ModelConfig,
    OpenSetNet,
    apply_model,
    split_model,
)
from jacosr.models.conv import Conv, conv2d, explicit_padding, resolve_conv_impl

# float32, sums over up to 9 * 8 * 2 * 6 * 6 terms in a different order from XLA's.
RTOL = 1e-5


def reference(x, kernel, stride, padding):
    pads = explicit_padding(padding, x.shape[1:3], kernel.shape[:2], stride)
    return lax.conv_general_dilated(
        x, kernel, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def close(a, b, rtol=RTOL):
    """Elementwise to ``rtol`` relative to the largest magnitude (cancellation makes entries
    near zero meaningless on their own)."""
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * np.abs(b).max())


CASE = ("k", "stride", "padding", "h", "w", "ci")
CASES = [
    # (kernel size, stride, padding, H, W, input channels). On 5 channels every derivative of
    # the module's custom rule (strides above 1 split into phases, 1x1 weight gradients as a
    # product); the last two take the patch matrix (3 input channels; a kernel larger than the
    # image).
    (3, 1, "SAME", 6, 6, 5),
    (3, 2, "SAME", 6, 6, 5),
    (3, 1, 1, 7, 5, 5),
    (3, 2, 1, 7, 6, 5),
    (5, 1, "SAME", 7, 6, 5),
    (5, 2, 2, 7, 8, 5),
    (1, 2, 0, 6, 6, 5),
    (3, 2, "VALID", 7, 7, 5),
    (5, 1, "VALID", 7, 7, 5),
    (3, 2, 1, 7, 6, 3),
    (5, 1, "SAME", 4, 4, 5),
]
JVP_CASES = CASES[:6] + CASES[-2:]


def _inputs(seed, k, h, w, ci=5, co=4):
    """``x: [2, h, w, ci]``, ``kernel: [k, k, ci, co]`` and a numpy generator for tangents
    (numpy, so that making inputs compiles nothing)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, h, w, ci), dtype=np.float32)
    kernel = rng.standard_normal((k, k, ci, co), dtype=np.float32) / k
    return x, kernel, rng


@pytest.mark.parametrize(CASE, CASES)
def test_values_and_gradients_match_plain_convolution(k, stride, padding, h, w, ci):
    def value_and_grads(conv):
        def f(x, kernel, cotangent):
            y, vjp = jax.vjp(conv, x, kernel)
            return y, *vjp(cotangent)

        return jax.jit(f)

    ours = value_and_grads(
        lambda x, k_: conv2d(x, k_, stride=stride, padding=padding, impl="im2col")
    )
    ref = value_and_grads(lambda x, k_: reference(x, k_, stride, padding))
    for seed in (0, 1):
        x, kernel, rng = _inputs(seed, k, h, w, ci)
        shape = jax.eval_shape(partial(reference, stride=stride, padding=padding), x, kernel).shape
        cotangent = rng.standard_normal(shape, dtype=np.float32)
        # value, input gradient, kernel gradient (the im2col products)
        for a, b in zip(ours(x, kernel, cotangent), ref(x, kernel, cotangent), strict=True):
            close(a, b)


@pytest.mark.parametrize(CASE, JVP_CASES)
def test_forward_mode_matches_plain_convolution(k, stride, padding, h, w, ci):
    x, kernel, rng = _inputs(3, k, h, w, ci)
    dx, dk = rng.standard_normal(x.shape, np.float32), rng.standard_normal(kernel.shape, np.float32)

    def derivatives(conv):
        def f(x, kernel, dx, dk):
            def loss(k_):
                return jnp.sum(jnp.tanh(conv(x, k_)))

            return (
                jax.jvp(conv, (x, kernel), (dx, dk))[1],  # both tangents
                jax.jvp(lambda x_: conv(x_, kernel), (x,), (dx,))[1],  # kernel tangent zero
                jax.jvp(lambda k_: conv(x, k_), (kernel,), (dk,))[1],  # input tangent zero
                jax.jvp(jax.grad(loss), (kernel,), (dk,))[1],  # Hessian-vector product
            )

        return jax.jit(f)

    ours = derivatives(lambda x, k_: conv2d(x, k_, stride=stride, padding=padding, impl="im2col"))
    ref = derivatives(lambda x, k_: reference(x, k_, stride, padding))
    rtols = (RTOL, RTOL, RTOL, 1e-4)
    for a, b, rtol in zip(ours(x, kernel, dx, dk), ref(x, kernel, dx, dk), rtols, strict=True):
        close(a, b, rtol)


@pytest.mark.parametrize(CASE, CASES)
def test_gradients_are_canonicalconvolutions(k, stride, padding, h, w, ci):
    """Every convolution of the value and both gradients is in XLA's canonical layout (NHWC
    input, HWIO kernel) without an input dilated by zeros: the form XLA's CPU backend runs at
    convolution speed inside the training loop. XLA's own gradients are not."""
    x, kernel, rng = _inputs(0, k, h, w, ci)
    shape = jax.eval_shape(partial(reference, stride=stride, padding=padding), x, kernel).shape
    cotangent = rng.standard_normal(shape, dtype=np.float32)

    def value_and_grads(impl):
        def f(x, kernel, cotangent):
            conv = partial(conv2d, stride=stride, padding=padding, impl=impl)
            y, vjp = jax.vjp(conv, x, kernel)
            return y, *vjp(cotangent)

        return f

    ours = convolutions(value_and_grads("im2col"), x, kernel, cotangent)
    plain = convolutions(value_and_grads("xla"), x, kernel, cotangent)
    assert all(map(canonical, ours)), ours  # none at all on the patch matrix
    assert not all(map(canonical, plain))


@pytest.mark.parametrize(CASE, CASES)
def test_gradients_of_jacobian_vector_products_are_canonical(k, stride, padding, h, w, ci):
    """The known-class Jacobian term (jacosr.jacobian.penalties) differentiates a JVP: the
    gradient of ``||J u||^2`` in the input and the kernel, through a nonlinearity. Its values
    equal plain convolution's, and every convolution of the program, the JVP's value among
    them, is canonical too (XLA's own forms of these second derivatives, and the JVP in the
    HWOI form whose transpose is canonical, ran many times slower inside the training loop;
    README, "Speed")."""
    x, kernel, rng = _inputs(0, k, h, w, ci)
    u = rng.standard_normal(x.shape, dtype=np.float32)

    def term(impl):
        def f(x, kernel, u):
            conv = partial(conv2d, stride=stride, padding=padding, impl=impl)

            def sqnorm(x, kernel):
                _, t = jax.jvp(lambda x_: jnp.tanh(conv(x_, kernel)), (x,), (u,))
                return jnp.sum(jnp.square(t))

            return jax.value_and_grad(sqnorm, argnums=(0, 1))(x, kernel)

        return f

    ours = convolutions(term("im2col"), x, kernel, u)
    assert all(map(canonical, ours)), ours
    value, grads = jax.jit(term("im2col"))(x, kernel, u)
    ref_value, ref_grads = jax.jit(term("xla"))(x, kernel, u)
    close(value, ref_value, RTOL)
    for a, b in zip(grads, ref_grads, strict=True):
        close(a, b, 1e-4)


def test_impl_resolution():
    assert resolve_conv_impl("auto") == ("im2col" if jax.default_backend() == "cpu" else "xla")
    assert resolve_conv_impl("xla") == "xla"
    with pytest.raises(ValueError, match="valid impls are: auto, im2col, xla"):
        resolve_conv_impl("cudnn")
    with pytest.raises(ValueError, match="unknown conv impl"):
        Conv(3, 4, rngs=nnx.Rngs(0), impl="fast")


def _vgg_pair(image_shape):
    """Two VGG32s with identical parameters, one per convolution implementation."""
    ours = VGG32(image_shape, conv_impl="im2col", rngs=nnx.Rngs(0))
    plain = VGG32(image_shape, conv_impl="xla", rngs=nnx.Rngs(0))
    return ours, plain


def test_vgg32_embedding_jacobians_match_plain_convolution():
    """jacfwd and jacrev of the eval-mode embedding agree across implementations and modes."""
    ours, plain = _vgg_pair((8, 8, 3))
    x = jax.random.normal(jax.random.key(1), (8, 8, 3))

    def embedding(model):
        return lambda x: model(x[None])[0]

    j_fwd = jax.jit(jax.jacfwd(embedding(ours)))(x)
    j_rev = jax.jit(jax.jacrev(embedding(ours)))(x)
    j_ref = jax.jit(jax.jacrev(embedding(plain)))(x)
    assert j_fwd.shape == (128, 8, 8, 3)
    close(j_fwd, j_ref, rtol=1e-4)
    close(j_rev, j_ref, rtol=1e-4)


# backbone -> (image shape, ModelConfig): VGG32's strided 3x3 convolutions, LeNet's 5x5 ones
TRAINED = {
    "vgg32": ((8, 8, 3), ModelConfig(backbone="vgg32")),
    "lenet": ((10, 10, 1), ModelConfig(backbone="lenet", embed_dim=16, width=32)),
}


@pytest.mark.parametrize("name", TRAINED)
def test_training_gradient_matches_plain_convolution(name):
    """Parameter gradients in train mode (batch statistics, dropout) agree across impls."""
    shape = TRAINED[name][0]
    graphs = [split_model(_net(name, impl)) for impl in ("im2col", "xla")]
    x = jax.random.normal(jax.random.key(2), (4, *shape))
    key = jax.random.key(3)

    def grads(graphdef, state):
        def loss(params):
            out, _ = apply_model(graphdef, state._replace(params=params), x, train=True, key=key)
            return jnp.sum(jnp.sin(out.class_scores))

        return jax.jit(jax.grad(loss))(state.params)

    ours, ref = (grads(*g) for g in graphs)
    # Against the largest entry of any leaf: LeNet's dense bias feeds BatchNorm, so its exact
    # gradient is zero and its computed one rounding noise.
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(ref))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)


def _net(name, impl):
    """The network of ``TRAINED[name]`` with its backbone's convolutions on ``impl``; the
    same parameters for every ``impl``."""
    shape, config = TRAINED[name]
    net = OpenSetNet(config, image_shape=shape, num_classes=3, head="linear", rngs=nnx.Rngs(5))
    kwargs = {"width": config.width} if name == "lenet" else {}
    net.backbone = BACKBONES[name](
        shape, config.embed_dim, conv_impl=impl, rngs=nnx.Rngs(0), **kwargs
    )
    return net
