"""Models: the pure functional view, eval mode, the embedding function, head closed forms."""

import jax
import numpy as np
import pytest
from flax import nnx

from jacosr.models import (
    HEAD_SCORES,
    ModelConfig,
    OpenSetNet,
    apply_model,
    embedding_apply,
    embedding_fn,
    split_model,
)


def _model(backbone="mlp", head="cosine", seed=0):
    return OpenSetNet(
        ModelConfig(backbone=backbone, embed_dim=16, width=32),
        image_shape=(8, 8, 1),
        num_classes=4,
        head=head,
        rngs=nnx.Rngs(seed),
    )


# The forward pass as its users call it, inside jit (eager NNX compiles every op on its own).
apply = jax.jit(apply_model, static_argnums=0, static_argnames="train")


def _normal(seed, shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _trained_stats(graphdef, state, seed=1):
    """Move BatchNorm running statistics away from their init by a few train-mode passes."""
    for i in range(3):
        x = _normal(seed + i, (32, 8, 8, 1)) * 2 + 0.5
        _, stats = apply(graphdef, state, x, train=True)
        state = state._replace(batch_stats=stats)
    return state


@pytest.mark.parametrize("backbone", ["mlp", "lenet"])
def test_embedding_functions_are_eval_mode_and_match_batched_outputs(backbone):
    graphdef, state = split_model(_model(backbone))
    state = _trained_stats(graphdef, state)
    xs = _normal(7, (5, 8, 8, 1))
    batched, stats = apply(graphdef, state, xs, train=False)
    # One sample at a time: eval mode does not depend on the batch.
    single = jax.jit(jax.vmap(embedding_apply(graphdef), (None, 0)))(state, xs)
    np.testing.assert_allclose(single, batched.embedding, rtol=1e-5, atol=1e-6)
    # eval mode leaves running statistics untouched
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(state.batch_stats), strict=True):
        np.testing.assert_array_equal(a, b)
    f = embedding_fn(graphdef, state)
    z = jax.jit(f)(xs[0])
    assert z.shape == (16,)
    np.testing.assert_allclose(z, batched.embedding[0], rtol=1e-5, atol=1e-6)


def test_embedding_apply_is_equal_for_equal_architectures():
    # The Jacobian engine's compiled programs are keyed on it: equal architectures share them.
    def architecture(**kwargs):  # the graphdef alone: nothing is initialised
        return split_model(nnx.eval_shape(lambda: _model(**kwargs)))[0]

    a, b = embedding_apply(architecture(seed=0)), embedding_apply(architecture(seed=1))
    assert a == b and hash(a) == hash(b)
    assert a != embedding_apply(architecture(head="linear"))


def test_train_mode_uses_batch_statistics_and_updates_them():
    graphdef, state = split_model(_model())
    xs = _normal(0, (16, 8, 8, 1)) + 3.0
    out_train, stats = apply(graphdef, state, xs, train=True)
    out_eval, _ = apply(graphdef, state, xs, train=False)
    assert not np.allclose(out_train.embedding, out_eval.embedding)
    changed = [
        not np.allclose(a, b)
        for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(state.batch_stats), strict=True)
    ]
    assert all(changed)


def test_cosine_head_normalises_embedding_and_prototypes():
    graphdef, state = split_model(_model(head="cosine"))
    out, _ = apply(graphdef, state, _normal(1, (6, 8, 8, 1)))
    np.testing.assert_allclose(np.linalg.norm(out.embedding, axis=1), 1.0, rtol=1e-5)
    w = np.asarray(state.params["head"]["prototypes"][...])
    w = w / np.linalg.norm(w, axis=1, keepdims=True)
    np.testing.assert_allclose(out.class_scores, out.embedding @ w.T, rtol=1e-5, atol=1e-6)
    assert np.all(np.abs(out.class_scores) <= 1.0 + 1e-6)


def test_linear_head_keeps_raw_embedding():
    graphdef, state = split_model(_model(head="linear"))
    out, _ = apply(graphdef, state, _normal(1, (6, 8, 8, 1)))
    assert not np.allclose(np.linalg.norm(out.embedding, axis=1), 1.0)
    w = np.asarray(state.params["head"]["prototypes"][...])
    b = np.asarray(state.params["head"]["bias"][...])
    np.testing.assert_allclose(out.class_scores, out.embedding @ w.T + b, rtol=1e-5, atol=1e-5)


def test_distance_heads_closed_form():
    rng = np.random.default_rng(0)
    f, w, b = rng.normal(size=(5, 3)), rng.normal(size=(4, 3)), np.zeros(4)
    d2 = ((f[:, None, :] - w[None]) ** 2).sum(-1)
    np.testing.assert_allclose(HEAD_SCORES["distance"](f, w, b), -d2, rtol=1e-5, atol=1e-5)


def test_unknown_backbone_is_a_clear_error():
    with pytest.raises(ValueError, match=r"^--backbone must be one of lenet, mlp, .*; got 'vit'"):
        ModelConfig(backbone="vit")
