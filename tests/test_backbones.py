"""VGG32, WRN-16-4, ResNet-18 and LeNet: parameter counts, shapes, train/eval behaviour."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jacosr.models import (
    BACKBONES,
    VGG32,
    WRN,
    ModelConfig,
    OpenSetNet,
    ResNet18,
    apply_model,
    lenet,
    split_model,
)
from jacosr.models.lenet import LeNet

CONV_BACKBONES = {"vgg32": 128, "wrn16_4": 256, "resnet18": 512}


def conv3(a, b):
    return 9 * a * b


def bn(c):
    return 2 * c  # scale and bias (running statistics are BatchStat, not Param)


def vgg32_count():
    layers = [(3, 64), (64, 64), (64, 128)] + [(128, 128)] * 6
    convs = sum(conv3(a, b) for a, b in layers)
    assert convs == 997_056  # "conv weights 997,056 parameters" (Neal et al. 2018 / ARPL)
    return convs + sum(bn(b) for _, b in layers)


def wrn16_4_count():
    def block(a, b):  # pre-activation basic block with a 1x1 projection when a != b
        return bn(a) + conv3(a, b) + bn(b) + conv3(b, b) + (a * b if a != b else 0)

    groups = [(16, 64), (64, 128), (128, 256)]
    blocks = sum(block(a, b) + block(b, b) for a, b in groups)  # (16 - 4) / 6 = 2 per group
    return conv3(3, 16) + blocks + bn(256)


def resnet18_count():
    def block(a, b):  # post-activation basic block, 1x1 conv + BN projection when a != b
        return conv3(a, b) + bn(b) + conv3(b, b) + bn(b) + (a * b + bn(b) if a != b else 0)

    stages = [(64, 64), (64, 128), (128, 256), (256, 512)]
    return conv3(3, 64) + bn(64) + sum(block(a, b) + block(b, b) for a, b in stages)


def count(module):
    return sum(np.prod(x.shape) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize(
    ("make", "closed_form", "with_classifier"),
    [
        # Published / PyTorch counts with a 10-class linear classifier (weight + bias):
        # WRN-16-4 2,748,890 ("2.7M", Zagoruyko & Komodakis Table 1; PyTorch WideResNet(16, 4)),
        # ResNet-18 CIFAR 11,173,962 (the kuangliu/pytorch-cifar ResNet18 count).
        (lambda: VGG32((32, 32, 3), rngs=nnx.Rngs(0)), vgg32_count, 999_104 + 128 * 10 + 10),
        (lambda: WRN((32, 32, 3), rngs=nnx.Rngs(0)), wrn16_4_count, 2_748_890),
        (lambda: ResNet18((32, 32, 3), rngs=nnx.Rngs(0)), resnet18_count, 11_173_962),
    ],
    ids=["vgg32", "wrn16_4", "resnet18"],
)
def test_parameter_counts(make, closed_form, with_classifier):
    model = nnx.eval_shape(make)  # abstract: shapes only, nothing computed
    assert count(model) == closed_form()
    assert count(model) + model.out_dim * 10 + 10 == with_classifier


def _net(name, image_shape):
    """An :class:`OpenSetNet` on the registered backbone ``name``, split for ``apply_model``."""
    config = ModelConfig(backbone=name, embed_dim=CONV_BACKBONES[name])
    net = OpenSetNet(
        config, image_shape=image_shape, num_classes=5, head="cosine", rngs=nnx.Rngs(0)
    )
    return split_model(net)


@pytest.mark.parametrize("name", sorted(CONV_BACKBONES))
def test_shapes_eval_determinism_and_batch_statistics(name):
    # 16x16 keeps compilation short; global average pooling makes the embedding size-free.
    graphdef, state = _net(name, image_shape=(16, 16, 3))
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)

    run = jax.jit(
        lambda state, key, train: apply_model(graphdef, state, x, train=train, key=key),
        static_argnums=2,
    )
    (out_a, stats_a), (out_b, _) = (run(state, jax.random.key(k), False) for k in (1, 2))
    assert out_a.embedding.shape == (3, CONV_BACKBONES[name])
    assert out_a.class_scores.shape == (3, 5)
    # Eval mode: deterministic, the key is ignored, running statistics are left alone.
    np.testing.assert_array_equal(out_a.embedding, out_b.embedding)
    assert all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(stats_a), jax.tree.leaves(state.batch_stats), strict=True)
    )
    # Train mode: batch statistics, so the running averages move.
    out_t, stats_t = run(state, jax.random.key(1), True)
    assert out_t.embedding.shape == (3, CONV_BACKBONES[name])
    assert np.all(np.isfinite(out_t.embedding))
    assert not all(
        np.array_equal(a, b)
        for a, b in zip(jax.tree.leaves(stats_t), jax.tree.leaves(state.batch_stats), strict=True)
    )


def test_vgg32_dropout_varies_with_key_and_drops_whole_channels():
    graphdef, state = _net("vgg32", image_shape=(8, 8, 3))
    x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 3)), jnp.float32)
    run = jax.jit(lambda key: apply_model(graphdef, state, x, train=True, key=key)[0].embedding)
    a, a_again, b = run(jax.random.key(0)), run(jax.random.key(0)), run(jax.random.key(1))
    np.testing.assert_array_equal(a, a_again)
    assert np.abs(a - b).max() > 1e-3

    # Dropout2d: one Bernoulli per (sample, channel), kept ones scaled by 1 / 0.8.
    dropout = VGG32((8, 8, 3), rngs=nnx.Rngs(0)).dropout
    y = np.asarray(dropout(jnp.ones((16, 5, 5, 32)), deterministic=False, rngs=jax.random.key(3)))
    assert np.all(y == y[:, :1, :1, :])  # constant over space
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.8)}
    assert 0.1 < np.mean(y == 0) < 0.3  # rate 0.2 over 512 channels

    model = VGG32((8, 8, 3), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="needs a dropout key"):
        model(x, train=True)


@pytest.mark.parametrize("name", sorted(CONV_BACKBONES))
def test_embed_dim_must_be_the_last_width(name):
    with pytest.raises(ValueError, match=str(CONV_BACKBONES[name])):
        BACKBONES[name]((32, 32, 3), 64, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("shape", [(10, 10, 1), (9, 9, 1)])
def test_lenet_max_pool_trains_as_select_and_scatter(monkeypatch, shape):
    """LeNet's max-pool gives, inside jit and in train mode, the gradient of XLA's own
    ``reduce_window`` max-pool (select_and_scatter: the first maximum of a window takes its
    gradient), on even and odd sides. A mask ``x == max`` did not: XLA computed the
    activations twice, to different last bits, and windows lost their gradient."""
    x = jax.random.normal(jax.random.key(2), (4, *shape))

    def grads():
        model = LeNet(shape, 16, width=32, rngs=nnx.Rngs(0))
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(params):
            out = nnx.merge(graphdef, params, rest, copy=True)(x, train=True)
            return jnp.sum(jnp.sin(out))

        return jax.jit(jax.grad(loss))(params)

    ours = grads()
    monkeypatch.setattr(
        lenet, "max_pool_2x2", lambda x: nnx.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")
    )
    ref = grads()
    scale = max(float(np.abs(b).max()) for b in jax.tree.leaves(ref))
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * scale)
