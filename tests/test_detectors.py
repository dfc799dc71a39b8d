"""Detectors on the three kinds of model (a jacosr run, a plain JAX function, precomputed
arrays) against NumPy references and the evaluation table; their refusals; the flat API."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import logsumexp, softmax

import jacosr
from jacosr.detectors import (
    DETECTORS,
    FORWARD_BATCH,
    Energy,
    JacobianNorm,
    LossScore,
    MaxCosine,
    MaxLogit,
    MaxSoftmax,
    Network,
    OpenMax,
    StochasticJacobianNorm,
)
from jacosr.metrics import metric_auroc
from jacosr.models import embedding_fn
from jacosr.runs import load_run
from jacosr.scores import SCORES

# --- a plain JAX model, not built by jacosr: z = W2 tanh(W1 x + b1), logits = V z -------------

D_IN, D_HID, D_Z, K = 6, 5, 4, 3


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "w1": rng.normal(size=(D_HID, D_IN)) / 2,
        "b1": rng.normal(size=D_HID) / 2,
        "w2": rng.normal(size=(D_Z, D_HID)),
        "v": rng.normal(size=(K, D_Z)),
    }


def embed(p, x):
    """ONE input ``x: [D_IN] -> [D_Z]``."""
    return p["w2"] @ jnp.tanh(p["w1"] @ x + p["b1"])


def logits(p, x):
    return p["v"] @ embed(p, x)


def _numpy_forward(p, xs):
    h = np.tanh(xs @ p["w1"].T + p["b1"])
    z = h @ p["w2"].T
    return h, z, z @ p["v"].T


def _numpy_jacobian_norms(p, xs):
    """``J = W2 diag(1 - h^2) W1`` per sample, written out."""
    h, _, _ = _numpy_forward(p, xs)
    jac = np.einsum("zh,bh,hi->bzi", p["w2"], 1 - h**2, p["w1"])
    return np.linalg.norm(jac.reshape(len(xs), -1), axis=1)


@pytest.fixture(scope="module")
def plain():
    """The plain model as a Network, its params, and 3 classes of inputs around 3 centres."""
    p = _params()
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(K, D_IN)) * 2
    y = np.arange(60) % K
    x = (centres[y] + rng.normal(size=(60, D_IN)) * 0.3).astype(np.float32)
    return Network(embed, logits, params=p), p, x, y


def test_every_registered_score_has_a_detector():
    assert set(DETECTORS) == set(SCORES)
    assert DETECTORS["loss_no_margin"]().name == "loss_no_margin"
    assert LossScore().name == "loss"


def test_logit_scores_of_a_plain_jax_model_match_numpy(plain):
    net, p, x, _ = plain
    _, _, ref_logits = _numpy_forward(p, x)
    np.testing.assert_allclose(MaxSoftmax(net).score(x), -softmax(ref_logits, 1).max(1), rtol=1e-5)
    np.testing.assert_allclose(MaxLogit(net).score(x), -ref_logits.max(1), rtol=1e-5)
    np.testing.assert_allclose(Energy(net).score(x), -logsumexp(ref_logits, 1), rtol=1e-5)
    # logits as given: the loss score is the softmax cross-entropy at the pseudo label
    np.testing.assert_allclose(
        LossScore(net).score(x), -np.log(softmax(ref_logits, 1).max(1)), rtol=1e-4, atol=1e-6
    )


def test_jacobian_norm_of_a_plain_jax_model_matches_the_closed_form(plain):
    net, p, x, _ = plain
    ref = _numpy_jacobian_norms(p, x)
    np.testing.assert_allclose(JacobianNorm(net).score(x), ref, rtol=1e-5)
    # a bare function (no params) is taken as embed
    np.testing.assert_allclose(JacobianNorm(lambda v: embed(p, v)).score(x[:4]), ref[:4], rtol=1e-5)
    # XNysTrace with as many probes as d_z reconstructs J J^T: exact up to rounding
    estimate = StochasticJacobianNorm(net, estimator="xnystrace", probes=D_Z).score(x)
    np.testing.assert_allclose(estimate, ref, rtol=1e-3)


def test_fitted_scores_match_numpy_and_arrays_equal_the_model_path(plain):
    net, p, x, y = plain
    _, z, ref_logits = _numpy_forward(p, x)
    train, test = slice(0, 45), slice(45, None)
    means = np.stack([z[train][y[train] == k].mean(0) for k in range(K)])
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    expected = -(unit(z[test]) @ unit(means).T).max(1)
    from_model = MaxCosine(net).fit(x[train], y[train]).score(x[test])
    from_arrays = MaxCosine().fit_features(y[train], embeddings=z[train])
    np.testing.assert_allclose(from_model, expected, rtol=1e-5)
    np.testing.assert_allclose(from_arrays.score_features(embeddings=z[test]), expected, rtol=1e-5)
    om_model = OpenMax(net, tail=5).fit(x[train], y[train]).score(x[test])
    om_arrays = OpenMax(tail=5).fit_features(y[train], logits=ref_logits[train])
    np.testing.assert_allclose(
        om_arrays.score_features(logits=ref_logits[test]), om_model, rtol=1e-4
    )


def test_precomputed_pytorch_style_logits_score_as_given():
    """Logits exported from another framework (a NumPy array) score like the formulas."""
    rng = np.random.default_rng(3)
    known, unknown = rng.normal(size=(50, 4)) * 3, rng.normal(size=(40, 4))
    known[np.arange(50), rng.integers(0, 4, 50)] += 6  # confident knowns
    msp = MaxSoftmax()
    s_known, s_unknown = msp.score_features(logits=known), msp.score_features(logits=unknown)
    np.testing.assert_allclose(s_known, -softmax(known, 1).max(1), rtol=1e-6)
    row = jacosr.open_set_metrics(s_known, s_unknown)
    np.testing.assert_allclose(row["auroc"], metric_auroc(s_known, s_unknown))
    assert row["auroc"] > 0.9
    text = jacosr.format_metrics({"msp": row})
    assert text.splitlines()[0].split() == ["score", "auroc", "aupr_in", "aupr_out", "fpr95"]
    assert f"{row['auroc']:.4f}" in text.splitlines()[1]


def test_forward_pass_runs_in_padded_batches(plain):
    """More inputs than one compiled batch: every sample's outputs, none lost or repeated."""
    net, p, _, _ = plain
    x = np.random.default_rng(5).normal(size=(FORWARD_BATCH + 7, D_IN)).astype(np.float32)
    out = net.outputs(x)
    _, z, ref_logits = _numpy_forward(p, x)
    np.testing.assert_allclose(out.embedding, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out.class_scores, ref_logits, rtol=1e-5, atol=1e-5)


