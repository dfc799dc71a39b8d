"""Unknown-class scores. Convention: higher = more likely unknown, always.

Some scores look only at the network's outputs of the samples they score (the loss score,
MSP, max-logit, energy); others must first be fitted on the known training data (OpenMax,
maximum cosine similarity to the class means) or need the model itself (the Jacobian norm).
One interface serves all of them: a registered :class:`ScoreSpec` builds, from a
:class:`ScoreContext` (the loss config, the model's pure embedding function and its state
and, when the score asks for it, the eval-mode outputs on known-train), a scorer

    scorer(outputs: Outputs of [B] samples, x: [B, H, W, C] float32 in [-1, 1]) -> [B]

that is then applied to known-val, known-test and unknown-test alike, so whatever is fitted is
fitted once. The array-level score functions (``score_*``) are pure and usable on their own;
:mod:`jacosr.detectors` wraps the registry in one object per score for any model (a jacosr
run, a plain JAX function, or precomputed logits and embeddings).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp
from scipy.stats import weibull_min

from jacosr import jacobian
from jacosr.config import require
from jacosr.losses import LossConfig, loss_spec, per_sample_loss
from jacosr.models import ModelState, Outputs, unit_normalise

Scorer = Callable[[Outputs, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class ScoreConfig:
    """Settings of the scores that have any.

    Attributes:
      jacobian_estimator: estimator of ||J||_F^2 for ``jacobian_stochastic`` (``hutchinson``
        or ``xnystrace``, see :mod:`jacosr.jacobian`).
      jacobian_probes: probes per sample for ``jacobian_stochastic``.
      jacobian_max_samples: the Jacobian scores (``jacobian``, ``jacobian_stochastic``) are
        evaluated on at most this many samples of each split (known-val, known-test,
        unknown-test): a fixed random subset drawn from --score-seed (all when there are
        fewer; 0: always all). They differentiate the network per sample, which is slow on a
        CPU for image backbones (README, "Jacobian scores on big test sets"); the other scores
        always see every sample. The results name the subsets (``subsets``).
      openmax_tail: OpenMax's Weibull tail size: the largest distances per class that are fitted
        (Bendale & Boult 2016 use 20).
      openmax_alpha: how many top-ranked classes OpenMax recalibrates (its alpha rank).
      score_seed: seed of the stochastic scores' probes and of the Jacobian scores' subsets.

    Refused when built (``ValueError`` naming the flag): an unknown estimator, fewer than 1
    probe (2 for ``xnystrace``), a negative sample cap, a tail below 2 (a Weibull fit needs two
    distances) and an alpha below 1.
    """

    jacobian_estimator: str = "hutchinson"
    jacobian_probes: int = 8
    jacobian_max_samples: int = 1000
    openmax_tail: int = 20
    openmax_alpha: int = 2
    score_seed: int = 0

    def __post_init__(self):
        estimators = jacobian.ESTIMATORS
        require(
            self.jacobian_estimator in estimators,
            "--jacobian-estimator",
            f"one of {', '.join(sorted(estimators))}",
            self.jacobian_estimator,
        )
        least = 2 if self.jacobian_estimator == "xnystrace" else 1
        require(
            self.jacobian_probes >= least,
            "--jacobian-probes",
            f">= {least} with --jacobian-estimator {self.jacobian_estimator}",
            self.jacobian_probes,
        )
        require(
            self.jacobian_max_samples >= 0,
            "--jacobian-max-samples",
            ">= 0 (0: every sample)",
            self.jacobian_max_samples,
        )
        require(
            self.openmax_tail >= 2,
            "--openmax-tail",
            ">= 2 (the Weibull fit needs two distances per class)",
            self.openmax_tail,
        )
        require(self.openmax_alpha >= 1, "--openmax-alpha", ">= 1", self.openmax_alpha)


class ScoreContext(NamedTuple):
    """What a score may be built from, computed once per evaluated model.

    ``loss``: the loss config (the loss score and the softmax logits depend on it).
    ``config``: the scores' settings.
    ``embedding_apply``: the representation as a pure function of the model's arrays and ONE
      unbatched input, ``f(state, x: [H, W, C]) -> [D]``, eval mode
      (:func:`jacosr.models.embedding_apply`); ``model_state``: those arrays. The Jacobian
      scores pass the state as a traced argument, so the engine compiles once per architecture.
      Any pure JAX function will do (``f(x)`` with ``model_state=None``); None when there is no
      differentiable model (scores of precomputed outputs; the Jacobian scores then refuse).
    ``train``: eval-mode outputs on known-train (``[N]`` samples), or None when no selected score
      fits on it. ``train_labels``: ``[N]`` int, or None.
    """

    loss: LossConfig
    config: ScoreConfig
    embedding_apply: Callable[..., jax.Array] | None
    model_state: ModelState | Any
    train: Outputs | None = None
    train_labels: np.ndarray | None = None


class ScoreSpec(NamedTuple):
    """A registered score: ``make(context) -> scorer``; ``fits_on_train`` says whether
    ``make`` needs ``context.train`` (so the evaluator computes it only when needed);
    ``differentiates`` whether the scorer differentiates the model per sample (it reads the
    inputs ``x`` and ``context.embedding_apply`` rather than the outputs; it is slow on big test
    sets, so the evaluator caps its samples, :attr:`ScoreConfig.jacobian_max_samples`)."""

    make: Callable[[ScoreContext], Scorer]
    fits_on_train: bool
    differentiates: bool = False


# ----- scores of the outputs alone ----------------------------------------------------------


def score_loss(outputs: Outputs, config: LossConfig) -> jax.Array:
    """The training loss evaluated at the pseudo label ``argmax_k class_scores`` (Eq. 22). ``[B]``.

    Uses the same similarity, scale, margins and extra terms (GCPL's prototype term, RPL's
    radius term) as training. A known sample fits its predicted class well (low loss); an
    unknown one fits none (high loss).

    Eq. 22 scores with "the sample-wise metric-learning loss", while Eq. 24 brings in the
    margin "during the training of the OvR metric-learning loss", so whether the score keeps
    the margin is ambiguous. This one keeps it (the loss exactly as trained; the tables'
    score); :func:`score_loss_no_margin` drops it.
    """
    pseudo = jnp.argmax(outputs.class_scores, axis=-1)
    return per_sample_loss(config, outputs, pseudo)


def score_loss_no_margin(outputs: Outputs, config: LossConfig) -> jax.Array:
    """:func:`score_loss` with the angular margins set to 0 (the other reading of Eq. 22: the
    margin as a training device only). ``[B]``; the same as ``score_loss`` for a loss without
    margins (every loss but ``movr``, and ``movr`` trained with both margins 0)."""
    return score_loss(outputs, dataclasses.replace(config, margin_pos=0.0, margin_neg=0.0))


def score_msp(outputs: Outputs, config: LossConfig) -> jax.Array:
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017) of the loss's logits."""
    logits = loss_spec(config.loss).softmax_logits(outputs, config)
    return -jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


