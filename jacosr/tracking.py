"""Tracking: the open-set geometry of one model state, measured during training.

:func:`measure` takes one model state and a fixed set of known-test and unknown-test samples
and returns one row: the closed-set accuracy, the geometry of the known embeddings (DBI,
inter-class distance, intra/inter ratio), the mean Jacobian norm ``||df/dx||_F`` on known
and on unknown samples with the Jacobian norm difference (Eq. 20), and the AUROC of the loss
score (Eq. 22), of MSP and of the Jacobian norm as scores. The training loop
(:mod:`jacosr.train`) calls it at the steps a :class:`TrackConfig` names and appends each row
to ``dynamics.jsonl`` in the run's workdir; other experiments call it on a trained model.

Row schema (one JSON object per line of ``dynamics.jsonl``; keys in this order)::

    step                  int, training steps done (0: the initial model)
    estimator             "exact", "hutchinson" or "xnystrace": how the norms were computed
    num_probes            probes per sample of a stochastic estimator, null when exact
    num_known, num_unknown  samples measured (the --track-samples subsets)
    accuracy              closed-set accuracy on the known samples
    dbi, inter_class_distance, intra_inter_ratio   of the known embeddings (jacosr.metrics)
    norm_known, norm_unknown      mean ||df/dx||_F over the samples
    sqnorm_known, sqnorm_unknown  mean ||df/dx||_F^2 over the samples
    jnd, jnd_low, jnd_high        norm_unknown - norm_known (Eq. 20), 95% bootstrap interval
    auroc_loss, auroc_msp, auroc_jacobian   known-test vs unknown-test, unknown positive

Exact or stochastic (``--track-estimator auto``): exact norms cost ``min(d, d_z)`` forward or
reverse passes per sample (:func:`jacosr.jacobian.jacobian_norms`), the stochastic estimators
``k = --track-probes`` passes. ``auto`` computes them exactly when that costs at most
:data:`EXACT_COST_FACTOR` times the estimator's, ``min(d, d_z) <= 4 k`` (with k = 16: the
digits MLP and LeNet, ``d = 64``), and otherwise uses Hutchinson's estimator with Rademacher
probes (the VGG32, WRN and ResNet representations have ``d_z >= 128`` and ``d = 3072``).
Every row records which estimator and how many probes gave its numbers.

What a stochastic row reports: the estimators give unbiased per-sample estimates of ``||J||_F^2``;
``sqnorm_*`` are their means, unbiased. The per-sample norm is the square root of the estimate
(clipped at 0), which is biased low by about ``Var / (8 ||J||^3)``: a fraction ``r^2 / 8`` of the
norm, ``r`` the relative standard deviation of the squared-norm estimate (a bias well under 1% of
the norm at the per-sample errors that 16 Rademacher probes give on the trained digits MLP;
measured: README, "Speed"). ``norm_*``, the JND and the Jacobian score's AUROC use these per-sample
roots, as Eq. 20 averages norms, not squared norms; their bias (a fraction ``r^2 / 8`` of each norm,
so not quite the same on known and unknown samples) is left in: a correction from each sample's
standard error would add noise where the estimate is near 0. ``sqrt(sqnorm_*)``, the RMS norm, has a
negligible bias (its ``r`` is that of a mean over all the samples).

Determinism: the samples are a subset drawn once from ``--track-seed`` (the same at every
step and for every training seed); the probes and the bootstrap of a row come from
``fold_in(key(--track-seed), step)``. So a row is a function of the model state and the step
alone: a resumed run reproduces the rows of an uninterrupted one bit for bit. The parameters
are traced arguments of the Jacobian engine and of the forward pass
(:func:`jacosr.models.embedding_apply`, :func:`jacosr.evaluate.predict`), so measuring a
second state of the same architecture compiles nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import IO, NamedTuple

import jax
import numpy as np
from flax import nnx

from jacosr import jacobian
from jacosr.config import require
from jacosr.data import OpenSetData, to_float
from jacosr.evaluate import EMBEDDING_METRICS, predict, subset_indices
from jacosr.losses import LossConfig
from jacosr.metrics import metric_auroc, metric_jacobian_norm_difference
from jacosr.models import ModelState, Outputs
from jacosr.models import embedding_apply as make_embedding_apply
from jacosr.scores import score_loss, score_msp

TRACK_ESTIMATORS = ("auto", "exact", *jacobian.ESTIMATORS)
EXACT_COST_FACTOR = 4
"""``auto`` computes the norms exactly when ``min(d, d_z)`` (the exact passes per sample) is
at most this many times ``--track-probes`` (the estimator's passes per sample)."""
JND_RESAMPLES = 1000
"""Bootstrap resamples of each row's JND interval (cheap next to the row's Jacobian norms)."""


ROW_LABELS = {
    "dbi": "DBI, known test (lower: better separated)",
    "inter_class_distance": "mean inter-class distance",
    "intra_inter_ratio": "intra / inter-class distance",
    "jnd": "Jacobian norm difference (Eq. 20)",
    "norm_known": r"mean $\|\partial f/\partial x\|_F$, known",
    "norm_unknown": r"mean $\|\partial f/\partial x\|_F$, unknown",
    "auroc_loss": "AUROC (loss score)",
    "auroc_msp": "AUROC (MSP)",
    "auroc_jacobian": r"AUROC ($\|J\|_F$ score)",
    "accuracy": "closed-set accuracy",
}
"""Axis label of each tracked metric (a key of a ``dynamics.jsonl`` row)."""
SERIES = (*ROW_LABELS, "jnd_low", "jnd_high")
"""The metrics :func:`series_over_seeds` keeps (mean and std over seeds at every step)."""


@dataclass(frozen=True)
class TrackConfig:
    """Tracking during training: which steps to measure, on which samples, and how (see
    :mod:`jacosr.tracking`). Off unless one of track_every, track_steps or track_points is set;
    when on, step 0 (the initial model) and the last step are always measured.

    Attributes:
      track_every: measure every this many steps (0: not by period).
      track_steps: measure at these steps (0 to --steps).
      track_points: measure at this many steps in all, N: step 0 and N - 1 steps spaced
        geometrically from 1 to --steps (most change happens early); 0: not by count, else
        at least 2.
      track_samples: at most this many known-test and this many unknown-test samples are
        measured: a fixed random subset of each (all when there are fewer), the same at
        every step.
      track_estimator: how the Jacobian norms are computed: exact, hutchinson, xnystrace,
        or auto: exact when min(d, d_z) <= 4 x --track-probes (input and embedding sizes;
        the digits MLP and LeNet), else hutchinson.
      track_probes: probes per sample of the stochastic estimators.
      track_seed: seed of the sample subsets, the probes and the JND bootstrap (the probes
        and the bootstrap of step s come from fold_in(key(--track-seed), s)).

    Refused when built (``ValueError`` naming the flag): a negative period or step, one
    point, fewer than 2 samples, an unknown estimator, fewer probes than the estimator takes
    (1; 2 for xnystrace). Steps beyond --steps are refused by the training config.
    """

    track_every: int = 0
    track_steps: tuple[int, ...] = ()
    track_points: int = 0
    track_samples: int = 1000
    track_estimator: str = "auto"
    track_probes: int = 16
    track_seed: int = 0

    def __post_init__(self):
        require(self.track_every >= 0, "--track-every", ">= 0 (0: off)", self.track_every)
        require(
            all(s >= 0 for s in self.track_steps),
            "--track-steps",
            "steps >= 0",
            self.track_steps,
        )
        require(
            self.track_points == 0 or self.track_points >= 2,
            "--track-points",
            "0 (off) or >= 2 (step 0 and the last step at least)",
            self.track_points,
        )
        require(self.track_samples >= 2, "--track-samples", ">= 2", self.track_samples)
        require(
            self.track_estimator in TRACK_ESTIMATORS,
            "--track-estimator",
            f"one of {', '.join(TRACK_ESTIMATORS)}",
            self.track_estimator,
        )
        least = jacobian.MIN_PROBES.get(self.track_estimator, 1)
        require(
            self.track_probes >= least,
            "--track-probes",
            f">= {least} with --track-estimator {self.track_estimator}",
            self.track_probes,
        )
        require(self.track_seed >= 0, "--track-seed", ">= 0", self.track_seed)

    @property
    def enabled(self) -> bool:
        """Whether any step is tracked."""
        return self.track_every > 0 or bool(self.track_steps) or self.track_points > 0


def geometric_steps(points: int, last: int) -> tuple[int, ...]:
    """Step 0 and ``points - 1`` distinct steps spaced geometrically from 1 to ``last``.

    The ideal steps ``last ** (i / (points - 2))``, ``i = 0 .. points - 2``, are rounded, and
    a step that would repeat its predecessor is moved one past it (the early, crowded end), so
    there are exactly ``points`` steps; two points are 0 and ``last``. Needs ``2 <= points <=
    last + 1``.
    """
    if not 2 <= points <= last + 1:
        raise ValueError(f"{points} distinct steps from 0 to {last} need 2 <= points <= {last + 1}")
    ideal = np.rint(np.geomspace(1, last, points - 1)).astype(int) if points > 2 else [last]
    steps = [0]
    for s in ideal:
        steps.append(max(int(s), steps[-1] + 1))
    return tuple(steps)


def tracked_steps(track: TrackConfig, last: int) -> tuple[int, ...]:
    """The sorted steps at which a run of ``last`` steps is measured (empty when off): step
    0, the multiples of ``track_every``, ``track_steps``, the geometric ``track_points`` and
    ``last``."""
    if not track.enabled:
        return ()
    steps = {0, last, *track.track_steps}
    if track.track_every:
        steps.update(range(track.track_every, last, track.track_every))
    if track.track_points:
        steps.update(geometric_steps(track.track_points, last))
    return tuple(sorted(steps))


class TrackSamples(NamedTuple):
    """The samples a run is measured on.

    ``known_x: [N_k, H, W, C]`` and ``unknown_x: [N_u, H, W, C]`` float32 in [-1, 1];
    ``known_y: [N_k]`` int, known labels 0..K-1.
    """

    known_x: np.ndarray
    known_y: np.ndarray
    unknown_x: np.ndarray


def track_samples(data: OpenSetData, cap: int, seed: int) -> TrackSamples:
    """At most ``cap`` known-test and ``cap`` unknown-test samples of ``data``, drawn once from
    ``seed`` (all of a split that has at most ``cap``)."""
    rng = np.random.default_rng(seed)
    known = subset_indices(len(data.known_test.y), cap, rng)
    unknown = subset_indices(len(data.unknown_test.y), cap, rng)
    return TrackSamples(
        np.asarray(to_float(data.known_test.x[known])),
        np.asarray(data.known_test.y[known]),
        np.asarray(to_float(data.unknown_test.x[unknown])),
    )


def resolve_estimator(track: TrackConfig, d: int, d_z: int) -> tuple[str, int | None]:
    """``(estimator, probes)`` for a representation ``R^d -> R^d_z``: ``("exact", None)`` or a
    stochastic estimator and its probes per sample (see ``auto`` in the module docstring)."""
    estimator = track.track_estimator
    if estimator == "auto":
        cheap = min(d, d_z) <= EXACT_COST_FACTOR * track.track_probes
        estimator = "exact" if cheap else "hutchinson"
    return (estimator, None) if estimator == "exact" else (estimator, track.track_probes)


def jacobian_sqnorms(
    f, state: ModelState, xs: np.ndarray, estimator: str, probes: int | None, key: jax.Array
) -> np.ndarray:
    """``[B]`` per-sample ``||df/dx||_F^2`` of ``f(state, x)`` at ``xs: [B, ...]``: exact, or
    unbiased stochastic estimates (sample b's probes from ``fold_in(key, b)``)."""
    if estimator == "exact":
        return jacobian.jacobian_norms(f, xs, params=state) ** 2
    sq, _ = jacobian.estimate_sqnorms(
        f, xs, key, params=state, estimator=estimator, num_probes=probes
    )
    return sq


@partial(jax.jit, static_argnums=0)
def _scores(loss_config: LossConfig, outputs: Outputs) -> tuple[jax.Array, jax.Array]:
    """``([B], [B])`` loss score (Eq. 22) and MSP score of ``outputs``: one compiled program
    (eagerly, their many small operations would each compile once)."""
    return score_loss(outputs, loss_config), score_msp(outputs, loss_config)


def _seed_of(key: jax.Array) -> int:
    """A NumPy seed from a PRNG key (its bits)."""
    return int.from_bytes(np.asarray(jax.random.key_data(key)).tobytes(), "little")


def measure(
    graphdef: nnx.GraphDef,
    state: ModelState,
    samples: TrackSamples,
    loss_config: LossConfig,
    track: TrackConfig,
    key: jax.Array,
) -> dict:
    """One row of ``dynamics.jsonl`` for the model ``(graphdef, state)`` (schema in the
    module docstring; ``step`` is the caller's).

    Known and unknown samples go through the network and through the Jacobian engine as one
    batch each (no loop over samples); ``key`` draws the stochastic estimator's probes and the
    JND bootstrap. Raises ``ValueError`` when a score or norm is not finite (a diverged model).
    """
    num_known = len(samples.known_y)
    xs = np.concatenate([samples.known_x, samples.unknown_x])
    outputs = predict(graphdef, state, xs)
    estimator, probes = resolve_estimator(
        track, math.prod(xs.shape[1:]), outputs.embedding.shape[-1]
    )
    probe_key, bootstrap_key = jax.random.split(key)
    sq = jacobian_sqnorms(make_embedding_apply(graphdef), state, xs, estimator, probes, probe_key)
    norms = np.sqrt(np.maximum(sq, 0.0))  # NaN stays NaN, and the metrics refuse it

    def split(values) -> tuple[np.ndarray, np.ndarray]:
        values = np.asarray(values, np.float64)
        return values[:num_known], values[num_known:]

    known_embedding = np.asarray(outputs.embedding[:num_known])
    predicted = np.argmax(outputs.class_scores[:num_known], axis=-1)
    norm_known, norm_unknown = split(norms)
    sq_known, sq_unknown = split(sq)
    jnd = metric_jacobian_norm_difference(
        norm_known, norm_unknown, num_resamples=JND_RESAMPLES, seed=_seed_of(bootstrap_key)
    )
    loss_scores, msp_scores = _scores(loss_config, outputs)
    scores = {
        "loss": split(loss_scores),
        "msp": split(msp_scores),
        "jacobian": (norm_known, norm_unknown),
    }
    return {
        "estimator": estimator,
        "num_probes": probes,
        "num_known": num_known,
        "num_unknown": len(xs) - num_known,
        "accuracy": float(np.mean(predicted == samples.known_y)),
        **{name: fn(known_embedding, samples.known_y) for name, fn in EMBEDDING_METRICS.items()},
        "norm_known": float(norm_known.mean()),
        "norm_unknown": float(norm_unknown.mean()),
        "sqnorm_known": float(sq_known.mean()),
        "sqnorm_unknown": float(sq_unknown.mean()),
        "jnd": jnd.estimate,
        "jnd_low": jnd.low,
        "jnd_high": jnd.high,
        **{f"auroc_{name}": metric_auroc(*pair) for name, pair in scores.items()},
    }


class Tracker:
    """Measures a run at its tracked steps and appends the rows to ``dynamics.jsonl``.

    Built once per run, with the run's samples (:func:`track_samples`); :meth:`write`
    measures one state and writes its row, flushed before it returns (a kill after it keeps
    the row, a kill during it leaves at most a partial last line, which a resumed run
    drops)."""

    def __init__(
        self,
        graphdef: nnx.GraphDef,
        samples: TrackSamples,
        loss_config: LossConfig,
        track: TrackConfig,
        file: IO[str],
    ):
        self.graphdef = graphdef
        self.samples = samples
        self.loss_config = loss_config
        self.track = track
        self.file = file

    def write(self, step: int, state: ModelState) -> dict:
        """Measure ``state``, the model after ``step`` steps; append and return its row."""
        key = jax.random.fold_in(jax.random.key(self.track.track_seed), step)
        row = {"step": step}
        row.update(measure(self.graphdef, state, self.samples, self.loss_config, self.track, key))
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        return row


def series_over_seeds(runs: Mapping[str, list[dict]]) -> dict:
    """``{"steps": [T], "mean": {metric: [T]}, "std": {metric: [T]}, "final": {metric:
    [S]}, "estimator", "num_probes"}`` from the ``dynamics.jsonl`` rows of one run's S
    seeds (``run name -> rows``; every seed tracks the same steps). ``std`` is the sample
    standard deviation over seeds (ddof 1). A seed's infinite value (the DBI of an embedding
    whose class means coincide, early in training) makes that step's mean infinite and its
    std NaN: undefined, not an error."""
    tables = list(runs.values())
    steps = [row["step"] for row in tables[0]]
    for rows in tables:
        if [row["step"] for row in rows] != steps:
            raise ValueError(f"the seeds of a run tracked different steps: {list(runs)}")
    values = {m: np.array([[row[m] for row in rows] for rows in tables]) for m in SERIES}
    with np.errstate(invalid="ignore"):  # inf - inf in the std: NaN, as documented
        std = {m: v.std(axis=0, ddof=1).tolist() for m, v in values.items()}
    return {
        "runs": list(runs),
        "estimator": tables[0][0]["estimator"],
        "num_probes": tables[0][0]["num_probes"],
        "steps": steps,
        "mean": {m: v.mean(axis=0).tolist() for m, v in values.items()},
        "std": std,
        "final": {m: v[:, -1].tolist() for m, v in values.items()},
    }