def test_predict_is_the_score_above_the_threshold(plain):
    net, _, x, _ = plain
    det = Energy(net)
    s = det.score(x)
    t = float(np.median(s))
    np.testing.assert_array_equal(det.predict(x, t), s > t)
    assert det.predict(x, t).dtype == bool
    assert det.fit(x, None) is det  # nothing to fit: a no-op


# --- a jacosr run ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run(digits_run):
    return load_run(digits_run[0])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["loss", "msp", "energy", "max_cosine", "openmax"])
def test_detectors_of_a_run_reproduce_the_evaluation_table(run, digits_run, name):
    """From the workdir, from load_run's tuple and from (graphdef, state) with the run's loss:
    the same AUROC as the run's own evaluation."""
    config, data, graphdef, state = run
    expected = digits_run[1].scores[name]["auroc"]
    for model in (digits_run[0], run, Network.from_model(graphdef, state, loss=config.loss)):
        det = DETECTORS[name](model).fit(data.known_train.x, data.known_train.y)
        auroc = metric_auroc(det.score(data.known_test.x), det.score(data.unknown_test.x))
        assert auroc == pytest.approx(expected, abs=1e-12)


@pytest.mark.slow
def test_jacobian_norm_of_a_run_takes_uint8_images(run):
    """uint8 images are mapped to [-1, 1] as in training; norms against dense jacfwd."""
    _, data, graphdef, state = run
    x = np.round((data.unknown_test.x[:5] + 1) * 127.5).astype(np.uint8)
    xf = x.astype(np.float32) / 127.5 - 1.0
    dense = jax.vmap(jax.jacfwd(embedding_fn(graphdef, state)))(xf)
    ref = np.linalg.norm(np.asarray(dense).reshape(5, -1), axis=1)
    np.testing.assert_allclose(JacobianNorm(run).score(x), ref, rtol=1e-5)
    np.testing.assert_allclose(JacobianNorm((graphdef, state)).score(xf), ref, rtol=1e-5)


