"""The geometry of the known classes in the representation: the Davies-Bouldin index, the mean
inter-class distance and the intra/inter-class ratio (the paper's Figs. 4, 8-10, 15 and the
evaluation table), as ``metric_*(embeddings [N, D], labels [N]) -> float``.

Inputs may be numpy or jax arrays; computation is numpy float64 on the host. Collapsed
classes (coinciding class means) give ``inf``, the worst value, where scikit-learn's DBI gives
0, the best. Every function raises ``ValueError`` naming what is wrong: a wrong rank,
mismatched lengths, non-finite values, too few classes.
"""

import numpy as np
from numpy.typing import ArrayLike

from jacosr.metrics import class_indices, same_length


def _embeddings_by_class(
    embeddings: ArrayLike, labels: ArrayLike, min_classes: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated ``x: [N, D]``, class index per sample ``[N]`` in [0, C), class means ``[C, D]``."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings has shape {x.shape}; expected a 2-D array [N, D]")
    labels = class_indices("labels", labels)
    same_length(embeddings=x, labels=labels)
    bad = int(np.count_nonzero(~np.isfinite(x)))
    if bad:
        raise ValueError(
            f"embeddings contains {bad} non-finite values (NaN or ±inf); expected finite values"
        )
    classes, index = np.unique(labels, return_inverse=True)
    if classes.size < min_classes:
        raise ValueError(
            f"labels contain {classes.size} distinct class(es); expected at least {min_classes}"
        )
    sums = np.zeros((classes.size, x.shape[1]))
    np.add.at(sums, index, x)
    means = sums / np.bincount(index)[:, None]
    return x, index, means


COINCIDE_RTOL = 1e-8
"""Two class means closer than this times the largest embedding norm coincide: far below the
resolution of float32 embeddings, far above the rounding of a mean of identical vectors."""


def _class_spread(x: np.ndarray, index: np.ndarray, means: np.ndarray) -> np.ndarray:
    """``[C]`` mean Euclidean distance of each class's samples to its mean (the S_i of DBI)."""
    distance_to_mean = np.linalg.norm(x - means[index], axis=-1)
    return np.bincount(index, weights=distance_to_mean) / np.bincount(index)


def _mean_distances(x: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[C, C]`` distances between the class means of ``x``, and ``[C, C]`` bool: which pairs
    of two different classes have coinciding means (:data:`COINCIDE_RTOL`), i.e. collapsed."""
    distance = np.linalg.norm(means[:, None] - means[None], axis=-1)
    tol = COINCIDE_RTOL * float(np.max(np.linalg.norm(x, axis=-1)))
    return distance, (distance <= tol) & ~np.eye(len(means), dtype=bool)


def metric_dbi(embeddings: ArrayLike, labels: ArrayLike) -> float:
    """Davies-Bouldin index of the embeddings grouped by label; lower = better separated.

    DBI = (1/C) sum_i max_{j != i} (S_i + S_j) / ||mu_i - mu_j||, with S_i the mean Euclidean
    distance of class i's samples to their mean mu_i (``sklearn.metrics.davies_bouldin_score``).

    Collapse is the worst case, not the best: when two class means coincide (within
    :data:`COINCIDE_RTOL` of the largest embedding norm) the index is infinite, and this
    returns ``inf``. scikit-learn deviates there: it returns 0, the best value, when all means
    are within 1e-8 of each other or every class is a single point (even one shared by two
    classes), and it drops pairs of identical means from the maximum. Elsewhere the two agree
    to rounding.

    Args:
      embeddings: [N, D] float.
      labels: [N] int, any class indices; needs 2 <= C <= N - 1 distinct values.

    Returns:
      DBI >= 0, or ``inf`` when two classes' means coincide.
    """
    x, index, means = _embeddings_by_class(embeddings, labels, min_classes=2)
    if means.shape[0] > x.shape[0] - 1:
        raise ValueError(
            f"{means.shape[0]} classes for {x.shape[0]} samples; the Davies-Bouldin index "
            "needs at least one class with two or more samples (C <= N - 1)"
        )
    distance, coincide = _mean_distances(x, means)
    if np.any(coincide):
        return float("inf")
    spread = _class_spread(x, index, means)
    np.fill_diagonal(distance, np.inf)
    ratio = (spread[:, None] + spread[None]) / distance
    return float(np.mean(np.max(ratio, axis=1)))


def _mean_pairwise_distance(means: np.ndarray) -> float:
    upper = np.triu_indices(means.shape[0], k=1)
    return float(np.mean(np.linalg.norm(means[:, None] - means[None], axis=-1)[upper]))


def metric_inter_class_distance(embeddings: ArrayLike, labels: ArrayLike) -> float:
    """Mean Euclidean distance between class means, over the C (C - 1) / 2 unordered pairs.

    Args:
      embeddings: [N, D] float.
      labels: [N] int, any class indices; needs at least 2 distinct values.

    Returns:
      Mean inter-class distance >= 0.
    """
    _, _, means = _embeddings_by_class(embeddings, labels, min_classes=2)
    return _mean_pairwise_distance(means)


def metric_intra_inter_ratio(embeddings: ArrayLike, labels: ArrayLike) -> float:
    """Mean intra-class spread divided by the mean inter-class distance; lower = tighter.

        intra = (1/C) sum_c (1/N_c) sum_{i : y_i = c} ||x_i - mu_c||
        inter = metric_inter_class_distance(embeddings, labels)
        ratio = intra / inter

    ``intra`` averages each class's mean distance to its own mean with equal weight per
    class (the S_i of the Davies-Bouldin index), so a large class does not dominate; with
    balanced classes it equals the plain mean over samples.

    When all class means coincide (every pair within :data:`COINCIDE_RTOL` of the largest
    embedding norm: the classes collapsed onto one point) the ratio is infinite, the worst
    value, and this returns ``inf``; rounding would otherwise leave an arbitrary ratio of two
    tiny numbers. Means that coincide only in part still give a finite ratio.

    Args:
      embeddings: [N, D] float.
      labels: [N] int, any class indices; needs at least 2 distinct values.

    Returns:
      The ratio >= 0, or ``inf`` when all class means coincide.
    """
    x, index, means = _embeddings_by_class(embeddings, labels, min_classes=2)
    _, coincide = _mean_distances(x, means)
    if np.sum(coincide) == len(means) * (len(means) - 1):
        return float("inf")
    inter = _mean_pairwise_distance(means)
    return float(np.mean(_class_spread(x, index, means)) / inter)
