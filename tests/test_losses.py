"""Losses against hand computations, finite gradients at cos = +-1, Propositions 5 and 6.

(That training on digits lowers every loss is tested through the CLI in tests/test_train.py.)
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jacosr.losses import (
    LOSSES,
    LossConfig,
    angular_margin,
    loss_doc,
    loss_gcpl,
    loss_movr,
    loss_nsce,
    loss_rotation,
    loss_rpl,
    loss_sce,
    loss_spec,
    per_sample_loss,
)
from jacosr.models import HEAD_SCORES, Outputs


def _softplus(x):
    return math.log1p(math.exp(x))


def test_sce_hand_computed():
    logits = jnp.array([[1.0, 2.0, 0.5], [0.0, 0.0, 0.0]])
    labels = jnp.array([1, 2])
    expected0 = -(2.0 - math.log(math.exp(1.0) + math.exp(2.0) + math.exp(0.5)))
    np.testing.assert_allclose(loss_sce(logits, labels), [expected0, math.log(3.0)], rtol=1e-6)


def test_nsce_is_sce_of_scaled_cosines():
    cos = jnp.array([[0.5, -0.25]])
    expected = math.log(1 + math.exp(4.0 * (-0.25 - 0.5)))  # T = 4, label 0
    np.testing.assert_allclose(loss_nsce(cos, jnp.array([0]), scale=4.0), [expected], rtol=1e-6)


def test_movr_hand_computed():
    # K = 2, label 0: L = softplus(-T cos(t0 + m)) + softplus(T cos(t1 + m)).
    c0, c1, t, m = 0.8, -0.3, 2.0, 0.5
    s0 = math.cos(math.acos(c0) + m)
    s1 = math.cos(math.acos(c1) + m)
    expected = _softplus(-t * s0) + _softplus(t * s1)
    got = loss_movr(jnp.array([[c0, c1]]), jnp.array([0]), scale=t, margin_pos=m, margin_neg=m)
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


def test_movr_separate_margins():
    c0, c1, t = 0.8, -0.3, 2.0
    expected = _softplus(-t * math.cos(math.acos(c0) + 0.2)) + _softplus(
        t * math.cos(math.acos(c1) + 0.7)
    )
    got = loss_movr(jnp.array([[c0, c1]]), jnp.array([0]), scale=t, margin_pos=0.2, margin_neg=0.7)
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


def test_movr_without_margin_is_binary_cross_entropy():
    cos = jnp.array([[0.9, 0.1, -0.4]])
    p = 1 / (1 + np.exp(-3.0 * np.array([0.9, 0.1, -0.4])))
    expected = -(np.log(p[0]) + np.log(1 - p[1]) + np.log(1 - p[2]))
    got = loss_movr(cos, jnp.array([0]), scale=3.0, margin_pos=0.0, margin_neg=0.0)
    np.testing.assert_allclose(got, [expected], rtol=1e-5)


@pytest.mark.parametrize("c", [-1.0, 1.0, 0.9999999, -0.9999999])
def test_movr_gradient_finite_at_cosine_extremes(c):
    cos = jnp.array([[c, -c, 0.3]])
    g = jax.grad(lambda z: loss_movr(z, jnp.array([0])).sum())(cos)
    assert np.all(np.isfinite(g))


def test_movr_gradient_finite_through_normalisation_when_f_equals_w():
    from jacosr.models import unit_normalise

    w = jnp.array([[0.6, 0.8], [-0.6, -0.8]])

    def loss(f):
        cos = unit_normalise(f) @ unit_normalise(w).T
        return loss_movr(cos, jnp.array([0])).sum()

    g = jax.grad(loss)(jnp.array([[0.6, 0.8]]))  # cos = +1 and -1 exactly
    assert np.all(np.isfinite(g))


def test_angular_margin_matches_arccos_inside():
    c = jnp.linspace(-0.99, 0.99, 41)
    np.testing.assert_allclose(angular_margin(c, 0.5), jnp.cos(jnp.arccos(c) + 0.5), atol=1e-5)


def test_registry_and_error():
    assert set(LOSSES) == {"sce", "nsce", "doc", "movr", "gcpl", "rpl"}
    with pytest.raises(ValueError, match=r"unknown loss 'arcface'; valid losses are: .*movr"):
        loss_spec("arcface")
    cfg = LossConfig(loss="nsce", scale=5.0)
    cos = jnp.array([[0.2, 0.1]])
    np.testing.assert_allclose(
        per_sample_loss(cfg, Outputs(jnp.ones((1, 3)), cos), jnp.array([1])),
        loss_nsce(cos, jnp.array([1]), scale=5.0),
    )


def _log_softmax(z):
    z = np.asarray(z, np.float64)
    return z - np.log(np.sum(np.exp(z)))


def test_doc_hand_computed():
    # sigmoid one-vs-rest on raw logits: -log s(z_y) - sum_{k != y} log(1 - s(z_k)).
    z = [1.5, -0.5, 0.25]
    expected = _softplus(-1.5) + _softplus(-0.5) + _softplus(0.25)
    np.testing.assert_allclose(loss_doc(jnp.array([z]), jnp.array([0])), [expected], rtol=1e-6)


def _tiny_geometry():
    """Two 2-D embeddings, three centres, hand-picked distances."""
    f = np.array([[1.0, 0.0], [0.0, 2.0]])
    c = np.array([[1.0, 1.0], [0.0, 0.0], [-1.0, 2.0]])
    sq = np.array([[1.0, 1.0, 8.0], [2.0, 4.0, 1.0]])  # ||f_b - c_k||^2, by hand
    np.testing.assert_allclose(((f[:, None] - c[None]) ** 2).sum(-1), sq)
    return f, c, sq


def test_gcpl_hand_computed():
    f, c, sq = _tiny_geometry()
    labels = np.array([0, 2])
    d = sq / 2.0  # D = 2
    tau, lam = 0.5, 0.3
    expected = [-_log_softmax(-d[b] / tau)[labels[b]] + lam * d[b, labels[b]] / 2 for b in range(2)]
    got = loss_gcpl(
        HEAD_SCORES["distance"](jnp.array(f), jnp.array(c), None),
        jnp.array(labels),
        dim=2,
        temperature=tau,
        weight_pl=lam,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    # d_0 = (0.5, 0.5, 4): CE of logits (-1, -1, -8) at class 0 is log(2 + e^-7); + 0.3 * 0.5 / 2
    np.testing.assert_allclose(got[0], math.log(2 + math.exp(-7)) + 0.075, rtol=1e-5)


def test_rpl_hand_computed():
    f, p, sq = _tiny_geometry()
    labels = np.array([2, 1])
    d = sq / 2.0
    radius, tau, lam = 0.7, 2.0, 0.1
    expected = [
        -_log_softmax(d[b] / tau)[labels[b]] + lam * (d[b, labels[b]] - radius) ** 2
        for b in range(2)
    ]
    got = loss_rpl(
        HEAD_SCORES["reciprocal"](jnp.array(f), jnp.array(p), None),
        jnp.full((2,), radius),
        jnp.array(labels),
        dim=2,
        temperature=tau,
        weight_pl=lam,
    )
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_rotation_loss_is_four_way_cross_entropy():
    z = np.array([[2.0, 0.0, -1.0, 0.5]])
    got = loss_rotation(jnp.array(z), jnp.array([3]))
    np.testing.assert_allclose(got, [-_log_softmax(z[0])[3]], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_registry_entries_use_outputs_and_config(name):
    """Each registry entry is its array loss fed from Outputs; softmax logits per the config."""
    rng = np.random.default_rng(0)
    emb = jnp.array(rng.normal(size=(4, 8)), jnp.float32)
    raw = rng.normal(size=(4, 3))
    logits = jnp.array(np.abs(raw) if LOSSES[name].head == "reciprocal" else raw, jnp.float32)
    if LOSSES[name].head == "cosine":
        logits = jnp.tanh(logits)
    radius = jnp.full((4,), 0.4)
    labels = jnp.array([0, 1, 2, 1])
    c = LossConfig(loss=name, scale=3.0, margin_pos=0.2, margin_neg=0.1, temperature=0.5)
    out = Outputs(emb, logits, radius=radius)
    hyper = {"dim": 8, "temperature": 0.5, "weight_pl": 0.1}
    expected = {
        "sce": (loss_sce(logits, labels), logits),
        "nsce": (loss_nsce(logits, labels, scale=3.0), 3.0 * logits),
        "doc": (loss_doc(logits, labels), logits),
        "movr": (
            loss_movr(logits, labels, scale=3.0, margin_pos=0.2, margin_neg=0.1),
            3.0 * logits,
        ),
        "gcpl": (loss_gcpl(logits, labels, **hyper), logits / 4.0),
        "rpl": (loss_rpl(logits, radius, labels, **hyper), logits / 4.0),
    }[name]
    np.testing.assert_allclose(per_sample_loss(c, out, labels), expected[0], rtol=1e-6)
    np.testing.assert_allclose(LOSSES[name].softmax_logits(out, c), expected[1], rtol=1e-6)


def _optimise_negatives(margin: float, seed: int):
    """Minimise one sample's m-OvR loss over the prototypes, f fixed and w_y = f.

    T = 2 keeps gradients informative far from the optimum (the minimiser does not depend
    on T: the negative term is monotone in s_k).
    """
    f = jnp.array([1.0, 0.0, 0.0])
    w0 = jax.random.normal(jax.random.key(seed), (3, 3))

    def loss(w):
        w = w / jnp.linalg.norm(w, axis=1, keepdims=True)
        w = w.at[0].set(f)  # the positive prototype is aligned with f
        return loss_movr(
            (w @ f)[None], jnp.array([0]), scale=2.0, margin_pos=0.0, margin_neg=margin
        )[0]

    opt = optax.adam(0.02)
    state = opt.init(w0)

    @jax.jit
    def step(w, state):
        g = jax.grad(loss)(w)
        u, state = opt.update(g, state)
        return optax.apply_updates(w, u), state

    w = w0
    for _ in range(3000):
        w, state = step(w, state)
    w = w / jnp.linalg.norm(w, axis=1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.asarray(w[1:] @ f), -1, 1)))


@pytest.mark.parametrize("seed", [0, 1])
def test_proposition5_negatives_collapse_without_margin(seed):
    angles = _optimise_negatives(0.0, seed)
    np.testing.assert_allclose(angles, 180.0, atol=2.0)  # w_k -> -f = -w_y


@pytest.mark.parametrize("seed", [0, 1])
def test_proposition6_margin_keeps_angle_gap(seed):
    angles = _optimise_negatives(0.5, seed)
    np.testing.assert_allclose(angles, 180.0 - np.degrees(0.5), atol=2.0)
