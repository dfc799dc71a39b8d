"""Jacobian norms before and after training, and along paths between known classes.

    python -m jacosr.experiments.interp                       # digits, known 0..5, m-OvR
    python -m jacosr.experiments.interp --estimator hutchinson --num-probes 16
    python -m jacosr.experiments.interp --estimator xnystrace  # Gaussian probes by default

The default trains the digits MLP for 2,000 steps, then computes the exact norms of the 539
test images and of 64 paths x 21 points, before and after training (runtime:
experiments/README.md). Re-running reuses the trained checkpoint in ``<workdir>/train``.

What it shows (the paper's Sec. IV, Figs. 2-3): closed-set metric learning lowers the Jacobian
norm ||df/dx||_F of the representation on known classes and leaves it high off them, so after
training unknown test images have larger norms than known ones (hist.png), and on straight
paths between images of two known classes the norm is low at both ends and rises in between,
towards the unknown level (interp.png). results.json holds the numbers, including the Jacobian
norm difference (Eq. 20) with a bootstrap interval, before and after training; the README's
"The paper's central claim on digits" gives the default's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from jacosr import jacobian
from jacosr.config import require, to_dict
from jacosr.data import OpenSetData, load_open_set, to_float
from jacosr.experiments.command import Command
from jacosr.metrics import metric_auroc, metric_jacobian_norm_difference
from jacosr.models import embedding_apply
from jacosr.plots import KNOWN_COLOUR, UNKNOWN_COLOUR, plot_norm_histograms
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import RESULTS
from jacosr.step import init_train_state
from jacosr.train import fit
from jacosr.workdir import open_workdir

NORM_METHODS = ("exact", *jacobian.ESTIMATORS)


@dataclass(frozen=True)
class InterpConfig:
    """The interpolation experiment.

    Attributes:
      train: the model to train (default: digits, known classes 0..5, m-OvR, 2,000 steps).
      num_paths: number of straight paths between test images of two different known classes.
      num_points: points per path, equally spaced in t in [0, 1].
      estimator: ``exact``, or a stochastic estimator of ||J||_F^2 (its square root is used).
      num_probes: probes per sample for a stochastic estimator.
      probes: probe distribution of a stochastic estimator; unset, the estimator's default
        (``rademacher`` for ``hutchinson``, ``gaussian`` for ``xnystrace``, which takes only
        ``gaussian`` or ``sphere``).
      analysis_seed: seed of the path pairs, the probes and the bootstrap.
      num_resamples: bootstrap resamples of the Jacobian norm difference interval.

    Refused when built, before any data is loaded or any model trained (``ValueError`` naming
    the flag): an unknown estimator, probes the estimator cannot use, too few probes, fewer
    than 1 path, 2 points per path or 1 resample. Too many probes for the embedding is refused
    before training starts (:func:`run`).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    num_paths: int = 64
    num_points: int = 21
    estimator: str = "exact"
    num_probes: int = 16
    probes: str | None = None
    analysis_seed: int = 0
    num_resamples: int = 2000

    def __post_init__(self):
        est = self.estimator
        require(est in NORM_METHODS, "--estimator", f"one of {', '.join(NORM_METHODS)}", est)
        if est != "exact":
            valid = jacobian.ESTIMATOR_PROBES[est]
            require(
                self.probes is None or self.probes in valid,
                "--probes",
                f"one of {', '.join(valid)} with --estimator {est} (unset: {valid[0]})",
                self.probes,
            )
            least = jacobian.MIN_PROBES[est]
            require(
                self.num_probes >= least,
                "--num-probes",
                f">= {least} with --estimator {est}",
                self.num_probes,
            )
        require(self.num_paths >= 1, "--num-paths", ">= 1", self.num_paths)
        require(self.num_points >= 2, "--num-points", ">= 2", self.num_points)
        require(self.num_resamples >= 1, "--num-resamples", ">= 1", self.num_resamples)


