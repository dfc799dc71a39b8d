"""Unknown scores against hand computations and independent references (OpenMax written out
as Bendale & Boult's algorithm, Jacobian norms against dense jacfwd)."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import weibull_min

import jacosr.jacobian.driver
from jacosr import jacobian
from jacosr.losses import LOSSES, LossConfig, per_sample_loss
from jacosr.models import Outputs
from jacosr.scores import (
    SCORES,
    OpenMaxFit,
    ScoreConfig,
    ScoreContext,
    class_means,
    fit_openmax,
    openmax_activations,
    score_energy,
    score_jacobian,
    score_jacobian_stochastic,
    score_loss,
    score_loss_no_margin,
    score_max_cosine,
    score_max_logit,
    score_msp,
    score_openmax,
    score_spec,
)


def test_unknown_score_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown score 'odin'; valid scores are: energy, .*msp"):
        score_spec("odin")
    assert set(SCORES) == {
        "loss",
        "loss_no_margin",
        "msp",
        "max_logit",
        "energy",
        "max_cosine",
        "openmax",
        "jacobian",
        "jacobian_stochastic",
    }


def test_softmax_scores_hand_computed():
    cos = jnp.array([[0.5, -0.5, 0.0]])
    out = Outputs(jnp.ones((1, 4)), cos)
    config = LossConfig(loss="movr", scale=2.0)  # softmax logits (1, -1, 0)
    z = math.exp(1) + math.exp(-1) + 1
    np.testing.assert_allclose(score_msp(out, config), [-math.exp(1) / z], rtol=1e-6)
    np.testing.assert_allclose(score_max_logit(out, config), [-1.0], rtol=1e-6)
    np.testing.assert_allclose(score_energy(out, config), [-math.log(z)], rtol=1e-6)
    # linear logits are used as they are
    sce = LossConfig(loss="sce")
    np.testing.assert_allclose(score_max_logit(out, sce), [-0.5], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_score_is_the_loss_at_the_pseudo_label(name):
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 4))
    logits = np.abs(logits) if LOSSES[name].head == "reciprocal" else np.tanh(logits)
    out = Outputs(jnp.array(rng.normal(size=(6, 5))), jnp.array(logits), radius=jnp.full(6, 0.3))
    config = LossConfig(loss=name)
    pseudo = jnp.array(np.argmax(logits, -1))
    np.testing.assert_allclose(score_loss(out, config), per_sample_loss(config, out, pseudo))
    # a sample's loss at its own argmax is never above its loss at another label
    for k in range(4):
        assert np.all(
            np.asarray(score_loss(out, config))
            <= np.asarray(per_sample_loss(config, out, jnp.full(6, k))) + 1e-5
        )


def _movr_ref(cos: np.ndarray, label: int, scale: float, margin: float) -> float:
    """Eq. 23-24 for one sample, written out: -log sigma(T s_y) - sum_{k != y} log(1 - sigma(T s_k))
    with s_k = cos(arccos(c_k) + m)."""
    s = np.cos(np.arccos(cos) + margin)
    p = 1 / (1 + np.exp(-scale * s))
    return float(-np.log(p[label]) - sum(np.log(1 - p[k]) for k in range(len(s)) if k != label))


def test_loss_score_with_and_without_the_margin():
    """``loss`` is m-OvR at the pseudo label with the training margin, ``loss_no_margin`` the
    same loss with m = 0; for losses without a margin the two are the same score."""
    cos = np.array([[0.9, 0.1, -0.3], [-0.2, 0.4, 0.35], [0.05, -0.6, -0.1]])
    out = Outputs(jnp.ones((3, 4)), jnp.asarray(cos, jnp.float32))
    config = LossConfig(loss="movr", scale=4.0, margin_pos=0.3, margin_neg=0.3)
    pseudo = cos.argmax(-1)
    with_margin = [_movr_ref(c, p, 4.0, 0.3) for c, p in zip(cos, pseudo, strict=True)]
    without = [_movr_ref(c, p, 4.0, 0.0) for c, p in zip(cos, pseudo, strict=True)]
    np.testing.assert_allclose(score_loss(out, config), with_margin, rtol=1e-5)
    np.testing.assert_allclose(score_loss_no_margin(out, config), without, rtol=1e-5)
    assert not np.allclose(with_margin, without)
    for name in ("sce", "nsce", "doc"):
        same = LossConfig(loss=name)
        np.testing.assert_array_equal(score_loss_no_margin(out, same), score_loss(out, same))


def test_max_cosine_against_numpy():
    rng = np.random.default_rng(2)
    f, mu = rng.normal(size=(7, 3)), rng.normal(size=(4, 3))
    cos = (f / np.linalg.norm(f, axis=1, keepdims=True)) @ (
        mu / np.linalg.norm(mu, axis=1, keepdims=True)
    ).T
    np.testing.assert_allclose(score_max_cosine(f, mu), -cos.max(1), rtol=1e-5)


def test_class_means_and_missing_class():
    x = np.array([[0.0, 2.0], [2.0, 0.0], [5.0, 5.0]])
    np.testing.assert_allclose(class_means(x, np.array([0, 0, 1]), 2), [[1.0, 1.0], [5.0, 5.0]])
    with pytest.raises(
        ValueError, match=r"each of the K = 3 classes needs at least 1 .* class 2 \(0\)"
    ):
        class_means(x, np.array([0, 0, 1]), 3)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        # out of range: which labels, how many, and K (not a class they leave empty)
        ([3, 4, 0, 1, 2, 4], r"in \[0, K\) with K = 3 classes; got 3, 4 \(3 of 6 samples\)$"),
        ([-1, 0, 1, 2, 0, 1], r"in \[0, K\) with K = 3 classes; got -1 \(1 of 6 samples\)$"),
        # every class needs two samples for its Weibull fit
        ([0, 0, 1, 1, 1, 2], r"needs at least 2 training samples .* too few: class 2 \(1\)$"),
        ([0, 0, 0, 1, 1, 1], r"too few: class 2 \(0\)$"),
    ],
)
def test_fit_openmax_names_the_labels_it_cannot_fit(labels, message):
    v = np.random.default_rng(0).normal(size=(6, 3))
    with pytest.raises(ValueError, match=message):
        fit_openmax(v, np.array(labels), 3, tail_size=2)


def _openmax_reference(model: OpenMaxFit, v: np.ndarray, alpha: int) -> float:
    """Bendale & Boult (2016), Alg. 2, written out for one activation vector ``v: [K]``."""
    ranked = np.argsort(-v)
    w = np.ones(len(v))
    for i in range(1, alpha + 1):  # ranks 1..alpha
        k = ranked[i - 1]
        dist = np.linalg.norm(v - model.means[k])
        cdf = weibull_min.cdf(dist, model.shape[k], scale=model.scale[k])
        w[k] = 1.0 - (alpha - i + 1) / alpha * cdf
    revised = v * w
    unknown = np.sum(v - revised)
    p = np.exp(np.concatenate([[unknown], revised]))
    return math.log(p[0] / p.sum())


@pytest.mark.parametrize("alpha", [1, 2, 3])
def test_openmax_matches_the_algorithm(alpha):
    rng = np.random.default_rng(alpha)
    model = OpenMaxFit(rng.normal(size=(3, 3)) + 2, rng.uniform(1, 4, 3), rng.uniform(0.5, 2, 3))
    v = rng.normal(size=(9, 3)) + 2
    expected = [_openmax_reference(model, row, alpha) for row in v]
    np.testing.assert_allclose(score_openmax(model, v, alpha=alpha), expected, rtol=1e-6)


def test_fit_openmax_uses_correct_samples_and_the_distance_tail():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    v = rng.normal(size=(400, 2)) * 0.5 + np.where(labels[:, None] == 0, [4.0, 0.0], [0.0, 4.0])
    v[0] = [0.0, 9.0]  # a misclassified sample of class 0: excluded from class 0's fit
    model = fit_openmax(v, labels, 2, tail_size=20)
    good = v[1:200]
    np.testing.assert_allclose(model.means[0], good.mean(0))
    tail = np.sort(np.linalg.norm(good - good.mean(0), axis=1))[-20:]
    shape, _, scale = weibull_min.fit(tail, floc=0.0)
    np.testing.assert_allclose([model.shape[0], model.scale[0]], [shape, scale], rtol=1e-6)
    # far from every class mean scores higher than at a class mean
    far, near = np.array([[10.0, 10.0]]), model.means[:1]
    assert score_openmax(model, far)[0] > score_openmax(model, near)[0]


def test_openmax_activations_shift_rows_to_zero_minimum():
    a = openmax_activations(np.array([[-3.0, -1.0, -2.0]]))
    np.testing.assert_allclose(a, [[0.0, 2.0, 1.0]])


def _tiny(p: dict, x: jax.Array) -> jax.Array:
    """``f(params, x: [3, 2, 2]) -> [5]``, a smooth two-layer net."""
    return p["w2"] @ jnp.tanh(p["w1"] @ x.reshape(-1) + 0.1)


def _tiny_params() -> dict:
    rng = np.random.default_rng(0)
    return {"w1": rng.normal(size=(7, 12)), "w2": rng.normal(size=(5, 7))}


def _inputs(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, 3, 2, 2)).astype(np.float32)


def test_jacobian_score_against_dense_jacfwd():
    params, xs = _tiny_params(), _inputs(2, 4)
    jacobians = jax.jit(jax.vmap(jax.jacfwd(lambda x: _tiny(params, x))))(xs)
    dense = np.linalg.norm(np.asarray(jacobians).reshape(4, -1), axis=1)
    np.testing.assert_allclose(score_jacobian(_tiny, xs, params=params), dense, rtol=1e-5)


def test_stochastic_jacobian_score_is_exact_with_a_full_rank_sketch():
    # XNysTrace with as many probes as the output dimension reconstructs J J^T exactly.
    params, xs, key = _tiny_params(), _inputs(3, 4), jax.random.key(0, impl="rbg")
    got = score_jacobian_stochastic(
        _tiny, xs, key, params=params, estimator="xnystrace", num_probes=5
    )
    np.testing.assert_allclose(got, score_jacobian(_tiny, xs, params=params), rtol=1e-3)


def test_registry_builds_scorers_from_the_context():
    params = _tiny_params()
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(40, 5))
    labels = np.arange(40) % 2
    logits = np.stack([emb[:, 0] * (1 - 2 * labels), -emb[:, 0] * (1 - 2 * labels)], 1)
    train = Outputs(emb, np.abs(logits) * np.where(labels[:, None] == [0, 1], 1, -1))
    ctx = ScoreContext(
        LossConfig(loss="sce"),
        ScoreConfig(),
        embedding_apply=_tiny,
        model_state=params,
        train=train,
        train_labels=labels,
    )
    x = _inputs(5, 3)
    out = Outputs(rng.normal(size=(3, 5)), rng.normal(size=(3, 2)))
    for name, spec in SCORES.items():
        scores = spec.make(ctx)(out, x)
        assert scores.shape == (3,) and np.all(np.isfinite(scores)), name
    np.testing.assert_allclose(
        SCORES["jacobian"].make(ctx)(out, x), score_jacobian(_tiny, x, params=params)
    )
    means = class_means(emb, labels, 2)
    np.testing.assert_allclose(
        SCORES["max_cosine"].make(ctx)(out, x), score_max_cosine(out.embedding, means)
    )


def test_only_the_jacobian_scores_differentiate_the_model():
    differentiating = {name for name, spec in SCORES.items() if spec.differentiates}
    assert differentiating == {"jacobian", "jacobian_stochastic"}


def test_the_jacobian_sample_cap_is_refused_below_zero():
    assert ScoreConfig(jacobian_max_samples=0).jacobian_max_samples == 0  # 0: every sample
    with pytest.raises(ValueError, match=r"^--jacobian-max-samples must be >= 0 .*; got -1$"):
        ScoreConfig(jacobian_max_samples=-1)


def test_max_cosine_needs_only_embeddings():
    """Fitted from embeddings and labels alone (no class scores), as for a model's exported
    features: the classes come from the labels."""
    rng = np.random.default_rng(6)
    emb, labels = rng.normal(size=(30, 4)), np.arange(30) % 3
    ctx = ScoreContext(LossConfig(), ScoreConfig(), None, None, Outputs(emb, None), labels)
    test = Outputs(rng.normal(size=(5, 4)), None)
    expected = score_max_cosine(test.embedding, class_means(emb, labels, 3))
    np.testing.assert_allclose(SCORES["max_cosine"].make(ctx)(test, None), expected)


@pytest.mark.parametrize("progress", [None, "norms"])
def test_a_long_jacobian_call_prints_its_estimate(monkeypatch, capsys, progress):
    """With a label, the time estimate is printed once the first chunk is back, when it reaches
    ESTIMATE_MIN_SECONDS (0 here, so whatever the machine's speed); without one, nothing."""
    monkeypatch.setattr(jacosr.jacobian.driver, "ESTIMATE_MIN_SECONDS", 0.0)
    params, xs = _tiny_params(), _inputs(7, 5)
    norms = jacobian.jacobian_norms(_tiny, xs, params=params, chunk_size=1, progress=progress)
    np.testing.assert_allclose(norms, score_jacobian(_tiny, xs, params=params), rtol=1e-6)
    err = capsys.readouterr().err
    if progress is None:
        assert err == ""
    else:
        assert re.search(r"^norms: 5 samples, about \d+ s$", err, re.MULTILINE), err
