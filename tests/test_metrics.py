"""Tests for jacosr.metrics against independent references.

References: pairwise (Mann-Whitney) sums for AUROC and OSCR, an explicit threshold sweep for
OSCR, FPR@TPR and average precision, scikit-learn's curves with explicit labels, per-class
confusion counts for macro-F1, and closed forms on hand-made cases. Float results built from
the same integer counts agree to 1e-12.
"""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, davies_bouldin_score, roc_auc_score, roc_curve

from jacosr import metrics
from jacosr.geometry import metric_dbi, metric_inter_class_distance, metric_intra_inter_ratio
from jacosr.metrics import (
    OPEN_SET_METRICS,
    check_finite_scores,
    metric_accuracy,
    metric_aupr_in,
    metric_aupr_out,
    metric_auroc,
    metric_correlations,
    metric_fpr_at_tpr,
    metric_jacobian_norm_difference,
    metric_macro_f1,
    metric_oscr,
    open_set_metrics,
    threshold_at_reject_rate,
)

TOL = 1e-12
SEEDS = [0, 1, 2]
KINDS = ["continuous", "ties", "all_equal", "separated", "imbalanced"]


def make_scores(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Known and unknown scores of a given shape of difficulty (higher = more unknown)."""
    rng = np.random.default_rng(seed)
    if kind == "continuous":
        return rng.normal(0.0, 1.0, 40), rng.normal(1.0, 1.0, 30)
    if kind == "ties":
        return rng.integers(0, 5, 40).astype(float), rng.integers(2, 7, 30).astype(float)
    if kind == "all_equal":
        return np.full(17, 0.3), np.full(9, 0.3)
    if kind == "separated":
        return rng.uniform(0, 1, 25), rng.uniform(2, 3, 11)
    if kind == "imbalanced":
        return rng.normal(0.0, 1.0, 200), rng.normal(0.5, 1.0, 3)
    raise AssertionError(kind)


# ---- independent references -------------------------------------------------------------


def ref_auroc_pairwise(known, unknown):
    diff = np.asarray(unknown)[None, :] - np.asarray(known)[:, None]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def ref_average_precision(positive_scores, negative_scores):
    """AP = sum over distinct thresholds t (descending) of (R_t - R_prev) P_t, predict s >= t."""
    total, previous_recall = 0.0, 0.0
    for t in np.unique(np.concatenate([positive_scores, negative_scores]))[::-1]:
        tp = np.sum(positive_scores >= t)
        fp = np.sum(negative_scores >= t)
        recall = tp / len(positive_scores)
        total += (recall - previous_recall) * tp / (tp + fp)
        previous_recall = recall
    return total


def ref_fpr_at_tpr_bruteforce(known, unknown, tpr):
    """Minimum FPR over every candidate threshold whose known-acceptance rate is >= tpr."""
    candidates = np.concatenate([[-np.inf], known, unknown])
    feasible = [np.mean(unknown <= t) for t in candidates if np.mean(known <= t) >= tpr]
    return float(min(feasible))


def ref_oscr_pairwise(known, correct, unknown):
    total = 0.0
    for s_i, c_i in zip(known, correct, strict=True):
        if c_i:
            for s_j in unknown:
                total += 1.0 if s_i < s_j else 0.5 if s_i == s_j else 0.0
    return total / (len(known) * len(unknown))


def ref_oscr_sweep(known, correct, unknown):
    """Trapezoidal area over the (FPR, CCR) points at t = -inf and at every score."""
    points = [(0.0, 0.0)]
    for t in np.sort(np.concatenate([known, unknown])):
        ccr = sum(1 for s, c in zip(known, correct, strict=True) if c and s <= t) / len(known)
        fpr = sum(1 for s in unknown if s <= t) / len(unknown)
        points.append((fpr, ccr))
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in itertools.pairwise(points))


def ref_macro_f1(y_true, y_pred, num_labels):
    f1s = []
    for c in range(num_labels):
        tp = np.sum((y_pred == c) & (y_true == c))
        fp = np.sum((y_pred == c) & (y_true != c))
        fn = np.sum((y_pred != c) & (y_true == c))
        f1s.append(0.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return float(np.mean(f1s))


# ---- AUROC, AUPR --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_auroc_matches_sklearn_and_pairwise(kind, seed):
    known, unknown = make_scores(kind, seed)
    labels = np.r_[np.zeros(known.size), np.ones(unknown.size)]
    got = metric_auroc(known, unknown)
    assert got == pytest.approx(roc_auc_score(labels, np.r_[known, unknown]), abs=TOL)
    assert got == pytest.approx(ref_auroc_pairwise(known, unknown), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_aupr_matches_sklearn_and_definition(kind, seed):
    known, unknown = make_scores(kind, seed)
    is_known = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    scores = np.r_[known, unknown]
    aupr_in, aupr_out = metric_aupr_in(known, unknown), metric_aupr_out(known, unknown)
    assert aupr_in == pytest.approx(average_precision_score(is_known, -scores), abs=TOL)
    assert aupr_out == pytest.approx(average_precision_score(1 - is_known, scores), abs=TOL)
    assert aupr_in == pytest.approx(ref_average_precision(-known, -unknown), abs=TOL)
    assert aupr_out == pytest.approx(ref_average_precision(unknown, known), abs=TOL)


def test_auroc_and_aupr_hand_case_fix_the_positive_class():
    # Ranked by score: known 0, unknown 1, known 2.
    known, unknown = [0.0, 2.0], [1.0]
    assert metric_auroc(known, unknown) == pytest.approx(0.5)
    # Unknown positive, highest score first: known (P=0, R=0), unknown (P=1/2, R=1).
    assert metric_aupr_out(known, unknown) == pytest.approx(0.5)
    # Known positive, lowest score first: known (P=1, R=1/2), unknown, known (P=2/3, R=1).
    assert metric_aupr_in(known, unknown) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_all_equal_scores_are_chance():
    known, unknown = np.zeros(30), np.zeros(10)
    assert metric_auroc(known, unknown) == 0.5
    assert metric_aupr_in(known, unknown) == pytest.approx(0.75)
    assert metric_aupr_out(known, unknown) == pytest.approx(0.25)
    assert metric_fpr_at_tpr(known, unknown) == 1.0


int_scores = st.lists(st.integers(-30, 30), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(known=int_scores, unknown=int_scores)
def test_auroc_invariant_to_strictly_increasing_transforms(known, unknown):
    known, unknown = np.array(known, float), np.array(unknown, float)
    base = metric_auroc(known, unknown)
    for transform in (lambda s: 3.0 * s - 7.0, lambda s: s**3 + s, lambda s: np.exp(s / 10.0)):
        assert metric_auroc(transform(known), transform(unknown)) == pytest.approx(base, abs=TOL)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(known=int_scores, unknown=int_scores)
def test_flipping_the_score_gives_one_minus_auroc(known, unknown):
    known, unknown = np.array(known, float), np.array(unknown, float)
    flipped = metric_auroc(-known, -unknown)
    assert flipped == pytest.approx(1.0 - metric_auroc(known, unknown), abs=TOL)


# ---- FPR at TPR ---------------------------------------------------------------------------


@pytest.mark.parametrize("tpr", [0.95, 0.5, 0.8, 1.0])
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", KINDS)
def test_fpr_at_tpr_matches_bruteforce_and_roc_curve(kind, seed, tpr):
    known, unknown = make_scores(kind, seed)
    got = metric_fpr_at_tpr(known, unknown, tpr=tpr)
    assert got == ref_fpr_at_tpr_bruteforce(known, unknown, tpr)
    # Known positive, ranked by -score: the first ROC point with TPR >= tpr.
    is_known = np.r_[np.ones(known.size), np.zeros(unknown.size)]
    fpr, tpr_curve, _ = roc_curve(is_known, -np.r_[known, unknown], drop_intermediate=False)
    assert got == fpr[tpr_curve >= tpr].min()


def test_fpr95_hand_case_accepts_ties_at_the_threshold():
    known = np.arange(20.0)  # 95% of 20 is 19 samples: threshold = 18, the 19th smallest
    unknown = np.array([18.5, 18.0, 3.0, 100.0])  # 18.0 (tied) and 3.0 accepted
    assert metric_fpr_at_tpr(known, unknown) == 0.5
    assert metric_fpr_at_tpr(known, unknown, tpr=1.0) == 0.75  # threshold = 19
    assert metric_fpr_at_tpr(known, unknown, tpr=0.05) == 0.0  # threshold = 0


@settings(max_examples=60, deadline=None, derandomize=True)
@given(known=int_scores, unknown=int_scores, tpr=st.floats(0.01, 1.0))
def test_fpr_at_tpr_is_a_fraction_and_grows_with_tpr(known, unknown, tpr):
    known, unknown = np.array(known, float), np.array(unknown, float)
    got = metric_fpr_at_tpr(known, unknown, tpr=tpr)
    assert 0.0 <= got <= 1.0
    assert got <= metric_fpr_at_tpr(known, unknown, tpr=1.0)
    assert got == ref_fpr_at_tpr_bruteforce(known, unknown, tpr)


# ---- OSCR ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("kind", KINDS)
def test_oscr_matches_quadratic_references(kind, seed):
    known, unknown = make_scores(kind, seed)
    correct = np.random.default_rng(100 + seed).random(known.size) < 0.7
    got = metric_oscr(known, correct, unknown)
    assert got == pytest.approx(ref_oscr_pairwise(known, correct, unknown), abs=TOL)
    assert got == pytest.approx(ref_oscr_sweep(known, correct, unknown), abs=TOL)


def test_oscr_hand_cases():
    known, unknown = np.array([0.0, 1.0, 2.0, 3.0]), np.array([5.0, 6.0])
    # Perfect separation: the curve climbs to the accuracy before any unknown is accepted.
    assert metric_oscr(known, [True, True, True, True], unknown) == 1.0
    assert metric_oscr(known, [True, False, True, False], unknown) == 0.5
    assert metric_oscr(known, [False] * 4, unknown) == 0.0
    # A correct known tied with the only unknown counts one half.
    assert metric_oscr([1.0, 0.0], [True, False], [1.0]) == 0.25


def test_oscr_is_invariant_to_input_order_under_ties():
    known, unknown = make_scores("ties", 0)
    correct = np.random.default_rng(0).random(known.size) < 0.5
    perm_k, perm_u = np.random.default_rng(1).permutation(known.size), np.arange(unknown.size)[::-1]
    assert metric_oscr(known, correct, unknown) == metric_oscr(
        known[perm_k], correct[perm_k], unknown[perm_u]
    )


def test_oscr_accepts_integer_mask_and_scales_to_large_inputs():
    # Quadratic code would take minutes here; equals AUROC when every known is correct.
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(0, 1, 100_000).round(2), rng.normal(1, 1, 100_000).round(2)
    ones = np.ones(known.size, dtype=np.int32)
    assert metric_oscr(known, ones, unknown) == pytest.approx(metric_auroc(known, unknown), abs=TOL)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(
    data=st.lists(st.tuples(st.integers(-10, 10), st.booleans()), min_size=1, max_size=25),
    unknown=st.lists(st.integers(-10, 10), min_size=1, max_size=25),
)
def test_oscr_is_bounded_by_accuracy(data, unknown):
    known = np.array([s for s, _ in data], float)
    correct = np.array([c for _, c in data])
    got = metric_oscr(known, correct, np.array(unknown, float))
    assert 0.0 <= got <= np.mean(correct) + TOL
    assert got == pytest.approx(ref_oscr_pairwise(known, correct, unknown), abs=TOL)


# ---- accuracy, macro-F1 -------------------------------------------------------------------


def test_accuracy_hand_case():
    assert metric_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75


def test_macro_f1_hand_case():
    val = np.arange(10.0)  # 0.9 quantile of 0..9 = 8.1: only 9 is above it
    got = metric_macro_f1(
        val,
        known_scores_test=[1.0, 2.0, 9.0, 3.0],  # third one rejected -> predicted 2
        known_pred_test=[0, 1, 1, 1],
        known_labels_test=[0, 0, 1, 1],
        unknown_scores_test=[9.0, 10.0, 5.0],  # last one accepted -> stays class 0
        unknown_pred_test=[0, 1, 0],
    )
    # y_true = 0 0 1 1 2 2 2, y_pred = 0 1 2 1 2 2 0:
    # F1_0 = 2/(2+1+1), F1_1 = 2/(2+1+1), F1_2 = 4/(4+1+1).
    assert got == pytest.approx((0.5 + 0.5 + 2 / 3) / 3, abs=TOL)


def test_macro_f1_keeps_scores_equal_to_the_threshold():
    val = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    assert threshold_at_reject_rate(val, 0.25) == 4.0
    kwargs = dict(known_pred_test=[0, 1], known_labels_test=[0, 1], unknown_pred_test=[0])
    # Scores equal to the threshold are accepted: the known at 4.0 keeps class 1, the unknown
    # at 4.0 is (wrongly) class 0; an unknown at 4.5 is rejected.
    at = metric_macro_f1(val, [0.0, 4.0], unknown_scores_test=[4.0], reject_rate=0.25, **kwargs)
    above = metric_macro_f1(val, [0.0, 4.0], unknown_scores_test=[4.5], reject_rate=0.25, **kwargs)
    assert at == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert above == 1.0


@pytest.mark.parametrize("seed", SEEDS)
def test_macro_f1_matches_confusion_count_reference(seed):
    rng = np.random.default_rng(seed)
    k = 4
    labels = rng.integers(0, k, 60)
    pred = np.where(rng.random(60) < 0.7, labels, rng.integers(0, k, 60))
    known_scores, unknown_scores = rng.normal(0, 1, 60), rng.normal(1, 1, 25)
    unknown_pred = rng.integers(0, k, 25)
    val = rng.normal(0, 1, 50)
    got = metric_macro_f1(val, known_scores, pred, labels, unknown_scores, unknown_pred)
    threshold = np.quantile(val, 0.9)
    y_true = np.r_[labels, np.full(25, k)]
    y_pred = np.r_[
        np.where(known_scores > threshold, k, pred),
        np.where(unknown_scores > threshold, k, unknown_pred),
    ]
    assert got == pytest.approx(ref_macro_f1(y_true, y_pred, k + 1), abs=TOL)


def test_macro_f1_explicit_class_count_includes_absent_classes():
    args = ([0.0, 1.0], [0.0], [0], [0], [5.0], [0])  # class 0 and unknown both perfect
    assert metric_macro_f1(*args) == 1.0
    assert metric_macro_f1(*args, num_known_classes=3) == pytest.approx(2 / 4)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(
    # Scores on a 1e-3 grid: between two adjacent floats (0 and 5e-324, say) no threshold can be
    # represented, and the interpolated quantile rounds onto one of them, one more sample off.
    scores=st.lists(st.integers(-(10**6), 10**6), min_size=2, max_size=200, unique=True),
    reject_rate=st.floats(0.0, 0.99),
)
def test_threshold_rejects_about_reject_rate_of_validation(scores, reject_rate):
    scores = np.array(scores) / 1e3
    rejected = np.mean(scores > threshold_at_reject_rate(scores, reject_rate))
    assert abs(rejected - reject_rate) <= 1.0 / scores.size + TOL


# ---- embedding geometry, JND --------------------------------------------------------------


def test_dbi_hand_case():
    # Class 7: mean (1, 0), spread 1. Class 3: mean (10, 2), spread 2. Means sqrt(85) apart.
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    assert metric_dbi(x, [7, 7, 3, 3]) == pytest.approx(3.0 / np.sqrt(85.0), abs=TOL)


@pytest.mark.parametrize("seed", SEEDS)
def test_dbi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 5, 80)
    x = rng.normal(0, 1, (80, 6)) + 3.0 * labels[:, None]
    assert metric_dbi(x, labels) == pytest.approx(davies_bouldin_score(x, labels), rel=1e-10)


# Three classes of two points, each 1 from its mean; means (0,0), (3,0), (0,4): a 3-4-5 triangle.
TRIANGLE_X = np.array([[-1.0, 0], [1, 0], [3, -1], [3, 1], [0, 3], [0, 5]])
TRIANGLE_LABELS = np.array([5, 5, 2, 2, 9, 9])


def test_inter_class_distance_hand_case():
    assert metric_inter_class_distance(TRIANGLE_X, TRIANGLE_LABELS) == pytest.approx(4.0)


def test_intra_inter_ratio_hand_case():
    assert metric_intra_inter_ratio(TRIANGLE_X, TRIANGLE_LABELS) == pytest.approx(1.0 / 4.0)


def test_intra_inter_ratio_weights_classes_equally():
    # Class 0 spread 1 (2 samples), class 1 spread 0 (4 samples), means 10 apart:
    # per class (1 + 0) / 2 / 10 = 0.05; a per-sample mean would give 2/6/10 instead.
    x = np.array([[-1.0, 0], [1, 0], [10, 0], [10, 0], [10, 0], [10, 0]])
    assert metric_intra_inter_ratio(x, [0, 0, 1, 1, 1, 1]) == pytest.approx(0.05)


def test_jacobian_norm_difference_estimate_interval_and_closed_forms():
    rng = np.random.default_rng(0)
    known, unknown = rng.normal(size=40), 1.5 + rng.normal(size=30)
    jnd = metric_jacobian_norm_difference(known, unknown, seed=2)
    assert jnd.estimate == pytest.approx(unknown.mean() - known.mean(), abs=TOL)
    assert jnd.low < jnd.estimate < jnd.high
    assert metric_jacobian_norm_difference(known, unknown, seed=2) == jnd  # reproducible
    # Closed forms of the point estimate, either sign.
    assert metric_jacobian_norm_difference([1, 2, 6], [4, 6]).estimate == pytest.approx(2.0)
    assert metric_jacobian_norm_difference([4], [1, 2]).estimate == pytest.approx(-2.5)


def test_jacobian_norm_difference_interval_covers_true_difference_at_its_level():
    rng, m, true_diff = np.random.default_rng(1), 300, 0.5
    covered = 0
    for seed in range(m):
        known, unknown = rng.normal(size=60), true_diff + 2.0 * rng.normal(size=50)
        jnd = metric_jacobian_norm_difference(
            known, unknown, num_resamples=400, level=0.9, seed=seed
        )
        covered += jnd.low <= true_diff <= jnd.high
    assert 0.84 < covered / m < 0.95


def test_bootstrap_resamples_in_blocks_fill_every_resample(monkeypatch):
    monkeypatch.setattr(metrics, "_BOOTSTRAP_BLOCK", 7)  # 1 resample of 5 values per block
    a = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    means = metrics._bootstrap_means(np.random.default_rng(0), a, 50)
    assert means.shape == (50,) and np.all((1 <= means) & (means <= 5))
    assert len(np.unique(means)) > 5


# ---- aggregate API and array types --------------------------------------------------------


def test_open_set_metrics_collects_every_metric():
    known, unknown = make_scores("ties", 0)
    correct = np.arange(known.size) % 3 != 0
    without = open_set_metrics(known, unknown)
    assert set(without) == set(OPEN_SET_METRICS) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    assert without["fpr95"] == metric_fpr_at_tpr(known, unknown, tpr=0.95)
    with_oscr = open_set_metrics(known, unknown, known_correct=correct)
    assert with_oscr == {**without, "oscr": metric_oscr(known, correct, unknown)}


def test_jax_arrays_give_the_numpy_results():
    known, unknown = make_scores("continuous", 0)
    correct = np.arange(known.size) % 4 != 0
    expected = open_set_metrics(known, unknown, correct)
    got = open_set_metrics(jnp.asarray(known), jnp.asarray(unknown), jnp.asarray(correct))
    # jax defaults to float32, so compare at float32 precision.
    assert got == pytest.approx(expected, abs=1e-6)
    assert metric_accuracy(jnp.array([0, 1, 1]), jnp.array([0, 1, 0])) == pytest.approx(2 / 3)
    x = jnp.asarray(TRIANGLE_X, dtype=jnp.float32)
    assert metric_intra_inter_ratio(x, jnp.asarray(TRIANGLE_LABELS)) == pytest.approx(0.25)


# ---- errors: each path with its message ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPEN_SET_METRICS))
def test_score_metrics_need_both_classes(name):
    fn = OPEN_SET_METRICS[name]
    with pytest.raises(ValueError, match=r"unknown_scores is empty; .*each class needs"):
        fn([0.1, 0.2], [])
    with pytest.raises(ValueError, match=r"known_scores is empty; .*each class needs"):
        fn([], [0.1])


@pytest.mark.parametrize("name", sorted(OPEN_SET_METRICS))
def test_score_metrics_reject_non_finite_scores(name):
    fn = OPEN_SET_METRICS[name]
    with pytest.raises(ValueError, match=r"known_scores contains 3 non-finite values .* of 5"):
        fn([np.nan, 0.0, np.inf, -np.inf, 1.0], [0.1])
    with pytest.raises(ValueError, match=r"unknown_scores contains 1 non-finite values"):
        fn([0.0], [np.nan, 1.0])


def test_open_set_metrics_name_the_score_the_split_and_the_count():
    with pytest.raises(
        ValueError,
        match=r"^score 'energy' is NaN or infinite for 2 of 3 known samples, 1 of 2 unknown "
        r"samples; its metrics would be meaningless\. A diverged model",
    ):
        open_set_metrics([np.nan, 0.0, np.inf], [-np.inf, 1.0], score="energy")


def test_check_finite_scores_lists_only_the_bad_splits():
    check_finite_scores("msp", {"known-val": [0.0], "known-test": [1.0]})  # finite: no error
    with pytest.raises(
        ValueError,
        match=r"^score 'msp' is NaN or infinite for 1 of 4 known-val "
        r"samples; its",
    ):
        check_finite_scores("msp", {"known-val": [0.0, 1.0, np.nan, 2.0], "known-test": [1.0]})


def test_scores_must_be_one_dimensional():
    with pytest.raises(ValueError, match=r"known_scores has shape \(2, 2\); expected a 1-D"):
        metric_auroc(np.zeros((2, 2)), [0.1])


@pytest.mark.parametrize("tpr", [0.0, -0.1, 1.01])
def test_fpr_at_tpr_rejects_bad_tpr(tpr):
    with pytest.raises(
        ValueError, match=r"tpr=.*; expected a fraction of known samples in \(0, 1\]"
    ):
        metric_fpr_at_tpr([0.0], [1.0], tpr=tpr)


def test_oscr_errors():
    with pytest.raises(ValueError, match=r"length mismatch: known_scores=3, known_correct=2"):
        metric_oscr([0.0, 1.0, 2.0], [True, False], [1.0])
    with pytest.raises(ValueError, match="known_correct has values other than 0 and 1"):
        metric_oscr([0.0, 1.0], [0.5, 1.0], [1.0])
    with pytest.raises(ValueError, match=r"known_correct has shape \(1, 2\)"):
        metric_oscr([0.0, 1.0], [[True, False]], [1.0])
    with pytest.raises(ValueError, match="unknown_scores is empty"):
        metric_oscr([0.0], [True], [])


def test_accuracy_errors():
    with pytest.raises(ValueError, match=r"length mismatch: pred=2, labels=3"):
        metric_accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="pred is empty; expected at least one class index"):
        metric_accuracy([], [])
    with pytest.raises(ValueError, match="labels has dtype float64; expected integer"):
        metric_accuracy([0, 1], [0.0, 1.0])
    with pytest.raises(ValueError, match=r"pred has shape \(2, 3\); expected a 1-D"):
        metric_accuracy(np.zeros((2, 3), int), [0, 1])


def test_threshold_errors():
    with pytest.raises(ValueError, match=r"reject_rate=1.0; expected a fraction in \[0, 1\)"):
        threshold_at_reject_rate([0.0, 1.0], 1.0)
    with pytest.raises(ValueError, match="known_scores_val is empty; expected the known valid"):
        threshold_at_reject_rate([], 0.1)


def test_macro_f1_errors():
    good = dict(
        known_scores_val=[0.0, 1.0],
        known_scores_test=[0.0, 1.0],
        known_pred_test=[0, 1],
        known_labels_test=[0, 1],
        unknown_scores_test=[2.0],
        unknown_pred_test=[1],
    )
    metric_macro_f1(**good)  # the baseline is valid
    with pytest.raises(ValueError, match=r"known_labels_test has values in \[0, 2\]; .*\[0, 2\)"):
        metric_macro_f1(**{**good, "known_labels_test": [0, 2]}, num_known_classes=2)
    with pytest.raises(ValueError, match=r"unknown_pred_test has values in \[-1, -1\]"):
        metric_macro_f1(**{**good, "unknown_pred_test": [-1]})
    with pytest.raises(ValueError, match=r"length mismatch: .*known_pred_test=3"):
        metric_macro_f1(**{**good, "known_pred_test": [0, 1, 1]})
    with pytest.raises(ValueError, match=r"length mismatch: .*unknown_pred_test=2"):
        metric_macro_f1(**{**good, "unknown_pred_test": [0, 1]})
    with pytest.raises(ValueError, match=r"reject_rate=-0.1; expected a fraction in \[0, 1\)"):
        metric_macro_f1(**good, reject_rate=-0.1)


def test_embedding_metric_errors():
    x = np.zeros((4, 2))
    for fn in (metric_dbi, metric_inter_class_distance, metric_intra_inter_ratio):
        with pytest.raises(ValueError, match="labels contain 1 distinct class"):
            fn(x, [3, 3, 3, 3])
        with pytest.raises(ValueError, match=r"length mismatch: embeddings=4, labels=3"):
            fn(x, [0, 1, 1])
        with pytest.raises(ValueError, match=r"embeddings has shape \(4,\); expected a 2-D"):
            fn(np.zeros(4), [0, 1, 1, 0])
        with pytest.raises(ValueError, match="embeddings contains 1 non-finite values"):
            fn(np.array([[np.nan, 0], [0, 0], [1, 1], [1, 1]]), [0, 0, 1, 1])
    with pytest.raises(ValueError, match=r"4 classes for 4 samples; .*\(C <= N - 1\)"):
        metric_dbi(np.arange(8.0).reshape(4, 2), [0, 1, 2, 3])


def test_jacobian_norm_difference_errors():
    a = np.ones(4)
    with pytest.raises(ValueError, match=r"norms_known has shape \(2, 2\); expected a 1-D"):
        metric_jacobian_norm_difference(np.ones((2, 2)), a)
    with pytest.raises(ValueError, match="norms_unknown is empty; the difference needs"):
        metric_jacobian_norm_difference(a, [])
    with pytest.raises(ValueError, match="norms_known contains 1 non-finite values"):
        metric_jacobian_norm_difference([np.inf, 1.0], a)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\); got 1.5"):
        metric_jacobian_norm_difference(a, a, level=1.5)
    with pytest.raises(ValueError, match="num_resamples must be at least 1; got 0"):
        metric_jacobian_norm_difference(a, a, num_resamples=0)


# ---- collapsed embeddings: the worst DBI and ratio, not the best -------------------------

# Two classes with the same mean (0, 0), each spread 1: DBI = (1 + 1) / 0.
COINCIDENT = np.array([[-1.0, 0], [1, 0], [0, -1], [0, 1]])


def test_dbi_of_two_coinciding_means_is_infinite_where_sklearn_says_perfect():
    assert metric_dbi(COINCIDENT, [0, 0, 1, 1]) == np.inf
    assert davies_bouldin_score(COINCIDENT, [0, 0, 1, 1]) == 0.0  # the deviation


def test_dbi_of_a_total_collapse_is_infinite():
    # Every embedding the same float32 vector, classes of 3 and 7: the two means differ only by
    # the rounding of the sums, and the spreads are as small (scikit-learn's DBI is then a
    # ratio of rounding errors, 1.0 at the time of writing).
    x = np.full((10, 4), 0.1, dtype=np.float32)
    labels = [0] * 3 + [1] * 7
    assert metric_dbi(x, labels) == np.inf
    assert metric_intra_inter_ratio(x, labels) == np.inf


def test_dbi_with_two_of_three_means_coinciding_is_infinite():
    # Classes 0 and 1 share the mean (0, 0); class 2 sits at (10, 0), spread 1. scikit-learn drops
    # the 0-1 pair and reports the maximum over the rest: (1 + 1) / 10 for each class, 0.2.
    x = np.vstack([COINCIDENT, [[9.0, 0], [11, 0]]])
    labels = [0, 0, 1, 1, 2, 2]
    assert metric_dbi(x, labels) == np.inf
    # The ratio is a mean over pairs: (1 + 1 + 1) / 3 over (0 + 10 + 10) / 3 is still defined.
    assert metric_intra_inter_ratio(x, labels) == pytest.approx(3.0 / 20.0)


def test_dbi_of_distinct_point_classes_is_zero_as_in_sklearn():
    # Each class a single point (class 1 repeated so that C <= N - 1): spreads 0, means apart.
    x = np.array([[0.0, 0], [3, 4], [3, 4]])
    assert metric_dbi(x, [0, 1, 1]) == 0.0 == davies_bouldin_score(x, [0, 1, 1])


def test_two_classes_on_one_point_are_infinite_not_zero():
    x = np.array([[1.0, 2], [1, 2], [1, 2], [5, 5]])
    assert metric_dbi(x, [0, 0, 1, 2]) == np.inf  # scikit-learn: 0, as every spread is 0


def test_tiny_but_separated_embeddings_keep_their_dbi():
    # The hand case scaled by 1e-9: scikit-learn's absolute 1e-8 tolerance calls it collapsed.
    x = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 0.0], [10.0, 4.0]])
    assert metric_dbi(1e-9 * x, [7, 7, 3, 3]) == pytest.approx(3.0 / np.sqrt(85.0), rel=1e-9)


def test_correlations_on_hand_made_points():
    # ranks 1 3 2 4 against 1 2 3 4: d^2 = 2, rho = 1 - 6*2/(4*15) = 0.8; one of the six
    # pairs is discordant: tau = (5 - 1)/6
    c = metric_correlations([1, 2, 3, 4], [10, 30, 20, 40])
    assert c["spearman"] == pytest.approx(0.8) and c["kendall"] == pytest.approx(4 / 6)
    assert c["pearson"] == pytest.approx(0.8) and c["points"] == 4
    assert metric_correlations([1, 2], [1, 2]) is None  # fewer than 3 points
    assert metric_correlations([1, 2, 3], [5, 5, 5]) is None  # a constant

    with pytest.raises(ValueError, match="x and y must pair up"):
        metric_correlations([1, 2, 3], [1, 2])