# --- refusals ------------------------------------------------------------------------------


def test_jacobian_detectors_refuse_arrays():
    with pytest.raises(ValueError, match=r"needs a differentiable JAX function .* no Jacobian"):
        JacobianNorm(None)
    det = JacobianNorm(lambda v: v * 2.0)
    with pytest.raises(ValueError, match=r"scores inputs, not features"):
        det.score_features(embeddings=np.ones((3, 2)))


def test_missing_inputs_are_clear_errors(plain, run):
    net, p, x, y = plain
    with pytest.raises(ValueError, match=r"MaxSoftmax reads logits: pass logits="):
        MaxSoftmax(Network(embed, params=p)).score(x)
    with pytest.raises(ValueError, match=r"MaxCosine reads embeddings"):
        MaxCosine().fit_features(y, logits=np.ones((len(y), K)))
    with pytest.raises(ValueError, match=r"OpenMax fits on known training data first"):
        OpenMax(net).score(x)
    with pytest.raises(ValueError, match=r"built without a model, so it cannot score inputs"):
        MaxSoftmax().score(x)
    with pytest.raises(ValueError, match=r"labels must be \[N\] ints, one per training sample"):
        MaxCosine(net).fit(x, y[:-1])
    _, _, graphdef, state = run
    with pytest.raises(ValueError, match=r"MaxSoftmax reads logits, .* pass loss="):
        MaxSoftmax((graphdef, state))


LOGIT_DETECTORS = [MaxSoftmax, MaxLogit, Energy, LossScore]
"""The detectors that read logits and fit nothing; MaxSoftmax and LossScore need K >= 2."""


@pytest.mark.parametrize("detector", LOGIT_DETECTORS)
@pytest.mark.parametrize("shape", [(300,), (3, 4, 2), (0, 3), (3, 1)])
def test_logits_of_the_wrong_shape_are_named(detector, shape):
    """One number for 300 samples, or a matrix, was returned silently: [N, K] is required,
    N >= 1, and K >= 2 where one class would score every sample alike."""
    det, name = detector(), detector.__name__
    if shape == (3, 1) and det.min_width == 1:  # one logit: max-logit and energy are -z
        np.testing.assert_allclose(det.score_features(logits=np.ones(shape)), -np.ones(3))
        return
    need = (
        r"K >= 2 classes: with one, every sample scores alike" if det.min_width == 2 else "K >= 1"
    )
    message = rf"^{name}\.score_features: logits must be \[N, K\] \(N >= 1 samples, {need}.*\); "
    with pytest.raises(ValueError, match=message + re.escape(f"got shape {shape}")):
        det.score_features(logits=np.zeros(shape))


@pytest.mark.parametrize("detector", [*LOGIT_DETECTORS, OpenMax])
@pytest.mark.parametrize(
    ("per_input", "shape"), [(lambda z: z.sum(), ()), (lambda z: z[:2, None], (2, 1))]
)
def test_a_model_whose_logits_are_not_a_vector_is_named(plain, detector, per_input, shape):
    """A logits function giving a scalar or [K, 1] per input made scores of shape () or
    [N, K] (so predict gave one bool or a matrix): refused before anything is computed."""
    _, p, x, y = plain
    det = detector(Network(embed, lambda q, v: per_input(logits(q, v)), params=p))
    verb = "fit" if det.spec.fits_on_train else "score"
    message = (
        rf"^{detector.__name__}\.{verb}: the model's logits must be \[K\] for one input \(K >= "
        rf".*\), so \[N, K\] for x: \[N, \.\.\.\]; it gives shape {re.escape(str(shape))} for one "
        rf"input of shape \(6,\) \(x: \(60, 6\)\)$"
    )
    with pytest.raises(ValueError, match=message):
        det.fit(x, y).predict(x, 0.0)


@pytest.mark.parametrize("detector", [MaxCosine, JacobianNorm, StochasticJacobianNorm])
def test_a_model_whose_embedding_is_a_scalar_is_named(plain, detector):
    _, p, x, y = plain
    det = detector(Network(lambda q, v: embed(q, v).sum(), params=p))
    verb = "fit" if det.spec.fits_on_train else "score"
    message = (
        rf"^{detector.__name__}\.{verb}: the model's embedding must be \[D\] for one input "
        r"\(D >= 1 dimensions\), .* it gives shape \(\) for one input of shape \(6,\)"
    )
    with pytest.raises(ValueError, match=message):
        det.fit(x, y).score(x)


