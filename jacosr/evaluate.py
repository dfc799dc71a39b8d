"""Evaluate a trained model on an open-set split: one call, every score, every metric.

:func:`evaluate` returns a JSON-serialisable table: closed-set accuracy on known-test, the split
description, the embedding geometry of known-test (DBI, inter-class distance, intra/inter
ratio), and per unknown score (see :mod:`jacosr.scores`) AUROC, AUPR-In, AUPR-Out, FPR95, OSCR
and macro-F1 (Protocol B style: the threshold rejects ``reject_rate`` of known-val; absent when
the split has no known-val, as in Protocol A, which trains on every known training image).
:func:`format_table` prints it; :func:`format_metrics` prints the per-score rows alone, e.g. of
:func:`jacosr.metrics.open_set_metrics` on the scores of your own model.

The Jacobian scores differentiate the network once per sample: on a big test set and a CPU
that takes minutes (README, "Jacobian scores on big test sets"). They are evaluated
on a seeded subset of at most ``jacobian_max_samples`` samples of each split (see
:class:`jacosr.scores.ScoreConfig`; the results name the subsets), with a progress bar and a
time estimate from the Jacobian engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jacosr import jacobian
from jacosr.config import require, to_dict
from jacosr.data import OpenSetData, Split, to_float
from jacosr.geometry import metric_dbi, metric_inter_class_distance, metric_intra_inter_ratio
from jacosr.losses import LossConfig
from jacosr.metrics import (
    check_finite_scores,
    metric_accuracy,
    metric_jacobian_norm_difference,
    metric_macro_f1,
    open_set_metrics,
)
from jacosr.models import ModelState, Outputs, apply_model, embedding_apply
from jacosr.scores import SCORES, ScoreConfig, ScoreContext, Scorer, score_loss, score_spec

# Columns of the per-score table, in print order.
SCORE_METRICS = ("auroc", "aupr_in", "aupr_out", "fpr95", "oscr", "macro_f1")
EMBEDDING_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "dbi": metric_dbi,
    "inter_class_distance": metric_inter_class_distance,
    "intra_inter_ratio": metric_intra_inter_ratio,
}


@dataclass(frozen=True)
class EvalConfig:
    """Which unknown scores to evaluate, and how.

    Attributes:
      scores: score names (see ``jacosr.scores.SCORES``); ``jacobian`` (exact) and
        ``jacobian_stochastic`` differentiate the network per sample, cheap for the digits MLP,
        slow for VGG32 on CPU.
      reject_rate: fraction of known-val rejected by the macro-F1 threshold.
      score: the scores' settings.

    Refused when built (``ValueError`` naming the flag), so before any training: no score, an
    unknown score name, a reject_rate outside [0, 1).
    """

    scores: tuple[str, ...] = ("loss", "msp", "max_logit", "energy", "max_cosine", "openmax")
    reject_rate: float = 0.1
    score: ScoreConfig = field(default_factory=ScoreConfig)

    def __post_init__(self):
        valid = ", ".join(sorted(SCORES))
        require(len(self.scores) > 0, "--scores", f"at least one of {valid}", self.scores)
        for name in self.scores:
            require(name in SCORES, "--scores", f"names out of {valid}", name)
        require(
            0 <= self.reject_rate < 1,
            "--reject-rate",
            "a fraction in [0, 1) (of known-val rejected by the macro-F1 threshold)",
            self.reject_rate,
        )


@partial(jax.jit, static_argnums=0)
def forward(graphdef: nnx.GraphDef, state: ModelState, x: jax.Array) -> Outputs:
    """Eval-mode outputs of one batch ``x: [B, H, W, C]`` (float32 or uint8), compiled once
    per architecture and batch shape (:func:`predict` runs it over a whole split)."""
    return apply_model(graphdef, state, to_float(x), train=False)[0]


def map_padded(fn, x: np.ndarray, batch_size: int):
    """``fn`` over ``x: [N, ...]`` in batches of exactly ``batch_size`` (the last one padded
    with copies of the last sample, so every call reuses one compiled ``fn``), the outputs (a
    pytree of ``[batch_size, ...]`` arrays) concatenated to ``[N, ...]`` NumPy arrays."""
    n = len(x)
    if n == 0:
        raise ValueError(f"a forward pass needs at least one input; got x of shape {np.shape(x)}")
    pad = -n % batch_size
    xp = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    parts = [fn(xp[i : i + batch_size]) for i in range(0, len(xp), batch_size)]
    return jax.tree.map(lambda *a: np.concatenate(a)[:n], *parts)


def predict(
    graphdef: nnx.GraphDef, state: ModelState, x: np.ndarray, *, batch_size: int = 512
) -> Outputs:
    """Eval-mode outputs for ``x: [N, H, W, C]`` (float32 or uint8), as numpy arrays, in
    fixed-size batches (:func:`map_padded`)."""
    return map_padded(lambda xs: forward(graphdef, state, xs), x, batch_size)


# How the splits are called in messages, and in the data (and the results' "subsets").
SPLIT_NAMES = {"val": "known-val", "known": "known-test", "unknown": "unknown-test"}
DATA_SPLITS = {"val": "known_val", "known": "known_test", "unknown": "unknown_test"}


def subset_indices(
    n: int, cap: int, seed: int | tuple[int, ...] | np.random.Generator
) -> np.ndarray:
    """``[min(n, cap)]`` sorted indices of a seeded random subset of ``range(n)``, drawn without
    replacement by ``np.random.default_rng(seed)`` (a ``Generator`` is used as it is, so that
    several subsets can come from one stream); all of ``range(n)``, drawing nothing, when
    ``n <= cap`` or ``cap == 0``."""
    if cap == 0 or n <= cap:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=cap, replace=False))


def _score_splits(
    scorer: Scorer,
    outputs: dict[str, Outputs],
    splits: dict,
    keep: dict[str, np.ndarray],
    with_inputs: bool,
) -> dict[str, np.ndarray]:
    """The scores of the ``keep`` samples of every split, from ONE scorer call on all of them
    (one progress bar and one time estimate for the Jacobian scores, one padded last chunk),
    split back. The inputs (float32 in [-1, 1]) are passed only ``with_inputs``."""
    names = list(splits)
    out = jax.tree.map(
        lambda *a: np.concatenate(a),
        *[jax.tree.map(lambda v, k=k: v[keep[k]], outputs[k]) for k in names],
    )
    x = None
    if with_inputs:
        x = np.concatenate([np.asarray(to_float(splits[k].x[keep[k]])) for k in names])
    scores = np.asarray(scorer(out, x))
    bounds = np.cumsum([len(keep[k]) for k in names])[:-1]
    return dict(zip(names, np.split(scores, bounds), strict=True))


def _check_splits(data: OpenSetData, needs_train: bool) -> None:
    """Every split a metric needs holds samples: known-test and unknown-test are compared,
    known-train fits OpenMax and the class means. (Known-val, which sets the macro-F1
    threshold, may be empty: then there is no macro-F1.)"""
    sizes = data.describe()["sizes"]
    needed = ["known_test", "unknown_test"] + (["known_train"] if needs_train else [])
    empty = [name for name in needed if sizes[name] == 0]
    if empty:
        raise ValueError(
            f"cannot evaluate on the split of {data.source!r} with known classes "
            f"{list(data.known_classes)}: {', '.join(empty)} holds no samples; the open-set "
            "metrics compare known-test with unknown-test samples and known-train fits OpenMax "
            "and max_cosine, so each needs at least one"
        )


def evaluate(
    graphdef: nnx.GraphDef,
    state: ModelState,
    data: OpenSetData,
    loss_config: LossConfig,
    config: EvalConfig = EvalConfig(),
    *,
    progress: bool = False,
) -> dict:
    """Closed-set accuracy, embedding geometry, and every open-set metric per unknown score
    (``progress``: a bar over the scores).

    Scores follow "higher = more likely unknown"; unknown is the positive class of AUROC and
    AUPR-Out. Predictions are ``argmax`` of the head's scores. Raises ``ValueError`` when a
    split it needs is empty, and when a score is NaN or infinite (naming the score, the splits
    and how many samples) rather than report meaningless metrics. Returns::

        {"accuracy": float, "split": data.describe(), "eval": EvalConfig as a dict,
         "embedding": {"dbi", "inter_class_distance", "intra_inter_ratio"},
         "scores": {score: {"auroc", "aupr_in", "aupr_out", "fpr95", "oscr", "macro_f1"}},
         "subsets": {score: {"known_val", "known_test", "unknown_test": samples scored}},
         "jnd": {"estimate", "low", "high"}}

    ``jnd``, only when the ``jacobian`` score is evaluated: the Jacobian norm difference
    (Eq. 20) of its exact norms, mean over unknown-test minus mean over known-test, with a 95%
    percentile-bootstrap interval (:func:`jacosr.metrics.metric_jacobian_norm_difference`, on
    the same samples as the score's row). ``macro_f1`` is left out (not NaN: the file stays
    strict JSON) when known-val is empty.
    ``subsets`` names the scores evaluated on a subset: the Jacobian scores, when a split has
    more than ``config.score.jacobian_max_samples`` samples, see only a seeded subset of each
    split (:func:`subset_indices` with seed ``(score_seed, i)``, ``i`` = 0, 1, 2 for known-val,
    known-test, unknown-test), and every metric of their row, OSCR and macro-F1 included, is
    computed on those samples alone. Empty when every score saw every sample.
    """
    specs = {name: score_spec(name) for name in config.scores}
    val = {"val": data.known_val} if len(data.known_val.y) else {}
    splits = {**val, "known": data.known_test, "unknown": data.unknown_test}
    needs_train = any(spec.fits_on_train for spec in specs.values())
    _check_splits(data, needs_train)
    outputs = {name: predict(graphdef, state, s.x) for name, s in splits.items()}
    context = ScoreContext(
        loss=loss_config,
        config=config.score,
        embedding_apply=embedding_apply(graphdef),
        model_state=state,
        train=predict(graphdef, state, data.known_train.x) if needs_train else None,
        train_labels=data.known_train.y if needs_train else None,
    )
    pred = {name: np.argmax(out.class_scores, -1) for name, out in outputs.items()}
    labels = data.known_test.y
    every = {k: np.arange(len(s.y)) for k, s in splits.items()}
    cap, seed = config.score.jacobian_max_samples, config.score.score_seed
    capped = {
        k: subset_indices(len(s.y), cap, (seed, list(DATA_SPLITS).index(k)))
        for k, s in splits.items()
    }
    table, subsets, extra = {}, {}, {}
    bar = tqdm(specs.items(), desc="evaluate", unit="score", disable=not progress)
    for name, spec in bar:
        bar.set_postfix_str(name)
        keep = capped if spec.differentiates else every
        if any(len(keep[k]) < len(every[k]) for k in splits):
            subsets[name] = {DATA_SPLITS[k]: len(keep[k]) for k in splits}
        s = _score_splits(spec.make(context), outputs, splits, keep, spec.differentiates)
        check_finite_scores(name, {SPLIT_NAMES[k]: v for k, v in s.items()})
        p = {k: pred[k][keep[k]] for k in splits}
        y = labels[keep["known"]]
        row = open_set_metrics(s["known"], s["unknown"], p["known"] == y, score=name)
        if "val" in s:
            row["macro_f1"] = metric_macro_f1(
                s["val"],
                s["known"],
                p["known"],
                y,
                s["unknown"],
                p["unknown"],
                reject_rate=config.reject_rate,
                num_known_classes=data.num_known,
            )
        table[name] = {metric: row[metric] for metric in SCORE_METRICS if metric in row}
        if name == "jacobian":  # the scores are the norms
            jnd = metric_jacobian_norm_difference(s["known"], s["unknown"], seed=seed)
            extra["jnd"] = jnd._asdict()
    embedding = outputs["known"].embedding
    return {
        "accuracy": metric_accuracy(pred["known"], labels),
        "split": data.describe(),
        "eval": to_dict(config),
        "embedding": {name: fn(embedding, labels) for name, fn in EMBEDDING_METRICS.items()},
        "scores": table,
        "subsets": subsets,
        **extra,
    }


def format_metrics(rows: dict[str, dict[str, float]]) -> str:
    """Per-score metrics as fixed-width text: a header, one row per score.

    ``rows``: score name -> ``{metric: value}``, e.g. ``{"msp": open_set_metrics(known, unknown,
    correct), ...}`` (:func:`jacosr.metrics.open_set_metrics`). The columns are those of
    :data:`SCORE_METRICS` that the first row has, in that order."""
    metrics = [m for m in SCORE_METRICS if m in next(iter(rows.values()))]
    lines = [f"{'score':<20}" + "".join(f"{m:>10}" for m in metrics)]
    for name, row in rows.items():
        lines.append(f"{name:<20}" + "".join(f"{row[m]:>10.4f}" for m in metrics))
    return "\n".join(lines)


def format_table(results: dict) -> str:
    """The output of :func:`evaluate` as fixed-width text: a header line, one row per score
    (without the macro-F1 column when there is none), and a line per score evaluated on a
    subset of the samples."""
    split = results["split"]
    emb = results["embedding"]
    lines = [
        f"{split['source']} known {split['known_classes']} vs unknown "
        f"{split['unknown_source']} {split['unknown_classes']}",
        f"closed-set accuracy {results['accuracy']:.4f} | DBI {emb['dbi']:.4f} | "
        f"inter-class distance {emb['inter_class_distance']:.4f} | "
        f"intra/inter {emb['intra_inter_ratio']:.4f}",
        format_metrics(results["scores"]),
    ]
    jnd = results.get("jnd")
    if jnd is not None:
        lines.append(
            f"Jacobian norm difference (Eq. 20) {jnd['estimate']:.4f} "
            f"[{jnd['low']:.4f}, {jnd['high']:.4f}] (95% bootstrap; the jacobian score's norms)"
        )
    for name, used in results.get("subsets", {}).items():
        sizes = split["sizes"]
        of = ", ".join(f"{n} of {sizes[k]} {k.replace('_', '-')}" for k, n in used.items())
        lines.append(f"{name}: on a seeded subset ({of}; --jacobian-max-samples)")
    return "\n".join(lines)


def capped_test_splits(data: OpenSetData, max_samples: int, seed: int) -> tuple[Split, Split]:
    """Known-test and unknown-test, each cut to at most ``max_samples`` samples.

    The kept samples are drawn without replacement by ``default_rng(seed)`` and keep their
    order in the split; a split no larger than ``max_samples`` is returned whole.
    """
    rng = np.random.default_rng(seed)

    def cut(split: Split) -> Split:
        if len(split.y) <= max_samples:
            return split
        keep = subset_indices(len(split.y), max_samples, rng)
        return Split(split.x[keep], split.y[keep])

    return cut(data.known_test), cut(data.unknown_test)


def per_sample(
    graphdef: nnx.GraphDef, state: ModelState, x: np.ndarray, loss: LossConfig
) -> dict[str, np.ndarray]:
    """What the analyses of one model need of each input ``x: [N, H, W, C]``.

    Returns ``{"embedding": [N, D], "loss": [N], "norm": [N]}``: the eval-mode representation
    f(x), the loss at the pseudo label (Eq. 22) and the exact ||df/dx||_F. The Jacobian
    engine takes the state as an argument, so another state of the architecture compiles
    nothing.
    """
    outputs = predict(graphdef, state, x)
    norms = jacobian.jacobian_norms(embedding_apply(graphdef), to_float(x), params=state)
    return {
        "embedding": np.asarray(outputs.embedding),
        "loss": np.asarray(score_loss(outputs, loss)),
        "norm": norms,
    }
