"""Open-set recognition metrics: threshold-free detection, OSCR, macro-F1, and the Jacobian
norm difference (Eq. 20) with the correlations the figures report; the geometry of the
embeddings (DBI, class distances) is :mod:`jacosr.geometry`.

Conventions shared by every score-based metric here:

- ``scores: [N] float``, higher = more likely unknown (the convention of ``jacosr.scores``).
  A sample is *accepted as known* at threshold ``t`` iff ``score <= t`` and *rejected as
  unknown* iff ``score > t``. Ties with the threshold are therefore accepted.
- Known and unknown samples arrive as two separate arrays, ``known_scores: [N_k]`` and
  ``unknown_scores: [N_u]``; both must be non-empty and finite.
- Inputs may be numpy or jax arrays (anything ``np.asarray`` takes); computation is numpy
  float64 on the host and results are Python floats.

Every function raises ``ValueError`` with a message that says what is wrong and what is
expected: empty arrays, wrong ranks, mismatched lengths, non-finite values, too few classes.
"""

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats
from sklearn.metrics import average_precision_score, f1_score, roc_auc_score

ScoreMetric = Callable[[ArrayLike, ArrayLike], float]


def _finite_1d(name: str, x: ArrayLike, empty_hint: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} has shape {a.shape}; expected a 1-D array [N]")
    if a.size == 0:
        raise ValueError(f"{name} is empty; {empty_hint}")
    bad = int(np.count_nonzero(~np.isfinite(a)))
    if bad:
        raise ValueError(
            f"{name} contains {bad} non-finite values (NaN or ±inf) out of {a.size}; "
            "expected finite values (check the score function for overflow or 0/0)"
        )
    return a


def _score_pair(known_scores: ArrayLike, unknown_scores: ArrayLike) -> tuple[np.ndarray, ...]:
    hint = (
        "open-set metrics compare known against unknown scores, so each class needs at "
        "least one sample"
    )
    return (
        _finite_1d("known_scores", known_scores, hint),
        _finite_1d("unknown_scores", unknown_scores, hint),
    )