def score_max_logit(outputs: Outputs, config: LossConfig) -> jax.Array:
    """Negative maximum logit (Vaze et al. 2022's MLS) of the loss's softmax logits. ``[B]``."""
    return -jnp.max(loss_spec(config.loss).softmax_logits(outputs, config), axis=-1)


def score_energy(outputs: Outputs, config: LossConfig) -> jax.Array:
    """Free energy ``-logsumexp_k z_k`` (Liu et al. 2020, temperature 1) of the softmax logits."""
    return -jax.nn.logsumexp(loss_spec(config.loss).softmax_logits(outputs, config), axis=-1)


# ----- scores fitted on known-train ---------------------------------------------------------


def _listed(values) -> str:
    """``values`` as ``"3, 4, 7"``, the first ten of them and how many more there are."""
    values = [str(v) for v in values]
    more = f" and {len(values) - 10} more" if len(values) > 10 else ""
    return ", ".join(values[:10]) + more


def check_train_labels(labels: np.ndarray, num_classes: int, least: int = 1) -> None:
    """Refuse training labels ``[N]`` that a fit per class cannot use: a label outside
    ``[0, num_classes)`` (which ones, and K), or a class with fewer than ``least`` samples
    (which ones). A fit that ignored them would leave a class out, or fail on another one."""
    labels = np.asarray(labels)
    outside = (labels < 0) | (labels >= num_classes)
    if outside.any():
        raise ValueError(
            f"labels must be class indices in [0, K) with K = {num_classes} classes; got "
            f"{_listed(np.unique(labels[outside]))} ({np.count_nonzero(outside)} of "
            f"{len(labels)} samples)"
        )
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts < least)
    if len(short):
        samples = "sample" if least == 1 else "samples"
        raise ValueError(
            f"each of the K = {num_classes} classes needs at least {least} training {samples} "
            f"(labels 0..{num_classes - 1}, every class present); too few: "
            f"{_listed(f'class {k} ({counts[k]})' for k in short)}"
        )