@pytest.mark.parametrize("detector", [MaxSoftmax, MaxCosine, OpenMax, JacobianNorm])
def test_inputs_of_the_wrong_shape_are_named(plain, detector):
    """x without its batch axis, or with one too many, on both paths (score and fit)."""
    net, _, x, y = plain
    det, name = detector(net), detector.__name__
    verb = "fit" if det.spec.fits_on_train else "score"
    call = det.fit if det.spec.fits_on_train else lambda xs, _: det.score(xs)
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.{verb}: the model fails on one input of shape "
        r"\(\) \(x: \(6,\) is taken as \[N, \.\.\.\], one input per row; is that how "
        r"the model takes it\?\): ",
    ):
        call(x[0], y[:1])
    # a batch axis too many: "one input" is then [60, 6], which the model cannot take
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.{verb}: the model fails on one input of shape \(60, 6\) "
        r"\(x: \(1, 60, 6\)",
    ):
        call(x[None], y[:1])
    with pytest.raises(
        ValueError,
        match=rf"^{name}\.{verb}: x must be a batch \[N, \.\.\.\] of N "
        r">= 1 inputs, one per row; got shape \(0, 6\)$",
    ):
        call(x[:0], y[:0])
    with pytest.raises(ValueError, match=rf"^{name}\.{verb}: x must be a batch .* got shape \(\)$"):
        call(np.float32(1.0), y[:1])


def test_labels_must_match_the_inputs(plain):
    net, _, x, y = plain
    for call in (MaxCosine(net).fit, lambda x, y: OpenMax().fit_features(y, logits=x[:, :3])):
        with pytest.raises(
            ValueError,
            match=r"\.fit(_features)?: labels must be \[N\] ints, one "
            r"per training sample \(N = 60\); got int64 of shape \(59,\)$",
        ):
            call(x, y[:-1])
    with pytest.raises(
        ValueError, match=r"labels must be \[N\] ints, .* got float64 of shape \(60,\)$"
    ):
        MaxCosine(net).fit(x, y.astype(float))


def test_a_jacosr_model_takes_image_batches(run):
    _, data, graphdef, state = run
    det = MaxCosine(run)
    with pytest.raises(
        ValueError,
        match=r"^MaxCosine\.fit: a jacosr model takes images x: "
        r"\[N, H, W, C\]; got shape \(8, 8, 1\) \(one image\? x\[None\] is a "
        r"batch of it\)$",
    ):
        det.fit(data.known_train.x[0], data.known_train.y[:1])
    with pytest.raises(
        ValueError,
        match=r"^JacobianNorm\.score: a jacosr model takes images x: "
        r"\[N, H, W, C\]; got shape \(5, 64\)$",
    ):
        JacobianNorm((graphdef, state)).score(data.known_test.x[:5].reshape(5, -1))


def test_max_cosine_fits_on_finite_features_of_the_fitted_width():
    """A scalar embedding was an IndexError, and one NaN row made every score NaN silently."""
    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(12, 3)), np.arange(12) % 3
    with pytest.raises(
        ValueError,
        match=r"^MaxCosine\.fit_features: embeddings must be \[N, D\] "
        r"\(N >= 1 samples, D >= 1 dimensions\); got shape \(12,\)$",
    ):
        MaxCosine().fit_features(y, embeddings=z[:, 0])
    bad = z.copy()
    bad[[4, 9]] = [np.nan, 0.0, 0.0], [np.inf, 1.0, 1.0]
    with pytest.raises(
        ValueError,
        match=r"^MaxCosine\.fit_features: the embeddings of 2 of the "
        r"12 training samples are not finite \(NaN or inf; rows 4, 9\): fitted on, "
        r"they would make every score NaN; drop those samples",
    ):
        MaxCosine().fit_features(y, embeddings=bad)
    det = MaxCosine().fit_features(y, embeddings=z)
    # scoring a NaN row: that row alone is NaN
    scores = det.score_features(embeddings=bad[:6])
    assert np.isnan(scores[4]) and np.isfinite(np.delete(scores, 4)).all()
    with pytest.raises(
        ValueError,
        match=r"^MaxCosine\.score_features: embeddings must be \[N, D\] "
        r"\(N >= 1 samples, D = 3 dimensions, as fitted\); got shape \(4, 2\)$",
    ):
        det.score_features(embeddings=z[:4, :2])
    with pytest.raises(ValueError, match=r"D = 3 dimensions, as fitted\); got shape \(3,\)$"):
        det.score_features(embeddings=z[0])
    # a new fit, of another width, replaces the old one
    det.fit_features(y, embeddings=z[:, :2])
    assert det.score_features(embeddings=z[:4, :2]).shape == (4,)