def class_indices(name: str, x: ArrayLike) -> np.ndarray:
    """``x`` as ``[N]`` int64 class indices; ``ValueError`` naming ``name`` otherwise."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} has shape {a.shape}; expected a 1-D array [N] of class indices")
    if a.size == 0:
        raise ValueError(f"{name} is empty; expected at least one class index")
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} has dtype {a.dtype}; expected integer class indices")
    return a.astype(np.int64)


def same_length(**arrays: np.ndarray) -> None:
    """Refuse arrays of different lengths, naming each (one entry per sample in each)."""
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise ValueError(f"length mismatch: {listed}; expected one entry per sample in each")


def metric_auroc(known_scores: ArrayLike, unknown_scores: ArrayLike) -> float:
    """Area under the ROC curve for detecting unknowns; unknown is the positive class.

    Args:
      known_scores: [N_k] float, higher = more likely unknown.
      unknown_scores: [N_u] float, same convention.

    Returns:
      AUROC in [0, 1]: P(s_unknown > s_known) + 0.5 P(s_unknown == s_known) over independent
      draws, i.e. tied scores count one half (scikit-learn's ``roc_auc_score``). 0.5 = chance.
    """
    known, unknown = _score_pair(known_scores, unknown_scores)
    is_unknown = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    return float(roc_auc_score(is_unknown, np.concatenate([known, unknown])))


def metric_aupr_in(known_scores: ArrayLike, unknown_scores: ArrayLike) -> float:
    """Area under the precision-recall curve with KNOWN as the positive class (AUPR-In).

    Known samples are ranked by the negated score (most known-looking first). The area is
    scikit-learn's ``average_precision_score``: sum_k (R_k - R_{k-1}) P_k over the distinct
    thresholds, a step function with no interpolation; tied scores enter together.

    Args:
      known_scores: [N_k] float, higher = more likely unknown.
      unknown_scores: [N_u] float, same convention.

    Returns:
      AUPR-In in [0, 1]; its chance level is N_k / (N_k + N_u).
    """
    known, unknown = _score_pair(known_scores, unknown_scores)
    is_known = np.concatenate([np.ones(known.size), np.zeros(unknown.size)])
    return float(average_precision_score(is_known, -np.concatenate([known, unknown])))


def metric_aupr_out(known_scores: ArrayLike, unknown_scores: ArrayLike) -> float:
    """Area under the precision-recall curve with UNKNOWN as the positive class (AUPR-Out).

    Unknown samples are ranked by the score itself; the area is computed as in
    ``metric_aupr_in`` (scikit-learn's step-wise average precision).

    Args:
      known_scores: [N_k] float, higher = more likely unknown.
      unknown_scores: [N_u] float, same convention.

    Returns:
      AUPR-Out in [0, 1]; its chance level is N_u / (N_k + N_u).
    """
    known, unknown = _score_pair(known_scores, unknown_scores)
    is_unknown = np.concatenate([np.zeros(known.size), np.ones(unknown.size)])
    return float(average_precision_score(is_unknown, np.concatenate([known, unknown])))


def metric_fpr_at_tpr(
    known_scores: ArrayLike, unknown_scores: ArrayLike, tpr: float = 0.95
) -> float:
    """Fraction of unknowns accepted as known when a fraction ``tpr`` of knowns is accepted.

    With ``tpr=0.95`` this is FPR95. Here *known* is the positive class of the operating
    point: a sample is accepted as known iff ``score <= t``. The threshold ``t`` is the
    smallest one that accepts at least a fraction ``tpr`` of the known samples,

        t = min { t : #{known <= t} / N_k >= tpr },

    which is the ``ceil(tpr * N_k)``-th smallest known score. The result is
    ``#{unknown <= t} / N_u``: unknowns tied with the threshold count as accepted. Since the
    accepted fraction of unknowns can only grow with ``t``, this equals the minimum FPR over
    all thresholds whose known-acceptance rate is at least ``tpr`` -- the first ROC point at
    or above ``tpr``, without interpolating between ROC points.

    Args:
      known_scores: [N_k] float, higher = more likely unknown.
      unknown_scores: [N_u] float, same convention.
      tpr: target fraction of known samples accepted, in (0, 1].

    Returns:
      FPR in [0, 1]; lower is better.
    """
    known, unknown = _score_pair(known_scores, unknown_scores)
    if not 0.0 < tpr <= 1.0:
        raise ValueError(f"tpr={tpr}; expected a fraction of known samples in (0, 1]")
    known = np.sort(known)
    # Rates i / N_k compared with tpr apply the definition literally, with no ceil() of a
    # rounded product in between.
    accepted_rate = np.arange(1, known.size + 1) / known.size
    threshold = known[np.argmax(accepted_rate >= tpr)]
    return float(np.count_nonzero(unknown <= threshold) / unknown.size)


def metric_accuracy(pred: ArrayLike, labels: ArrayLike) -> float:
    """Closed-set accuracy: fraction of samples with ``pred == labels``.

    Args:
      pred: [N] int, predicted class indices (argmax of the logits, not the logits).
      labels: [N] int, true class indices.

    Returns:
      Accuracy in [0, 1].
    """
    pred = class_indices("pred", pred)
    labels = class_indices("labels", labels)
    same_length(pred=pred, labels=labels)
    return float(np.mean(pred == labels))


def metric_oscr(
    known_scores: ArrayLike, known_correct: ArrayLike, unknown_scores: ArrayLike
) -> float:
    """Open-set classification rate (Dhamija et al. 2018), the area under the CCR-FPR curve.

    At threshold ``t`` (accept as known iff ``score <= t``):

        CCR(t) = #{known i : correct_i and s_i <= t} / N_k   (all knowns in the denominator)
        FPR(t) = #{unknown j : s_j <= t} / N_u

    The curve runs from (0, 0) (nothing accepted) to (1, accuracy) (everything accepted)
    through one point per distinct score value, joined by straight lines; OSCR is its
    trapezoidal area. Samples sharing a score enter the accepted set together, so ties give
    a diagonal segment and the result does not depend on the order of the inputs. This makes

        OSCR = (1 / (N_k N_u)) sum_{i correct} sum_j ([s_i < s_j] + 0.5 [s_i == s_j]),

    so OSCR <= accuracy, and OSCR equals ``metric_auroc`` when every known is correct. The
    ARPL code base (Chen et al.) sweeps over sorted positions instead and pairs the CCR after
    position k with the FPR from position k, so its value differs from this one by at most
    one sample's step and depends on the order of ties.

    Runs in O(N log N) for N = N_k + N_u by sorting once and accumulating counts.

    Args:
      known_scores: [N_k] float, higher = more likely unknown.
      known_correct: [N_k] bool (or 0/1), whether the closed-set prediction of each known
        sample is correct.
      unknown_scores: [N_u] float, same convention as ``known_scores``.

    Returns:
      OSCR in [0, accuracy]; higher is better.
    """
    known, unknown = _score_pair(known_scores, unknown_scores)
    correct = np.asarray(known_correct)
    if correct.ndim != 1:
        raise ValueError(f"known_correct has shape {correct.shape}; expected a 1-D array [N_k]")
    same_length(known_scores=known, known_correct=correct)
    if correct.dtype != np.bool_:
        if not np.all((correct == 0) | (correct == 1)):
            raise ValueError(
                "known_correct has values other than 0 and 1; expected a boolean mask "
                "(prediction == label) per known sample"
            )
        correct = correct.astype(bool)

    _, group = np.unique(np.concatenate([known, unknown]), return_inverse=True)
    num_groups = int(group.max()) + 1
    group_known, group_unknown = group[: known.size], group[known.size :]
    correct_per_group = np.bincount(group_known[correct], minlength=num_groups)
    unknown_per_group = np.bincount(group_unknown, minlength=num_groups)
    ccr = np.concatenate([[0], np.cumsum(correct_per_group)]) / known.size
    fpr = np.concatenate([[0], np.cumsum(unknown_per_group)]) / unknown.size
    return float(np.sum(np.diff(fpr) * (ccr[1:] + ccr[:-1])) / 2.0)


def threshold_at_reject_rate(known_scores_val: ArrayLike, reject_rate: float = 0.10) -> float:
    """Score threshold that rejects a fraction ``reject_rate`` of known validation samples.

    The threshold is the ``1 - reject_rate`` quantile of the known validation scores
    (``np.quantile``, linear interpolation); samples with ``score > threshold`` are rejected
    as unknown. With distinct scores the rejected fraction of the validation set is within
    1 / N_val of ``reject_rate``.

    Args:
      known_scores_val: [N_val] float, scores of the known validation set, higher = more
        likely unknown.
      reject_rate: fraction of known validation samples to reject, in [0, 1).

    Returns:
      The threshold, a float.
    """
    scores = _finite_1d(
        "known_scores_val", known_scores_val, "expected the known validation scores"
    )
    if not 0.0 <= reject_rate < 1.0:
        raise ValueError(f"reject_rate={reject_rate}; expected a fraction in [0, 1)")
    return float(np.quantile(scores, 1.0 - reject_rate))


def metric_macro_f1(
    known_scores_val: ArrayLike,
    known_scores_test: ArrayLike,
    known_pred_test: ArrayLike,
    known_labels_test: ArrayLike,
    unknown_scores_test: ArrayLike,
    unknown_pred_test: ArrayLike,
    *,
    reject_rate: float = 0.10,
    num_known_classes: int | None = None,
) -> float:
    """Macro-F1 over K+1 classes at a fixed rejection rate (Protocol B).

    Class K is "unknown". The threshold comes from the known VALIDATION scores
    (``threshold_at_reject_rate``), so that ``reject_rate`` of them are rejected; test samples
    with ``score > threshold`` are predicted K, the others keep their closed-set prediction.
    Unknown test samples have true label K; an accepted unknown counts as a false positive of
    the known class it was predicted as, which is why its prediction is needed. F1 is averaged
    with equal weight over the labels 0..K (``sklearn.metrics.f1_score(average="macro")``); a
    class with no true and no predicted samples scores 0 (scikit-learn's default, silenced).

    Args:
      known_scores_val: [N_val] float, known validation scores, higher = more likely unknown.
      known_scores_test: [N_k] float, known test scores.
      known_pred_test: [N_k] int in [0, K), closed-set predictions for the known test set.
      known_labels_test: [N_k] int in [0, K), their true labels.
      unknown_scores_test: [N_u] float, unknown test scores.
      unknown_pred_test: [N_u] int in [0, K), closed-set predictions for the unknown test set.
      reject_rate: fraction of known validation samples rejected, in [0, 1).
      num_known_classes: K; by default one more than the largest class index among the
        labels and predictions, which misses trailing classes absent from all of them.

    Returns:
      Macro-F1 in [0, 1].
    """
    known_scores, unknown_scores = _score_pair(known_scores_test, unknown_scores_test)
    known_pred = class_indices("known_pred_test", known_pred_test)
    known_labels = class_indices("known_labels_test", known_labels_test)
    unknown_pred = class_indices("unknown_pred_test", unknown_pred_test)
    same_length(
        known_scores_test=known_scores, known_pred_test=known_pred, known_labels_test=known_labels
    )
    same_length(unknown_scores_test=unknown_scores, unknown_pred_test=unknown_pred)
    indices = {
        "known_pred_test": known_pred,
        "known_labels_test": known_labels,
        "unknown_pred_test": unknown_pred,
    }
    if num_known_classes is None:
        num_known_classes = 1 + max(int(a.max()) for a in indices.values())
    for name, a in indices.items():
        if a.min() < 0 or a.max() >= num_known_classes:
            raise ValueError(
                f"{name} has values in [{a.min()}, {a.max()}]; expected known class indices "
                f"in [0, {num_known_classes}) (class {num_known_classes} is 'unknown')"
            )
    threshold = threshold_at_reject_rate(known_scores_val, reject_rate)
    unknown_class = num_known_classes
    y_true = np.concatenate([known_labels, np.full(unknown_scores.size, unknown_class)])
    y_pred = np.concatenate(
        [
            np.where(known_scores > threshold, unknown_class, known_pred),
            np.where(unknown_scores > threshold, unknown_class, unknown_pred),
        ]
    )
    return float(
        f1_score(
            y_true,
            y_pred,
            labels=np.arange(num_known_classes + 1),
            average="macro",
            zero_division=0.0,
        )
    )


class EstimateInterval(NamedTuple):
    """A point estimate and its two-sided confidence interval ``[low, high]``."""

    estimate: float
    low: float
    high: float


_BOOTSTRAP_BLOCK = 2**22
"""Resampled values drawn at once (32 MiB of indices): the resamples go in blocks, so memory
stays bounded for large samples."""


def _bootstrap_means(rng: np.random.Generator, a: np.ndarray, num_resamples: int) -> np.ndarray:
    """``[num_resamples]`` means of resamples of ``a`` with replacement."""
    means = np.empty(num_resamples)
    step = max(1, _BOOTSTRAP_BLOCK // a.size)
    for lo in range(0, num_resamples, step):
        idx = rng.integers(0, a.size, size=(min(step, num_resamples - lo), a.size))
        means[lo : lo + len(idx)] = a[idx].mean(axis=1)
    return means


def metric_jacobian_norm_difference(
    norms_known: ArrayLike,
    norms_unknown: ArrayLike,
    *,
    num_resamples: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> EstimateInterval:
    """Jacobian norm difference ``JND = E_unknown ||J|| - E_known ||J||`` (Eq. 20), bootstrap CI.

    Positive when unknown inputs have larger Jacobian norms than known ones, which is what
    closed-set metric learning does to the representation (the paper's Sec. IV). The two
    samples are resampled independently with replacement; the interval is the percentile
    bootstrap interval of the resampled differences of means.

    Args:
      norms_known: ``[N_k]`` per-sample norms on known-class test inputs (e.g.
        :func:`jacosr.jacobian.jacobian_norms`).
      norms_unknown: ``[N_u]`` per-sample norms on unknown-class inputs.
      num_resamples: bootstrap resamples.
      level: two-sided confidence level in ``(0, 1)``.
      seed: seed of the resampling (NumPy's ``default_rng``).

    Returns:
      ``EstimateInterval(estimate, low, high)`` of Python floats.
    """
    hint = "the difference needs at least one norm of each kind"
    known = _finite_1d("norms_known", norms_known, hint)
    unknown = _finite_1d("norms_unknown", norms_unknown, hint)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1; got {num_resamples}")
    rng = np.random.default_rng(seed)
    diffs = _bootstrap_means(rng, unknown, num_resamples) - _bootstrap_means(
        rng, known, num_resamples
    )
    alpha = (1 - level) / 2
    low, high = np.quantile(diffs, [alpha, 1 - alpha])
    return EstimateInterval(float(unknown.mean() - known.mean()), float(low), float(high))


def metric_correlations(x: ArrayLike, y: ArrayLike) -> dict[str, float] | None:
    """Pearson's r, Spearman's rho and Kendall's tau-b of two paired series, with p-values.

    The figures' correlations (JND against AUROC over training steps or over models, the loss
    against ``||J||`` per sample, the JND against the number of known classes), from
    ``scipy.stats`` (ties get average ranks; the p-values are two-sided).

    Args:
      x, y: ``[P]`` finite paired values.

    Returns:
      ``{"pearson", "pearson_p", "spearman", "spearman_p", "kendall", "kendall_p", "points"}``,
      or None when no correlation is defined: fewer than 3 points or a constant series.
    """
    x = _finite_1d("x", x, "a correlation needs paired values")
    y = _finite_1d("y", y, "a correlation needs paired values")
    if x.size != y.size:
        raise ValueError(f"x and y must pair up; got {x.size} and {y.size} values")
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    out: dict[str, float] = {}
    for name, test in (
        ("pearson", stats.pearsonr),
        ("spearman", stats.spearmanr),
        ("kendall", stats.kendalltau),
    ):
        result = test(x, y)
        out[name], out[f"{name}_p"] = float(result.statistic), float(result.pvalue)
    return {**out, "points": int(x.size)}


OPEN_SET_METRICS: Mapping[str, ScoreMetric] = MappingProxyType(
    {
        "auroc": metric_auroc,
        "aupr_in": metric_aupr_in,
        "aupr_out": metric_aupr_out,
        "fpr95": metric_fpr_at_tpr,
    }
)
"""Read-only registry of the metrics that need only (known_scores, unknown_scores)."""


def check_finite_scores(score: str, scores: Mapping[str, ArrayLike]) -> None:
    """Refuse non-finite scores before any metric sees them.

    Args:
      score: the score's name, for the message (``"msp"``).
      scores: split name -> ``[N]`` scores of that split (``{"known-test": ..., ...}``).

    Raises:
      ValueError naming the score and, per split with non-finite values, how many of how many
      samples; a NaN or infinite score (a diverged model's NaN outputs, an overflow, a
      non-finite input) would otherwise make every metric of the table meaningless.
    """
    bad = []
    for split, values in scores.items():
        a = np.asarray(values, dtype=np.float64)
        n = int(np.count_nonzero(~np.isfinite(a)))
        if n:
            bad.append(f"{n} of {a.size} {split} samples")
    if bad:
        raise ValueError(
            f"score {score!r} is NaN or infinite for {', '.join(bad)}; its metrics would be "
            "meaningless. A diverged model (NaN outputs) or non-finite inputs cause this: check "
            "the run's loss in metrics.jsonl and the data"
        )


def open_set_metrics(
    known_scores: ArrayLike,
    unknown_scores: ArrayLike,
    known_correct: ArrayLike | None = None,
    *,
    score: str = "scores",
) -> dict[str, float]:
    """Every score-based metric at once: the entries of ``OPEN_SET_METRICS``, plus ``oscr``.

    Args:
      known_scores: [N_k] float, higher = more likely unknown.
      unknown_scores: [N_u] float, same convention.
      known_correct: optional [N_k] bool, closed-set correctness per known sample; when given,
        the result also holds ``"oscr"``.
      score: the score's name, for the error on non-finite scores
        (:func:`check_finite_scores`).

    Returns:
      ``{"auroc", "aupr_in", "aupr_out", "fpr95"[, "oscr"]} -> float``.
    """
    check_finite_scores(score, {"known": known_scores, "unknown": unknown_scores})
    results = {name: fn(known_scores, unknown_scores) for name, fn in OPEN_SET_METRICS.items()}
    if known_correct is not None:
        results["oscr"] = metric_oscr(known_scores, known_correct, unknown_scores)
    return results