def sample_path_ends(
    data: OpenSetData, num_paths: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs of known-test images from two different known classes: ``(x0s, x1s, classes)``.

    ``classes: [P, 2]`` holds the (known) labels of the two ends.
    """
    rng = np.random.default_rng(seed)
    x, y = data.known_test
    classes = np.stack(
        [rng.choice(data.num_known, size=2, replace=False) for _ in range(num_paths)]
    )
    i0 = [rng.choice(np.flatnonzero(y == a)) for a in classes[:, 0]]
    i1 = [rng.choice(np.flatnonzero(y == b)) for b in classes[:, 1]]
    return x[i0], x[i1], classes


def _norms(f, params, xs: np.ndarray, config: InterpConfig, key) -> np.ndarray:
    """``||J||_F`` of ``f(params, .)`` per sample: exact, or the square root of the estimate."""
    if config.estimator == "exact":
        return jacobian.jacobian_norms(f, xs, params=params)
    sq, _ = jacobian.estimate_sqnorms(
        f,
        xs,
        key,
        params=params,
        estimator=config.estimator,
        num_probes=config.num_probes,
        probes=config.probes,
    )
    return np.sqrt(np.maximum(sq, 0.0))  # NaN stays NaN


def analyse(f, params, data: OpenSetData, ends, ts: np.ndarray, config: InterpConfig, key) -> dict:
    """Norms of known and unknown test images, the path profile and the path lengths of the
    embedding ``f(params, x)`` (:func:`jacosr.models.embedding_apply`).

    The known, unknown and path points go through the Jacobian engine as one batch: one set of
    compiled chunks for every kind of input; and as the parameters are traced, for every state
    of the architecture (the analysis after training compiles nothing)."""
    x0s, x1s = (np.asarray(to_float(x)) for x in ends[:2])
    points = jacobian.path_points(x0s, x1s, ts)
    parts = (
        np.asarray(to_float(data.known_test.x)),
        np.asarray(to_float(data.unknown_test.x)),
        points.reshape(-1, *points.shape[2:]),
    )
    norms = _norms(f, params, np.concatenate(parts), config, key)
    known, unknown, profile = np.split(norms, np.cumsum([len(p) for p in parts[:2]]))
    jnd = metric_jacobian_norm_difference(
        known, unknown, num_resamples=config.num_resamples, seed=config.analysis_seed
    )
    return {
        "known": known,
        "unknown": unknown,
        "profile": profile.reshape(points.shape[:2]),
        "path_length": jacobian.path_length(f, x0s, x1s, params=params),
        "jnd": jnd,
    }


def _summary(a: dict, ts: np.ndarray) -> dict:
    q25, q50, q75 = np.percentile(a["profile"], [25, 50, 75], axis=0)
    return {
        "mean_norm_known": float(a["known"].mean()),
        "mean_norm_unknown": float(a["unknown"].mean()),
        "jacobian_norm_difference": a["jnd"]._asdict(),
        "auroc_jacobian_norm": metric_auroc(a["known"], a["unknown"]),
        "mean_path_length": float(a["path_length"].mean()),
        "path_profile": {
            "t": ts.tolist(),
            "mean": a["profile"].mean(axis=0).tolist(),
            "q25": q25.tolist(),
            "median": q50.tolist(),
            "q75": q75.tolist(),
        },
    }


def run(config: InterpConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train (or reuse) the model, analyse it before and after training, write the workdir.

    The estimator's arguments are checked against the untrained model's embedding before
    training starts (:func:`jacosr.jacobian.check_estimator`), so that a bad probe count fails
    in a second rather than after training."""
    with open_workdir(
        workdir,
        to_dict(config),
        outputs=(RESULTS, "hist.png", "interp.png"),
        overwrite=overwrite,
    ) as opened:
        workdir = opened.path
        data = load_open_set(config.train.data)
        train = resolve(config.train)
        graphdef, initial = init_train_state(train, data)
        f = embedding_apply(graphdef)
        if config.estimator != "exact":
            jacobian.check_estimator(
                f,
                to_float(data.known_test.x[0]),
                params=initial.model,
                estimator=config.estimator,
                num_probes=config.num_probes,
                probes=config.probes,
            )
        _, trained = fit(train, data, workdir / "train")  # the same architecture
        ends = sample_path_ends(data, config.num_paths, config.analysis_seed)
        ts = np.linspace(0.0, 1.0, config.num_points)
        key = jax.random.key(config.analysis_seed)
        stages = {"before training": initial.model, "after training": trained}
        analyses = {}
        for name, state in tqdm(stages.items(), desc="jacobian norms", unit="model"):
            analyses[name] = analyse(f, state, data, ends, ts, config, key)

        results = {
            "config": to_dict(config),
            "split": data.describe(),
            "estimator": config.estimator,
            "path_classes": ends[2].tolist(),
            **{name.replace(" ", "_"): _summary(a, ts) for name, a in analyses.items()},
        }
        opened.write_json(RESULTS, results)
        levels = {name: (a["known"], a["unknown"]) for name, a in analyses.items()}
        opened.save_figure("hist.png", plot_norm_histograms(levels))
        profiles = {name: a["profile"] for name, a in analyses.items()}
        opened.save_figure("interp.png", plot_path_profiles(ts, profiles, levels))
        return results


def format_summary(results: dict) -> str:
    """One line per stage: mean norms, the Jacobian norm difference and the norm's AUROC."""
    lines = []
    for stage in ("before_training", "after_training"):
        r = results[stage]
        jnd = r["jacobian_norm_difference"]
        lines.append(
            f"{stage.replace('_', ' ')}: mean norm known {r['mean_norm_known']:.4g}, "
            f"unknown {r['mean_norm_unknown']:.4g}; JND {jnd['estimate']:.4g} "
            f"[{jnd['low']:.4g}, {jnd['high']:.4g}]; AUROC(norm) {r['auroc_jacobian_norm']:.4f}"
        )
    return "\n".join(lines)


def plot_path_profiles(
    ts: np.ndarray,
    profiles: Mapping[str, np.ndarray],
    levels: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> Figure:
    """Jacobian norm along interpolation paths between known classes (Fig. 3).

    ``profiles``: panel title -> ``[P, T]`` norms at ``ts`` for P paths, drawn as the mean with
    the interquartile band. ``levels``: panel title -> ``(known_norms, unknown_norms)`` of the
    test samples, drawn as horizontal reference bands (interquartile range, median line).
    """
    fig = Figure(figsize=(5 * len(profiles), 4.0), layout="constrained")
    axes = fig.subplots(1, len(profiles), squeeze=False)
    for ax, (title, norms) in zip(axes[0], profiles.items(), strict=True):
        for values, colour, label in zip(
            levels[title],
            (KNOWN_COLOUR, UNKNOWN_COLOUR),
            ("known test", "unknown test"),
            strict=True,
        ):
            lo, mid, hi = np.percentile(values, [25, 50, 75])
            ax.axhspan(lo, hi, color=colour, alpha=0.15, label=f"{label} (IQR)")
            ax.axhline(mid, color=colour, linewidth=1, linestyle="--")
        lo, hi = np.percentile(norms, [25, 75], axis=0)
        ax.fill_between(ts, lo, hi, color="black", alpha=0.2, label="paths (IQR)")
        ax.plot(ts, norms.mean(axis=0), color="black", linewidth=2, label="paths (mean)")
        ax.set_title(title)
        ax.set_xlabel(r"$t$ in $x_t = (1-t)\,x_0 + t\,x_1$ (classes $i \to j$)")
        ax.set_ylabel(r"$\|\partial f / \partial x\|_F$")
        ax.set_xlim(ts[0], ts[-1])
    # The bands span the whole axes, so one legend below the panels keeps the data visible.
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=4,
        frameon=False,
        fontsize=8,
    )
    return fig


COMMAND = Command(
    module=__name__,
    config=InterpConfig,
    run=run,
    workdir="runs/interp",
    description=(
        "Jacobian norms of known and unknown samples before/after training, and along paths."
    ),
    outputs=(RESULTS, "hist.png", "interp.png"),
    runs="the trained model (train/)",
    summary=format_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