def class_means(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> np.ndarray:
    """``[N, D], [N] -> [K, D]`` mean embedding per class; every class must occur
    (:func:`check_train_labels`)."""
    check_train_labels(labels, num_classes)
    counts = np.bincount(labels, minlength=num_classes)
    sums = np.zeros((num_classes, embeddings.shape[1]))
    np.add.at(sums, labels, embeddings)
    return sums / counts[:, None]


def score_max_cosine(embeddings: jax.Array, means: jax.Array) -> jax.Array:
    """Negative maximum cosine similarity ``-max_k cos(f, mu_k)`` to the class means. ``[B]``.

    ``embeddings: [B, D]``, ``means: [K, D]`` (known-train class means). Using the class means
    rather than the head's prototypes makes the score defined for every head (RPL's reciprocal
    points lie away from their class); for a cosine head the means align with the prototypes.
    """
    return -jnp.max(unit_normalise(embeddings) @ unit_normalise(means).T, axis=-1)


class OpenMaxFit(NamedTuple):
    """A fitted OpenMax model: per-class mean activation vectors and Weibull parameters.

    ``means: [K, K]``; ``shape, scale: [K]`` of the Weibull CDF ``1 - exp(-(d / scale)^shape)``
    of the distance to each class's mean.
    """

    means: np.ndarray
    shape: np.ndarray
    scale: np.ndarray


def openmax_activations(logits: np.ndarray) -> np.ndarray:
    """OpenMax's activation vectors: the softmax logits shifted so each row's minimum is 0.

    Softmax ignores such a shift, OpenMax does not: it moves mass ``v_k (1 - w_k)`` of the top
    classes to the unknown class, which assumes positive top activations. Distance heads (GCPL)
    have only negative logits, so without the shift their unknown score would flip sign.
    """
    logits = np.asarray(logits, np.float64)
    return logits - logits.min(axis=-1, keepdims=True)


def fit_openmax(
    activations: np.ndarray, labels: np.ndarray, num_classes: int, *, tail_size: int = 20
) -> OpenMaxFit:
    """Fit OpenMax (Bendale & Boult 2016) on known-train activations ``[N, K]``, labels ``[N]``.

    Per class k, from the correctly classified training samples of k: the mean activation
    vector ``mu_k`` and a two-parameter Weibull (location 0, maximum likelihood, as
    ``scipy.stats.weibull_min.fit``) fitted to the ``tail_size`` largest Euclidean distances
    ``||v - mu_k||`` (libMR's ``FitHigh``, without its translation). A class with fewer than two
    correctly classified samples (a barely trained model) is fitted on all its samples. Labels
    outside ``[0, K)`` and classes with fewer than two samples are refused
    (:func:`check_train_labels`).
    """
    check_train_labels(labels, num_classes, least=2)
    correct = np.argmax(activations, -1) == labels
    means, shapes, scales = [], [], []
    for k in range(num_classes):
        of_class = labels == k
        v = activations[of_class & correct]
        if len(v) < 2:
            v = activations[of_class]
        mu = v.mean(axis=0)
        tail = np.sort(np.linalg.norm(v - mu, axis=-1))[-tail_size:]
        shape, _, scale = weibull_min.fit(np.maximum(tail, 1e-12), floc=0.0)
        means.append(mu)
        shapes.append(shape)
        scales.append(scale)
    return OpenMaxFit(np.stack(means), np.asarray(shapes), np.asarray(scales))


def score_openmax(model: OpenMaxFit, activations: np.ndarray, *, alpha: int = 2) -> np.ndarray:
    """Log of OpenMax's probability of the unknown class, ``activations: [B, K] -> [B]``.

    The ``alpha`` top-ranked classes are recalibrated: rank r = 0, 1, ... gets weight
    ``w_k = 1 - (alpha - r) / alpha * WeibullCDF_k(||v - mu_k||)``; ``v'_k = v_k w_k`` and the
    unknown class gets ``v'_0 = sum_k v_k (1 - w_k)``; the score is ``log softmax(v'_0, v')_0``
    (the log ranks like the probability, which underflows to 0 for confident knowns).
    """
    num_classes = activations.shape[-1]
    alpha = min(alpha, num_classes)
    distance = np.linalg.norm(activations[:, None, :] - model.means[None], axis=-1)
    cdf = weibull_min.cdf(distance, model.shape, scale=model.scale)
    rank = np.argsort(np.argsort(-activations, axis=-1), axis=-1)
    rank_weight = np.clip((alpha - rank) / alpha, 0.0, None)
    w = 1.0 - rank_weight * cdf
    revised = activations * w
    unknown = np.sum(activations - revised, axis=-1, keepdims=True)
    all_logits = np.concatenate([unknown, revised], axis=-1)
    return unknown[:, 0] - logsumexp(all_logits, axis=-1)


# ----- the Jacobian norm of the representation ----------------------------------------------


def score_jacobian(
    f: Callable, x: np.ndarray, *, params: Any = None, progress: str | None = None
) -> np.ndarray:
    """Exact ``||df/dx||_F`` per sample (:func:`jacosr.jacobian.jacobian_norms`). ``[B]``.

    ``f(x) -> z``, or ``f(params, x) -> z`` with ``params`` (as the engine takes them: e.g.
    :func:`jacosr.models.embedding_apply` and a model state). Training lowers the norm on known
    classes more than on unknowns (Eq. 20), so a large norm means "unknown". NaN for a sample
    whose input, embedding or norm is not finite (a NaN image through a ReLU net has a zero
    Jacobian; it must not score as the most familiar sample). ``progress``: a label for the
    engine's progress bar and time estimate (see :func:`jacosr.jacobian.jacobian_norms`).
    """
    return jacobian.jacobian_norms(f, x, params=params, progress=progress)


def score_jacobian_stochastic(
    f: Callable,
    x: np.ndarray,
    key: jax.Array,
    *,
    params: Any = None,
    estimator: str = "hutchinson",
    num_probes: int = 8,
    progress: str | None = None,
) -> np.ndarray:
    """``sqrt`` of an unbiased estimate of ``||df/dx||_F^2`` (:func:`jacosr.jacobian.
    estimate_sqnorms`), clipped at 0. ``[B]``; sample b's probes depend on ``key`` and b only.
    ``f``, ``params`` and ``progress`` as in :func:`score_jacobian`.

    Probes are uniform on the sphere, which both estimators accept (XNysTrace needs
    rotation-invariant probes) and whose variance is never above Gaussian probes'. NaN where
    the input, the embedding or the estimate is not finite, as for :func:`score_jacobian`.
    """
    sq, _ = jacobian.estimate_sqnorms(
        f,
        x,
        key,
        params=params,
        estimator=estimator,
        num_probes=num_probes,
        probes="sphere",
        progress=progress,
    )
    return np.sqrt(np.maximum(sq, 0.0))  # np.maximum keeps NaN


# ----- the registry --------------------------------------------------------------------------


def _of_outputs(fn: Callable[[Outputs, LossConfig], jax.Array]) -> ScoreSpec:
    return ScoreSpec(lambda ctx: lambda out, x: np.asarray(fn(out, ctx.loss)), False)


def _make_max_cosine(ctx: ScoreContext) -> Scorer:
    # The classes from the labels, so that embeddings alone (no class scores) suffice.
    labels = np.asarray(ctx.train_labels)
    means = class_means(np.asarray(ctx.train.embedding), labels, int(labels.max()) + 1)
    return lambda out, x: np.asarray(score_max_cosine(out.embedding, means))


def _make_openmax(ctx: ScoreContext) -> Scorer:
    def activations(out: Outputs) -> np.ndarray:
        return openmax_activations(loss_spec(ctx.loss.loss).softmax_logits(out, ctx.loss))

    num_classes = ctx.train.class_scores.shape[-1]
    model = fit_openmax(
        activations(ctx.train), ctx.train_labels, num_classes, tail_size=ctx.config.openmax_tail
    )
    return lambda out, x: score_openmax(model, activations(out), alpha=ctx.config.openmax_alpha)


def _make_jacobian(ctx: ScoreContext) -> Scorer:
    return lambda out, x: score_jacobian(
        ctx.embedding_apply, x, params=ctx.model_state, progress="jacobian"
    )


def _make_jacobian_stochastic(ctx: ScoreContext) -> Scorer:
    key = jax.random.key(ctx.config.score_seed)
    return lambda out, x: score_jacobian_stochastic(
        ctx.embedding_apply,
        x,
        key,
        params=ctx.model_state,
        estimator=ctx.config.jacobian_estimator,
        num_probes=ctx.config.jacobian_probes,
        progress="jacobian_stochastic",
    )


SCORES: dict[str, ScoreSpec] = {
    "loss": _of_outputs(score_loss),
    "loss_no_margin": _of_outputs(score_loss_no_margin),
    "msp": _of_outputs(score_msp),
    "max_logit": _of_outputs(score_max_logit),
    "energy": _of_outputs(score_energy),
    "max_cosine": ScoreSpec(_make_max_cosine, True),
    "openmax": ScoreSpec(_make_openmax, True),
    "jacobian": ScoreSpec(_make_jacobian, False, differentiates=True),
    "jacobian_stochastic": ScoreSpec(_make_jacobian_stochastic, False, differentiates=True),
}


def score_spec(name: str) -> ScoreSpec:
    """The registered score ``name``; an unknown name lists the valid ones."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; valid scores are: {', '.join(sorted(SCORES))}")
    return SCORES[name]