@pytest.mark.parametrize(
    ("detector", "labels", "message"),
    [
        # OpenMax's K is the logits' width: labels >= K are named (not "class 0")
        (
            OpenMax,
            [3, 4, 5, 3, 4, 5, 3, 4, 5],
            r"labels must be class indices in \[0, K\) with "
            r"K = 3 classes; got 3, 4, 5 \(9 of 9 samples\)$",
        ),
        (
            OpenMax,
            [0, 1, 2, 0, 1, 2, 0, 1, 7],
            r"labels must be class indices in \[0, K\) with K = 3 classes; got 7 \(1 of 9 "
            r"samples\)$",
        ),
        # labels that leave a class out
        (
            OpenMax,
            [0, 1, 0, 1, 0, 1, 0, 1, 0],
            r"each of the K = 3 classes needs at least 2 "
            r"training samples \(labels 0\.\.2, every class present\); too few: class 2 \(0\)$",
        ),
        (
            MaxCosine,
            [0, 2, 4, 0, 2, 4, 0, 2, 4],
            r"each of the K = 5 classes needs at least 1 "
            r"training sample .* too few: class 1 \(0\), class 3 \(0\)$",
        ),
        (
            MaxCosine,
            [-1, 0, 1, 0, 1, 0, 1, 0, 1],
            r"labels must be class indices in \[0, K\) with K = 2 classes; got -1 \(1 of 9 "
            r"samples\)$",
        ),
    ],
)
def test_fitted_detectors_name_the_labels_they_cannot_fit(detector, labels, message):
    arg = "logits" if detector.reads == "logits" else "embeddings"
    features = {arg: np.random.default_rng(1).normal(size=(9, 3))}
    with pytest.raises(ValueError, match=rf"^{detector.__name__}\.fit_features: {message}"):
        detector().fit_features(labels, **features)


def test_openmax_refuses_non_finite_logits_and_another_k():
    rng = np.random.default_rng(2)
    v, y = rng.normal(size=(12, 3)), np.arange(12) % 3
    bad = v.copy()
    bad[0, 1] = np.nan
    with pytest.raises(
        ValueError,
        match=r"^OpenMax\.fit_features: the logits of 1 of the 12 "
        r"training samples are not finite \(NaN or inf; rows 0\)",
    ):
        OpenMax(tail=2).fit_features(y, logits=bad)
    det = OpenMax(tail=2).fit_features(y, logits=v)
    with pytest.raises(
        ValueError,
        match=r"^OpenMax\.score_features: logits must be \[N, K\] \(N "
        r">= 1 samples, K = 3 classes, as fitted\); got shape \(2, 4\)$",
    ):
        det.score_features(logits=rng.normal(size=(2, 4)))


def test_a_pytorch_model_is_refused_with_the_export_path():
    Module = type("Module", (), {"__module__": "torch.nn.modules.module", "__call__": id})
    with pytest.raises(TypeError, match=r"export its logits .* fit_features / score_features"):
        MaxSoftmax(Module())
    with pytest.raises(TypeError, match=r"cannot score with a int"):
        MaxSoftmax(3)


# --- the flat API ------------------------------------------------------------------------


def test_flat_api_is_sorted_resolves_and_shadows_no_module():
    names = jacosr.__all__
    assert names == sorted(names)
    modules = {p.stem for p in Path(jacosr.__file__).parent.iterdir()}
    assert not set(names) & modules
    for name in names:
        assert getattr(jacosr, name) is not None
    with pytest.raises(AttributeError, match=r"no attribute 'nothing'"):
        jacosr.nothing  # noqa: B018


def test_importing_jacosr_imports_nothing_heavy():
    code = "import sys, jacosr; print(sorted(m for m in sys.modules if m.startswith('jacosr')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['jacosr']"
