"""t-SNE of the representation, by class and by Jacobian norm, for SCE and m-OvR (Fig. 13).

    python -m jacosr.experiments.tsne                          # digits, known 0..5
    python -m jacosr.experiments.tsne --benchmark mnist --backbone vgg32 --embed-dim 128

The default trains two 2,000-step runs of the digits MLP, one per loss, then computes the exact
||df/dx||_F of the 539 test images under each and two t-SNEs of 539 points (runtime:
experiments/README.md). Each loss's run lives in ``<workdir>/runs/<loss>``; re-running reads
them back and repeats only the analysis.

Every loss of ``--losses`` (default SCE and m-OvR) trains one model with the base run's other
settings (``--seed`` included) on the same split. The same test samples (known-test and
unknown-test, at most ``--max-samples`` of each, a seeded subset) go through each model: its
representation f(x) is embedded in 2-D by scikit-learn's t-SNE (seeded; PCA initialisation),
and its exact ||df/dx||_F is computed by :mod:`jacosr.jacobian`.

What ``tsne.png`` shows, one row per loss: on the left the t-SNE map with the known classes
coloured and the unknown samples black; on the right the same map coloured by the min-max
normalised ||df/dx||_F of each model (0 its smallest norm, 1 its largest). The paper's
Fig. 13 (MNIST, Protocol A) shows known classes as compact clusters at low norm and the
unknown samples at high norm, and the clearer the norm contrast, the better the unknown
separate from the known. ``results.json`` gives, per loss, the mean normalised norm of the
known and of the unknown samples (the colour contrast of the right panel), the AUROC of the
norm as an unknown score and the Jacobian norm difference (Eq. 20). These numbers describe the
pictured models, one seed each: the figure is a picture of two models, not an estimate (the
loss-vs-norm experiment reports the norm's AUROC over seeds); ``tsne.npz`` holds the maps.

Readings: the points are test samples (known-test and unknown-test), never training ones; each
model gets its own t-SNE (the maps are not aligned across rows) and its own min-max range; SCE
is :mod:`jacosr.losses`' ``sce``, linear logits on an unnormalised f, as the paper's baseline.
What the default measures on digits is in the README ("The paper's theory on digits", the
Fig. 13 row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from threadpoolctl import threadpool_limits

from jacosr.config import require, to_dict
from jacosr.data import load_open_set
from jacosr.evaluate import capped_test_splits, per_sample
from jacosr.experiments.command import Command
from jacosr.losses import loss_spec
from jacosr.metrics import metric_auroc, metric_jacobian_norm_difference
from jacosr.plots import class_colours
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import RESULTS
from jacosr.train import fit
from jacosr.workdir import open_workdir

OUTPUTS = (RESULTS, "tsne.npz", "tsne.png")


@dataclass(frozen=True)
class TsneConfig:
    """The t-SNE picture.

    Attributes:
      train: the base run (default: digits, known classes 0..5, 2000 steps); each loss
        replaces its loss name.
      losses: one row of the figure per loss name (see ``jacosr.losses.LOSSES``).
      max_samples: at most this many known-test and this many unknown-test samples are
        mapped (a seeded subset; t-SNE's cost grows with the number of points).
      perplexity: t-SNE's perplexity, about the number of neighbours each point attends to;
        must be below the number of points.
      analysis_seed: seed of the subset and of t-SNE.

    Refused when built (``ValueError`` naming the flag): no loss, an unknown loss, fewer than
    2 samples, a perplexity that is not positive. A perplexity not below the number of points
    is refused when the data is loaded, before any workdir is written (:func:`run`).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    losses: tuple[str, ...] = ("sce", "movr")
    max_samples: int = 1000
    perplexity: float = 30.0
    analysis_seed: int = 0

    def __post_init__(self):
        require(len(self.losses) >= 1, "--losses", "at least one loss name", self.losses)
        for name in self.losses:
            loss_spec(name)
        require(self.max_samples >= 2, "--max-samples", ">= 2", self.max_samples)
        require(self.perplexity > 0, "--perplexity", "> 0", self.perplexity)


def tsne_map(embeddings: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    """``[N, D] -> [N, 2]``: scikit-learn's t-SNE (Euclidean, PCA initialisation, seeded).

    Runs its OpenMP gradient loop on one thread: on a few cores shared with busy processes,
    its threads' barriers made it several times slower than one thread; and one thread sums
    in one order, so the map is reproducible.
    """
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    with threadpool_limits(limits=1, user_api="openmp"):
        return tsne.fit_transform(embeddings.astype(np.float64)).astype(np.float32)


def min_max(values: np.ndarray) -> np.ndarray:
    """``values`` mapped linearly onto [0, 1] (all zeros when they are all equal)."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def run(config: TsneConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train (or reuse) one model per loss, map each one's test representation, write the
    workdir."""
    data = load_open_set(config.train.data)  # missing data fails before the workdir exists
    known, unknown = capped_test_splits(data, config.max_samples, config.analysis_seed)
    require(
        config.perplexity < len(known.y) + len(unknown.y),
        "--perplexity",
        f"below the number of points ({len(known.y)} known + {len(unknown.y)} unknown)",
        config.perplexity,
    )
    with open_workdir(workdir, to_dict(config), outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        x = np.concatenate([known.x, unknown.x])
        # Known samples keep their label 0..K-1; unknown ones are -1.
        labels = np.concatenate([known.y, np.full(len(unknown.y), -1, known.y.dtype)])
        maps, norms, rows = {}, {}, {}
        for name in config.losses:
            base = resolve(config.train)
            train = dataclasses.replace(base, loss=dataclasses.replace(base.loss, loss=name))
            graphdef, state = fit(train, data, workdir / "runs" / name)
            values = per_sample(graphdef, state, x, train.loss)
            maps[name] = tsne_map(values["embedding"], config.perplexity, config.analysis_seed)
            norms[name] = values["norm"]
            scaled = min_max(values["norm"])
            k, u = values["norm"][labels >= 0], values["norm"][labels < 0]
            rows[name] = {
                "mean_normalised_norm": {
                    "known": float(scaled[labels >= 0].mean()),
                    "unknown": float(scaled[labels < 0].mean()),
                },
                "auroc_jacobian_norm": metric_auroc(k, u),
                "jacobian_norm_difference": metric_jacobian_norm_difference(
                    k, u, seed=config.analysis_seed
                )._asdict(),
            }

        opened.write(
            "tsne.npz",
            lambda f: np.savez(
                f,
                labels=labels,
                **{f"map_{n}": m for n, m in maps.items()},
                **{f"norm_{n}": v for n, v in norms.items()},
            ),
        )
        results = {
            "config": to_dict(config),
            "split": data.describe(),
            "num_samples": {"known": len(known.y), "unknown": len(unknown.y)},
            "losses": rows,
        }
        opened.write_json(RESULTS, results)
        split = data.describe()
        figure = plot_tsne(
            maps,
            {name: min_max(v) for name, v in norms.items()},
            labels,
            class_names=[str(c) for c in data.known_classes],
            title=f"{split['source']}: known {split['known_classes']}, unknown in black",
        )
        opened.save_figure("tsne.png", figure)
        return results


def format_summary(results: dict) -> str:
    """One line per loss: the colour contrast and the norm's AUROC of the pictured model."""
    n = results["num_samples"]
    lines = [f"{n['known']} known and {n['unknown']} unknown test samples (one model per loss)"]
    for name, row in results["losses"].items():
        mean = row["mean_normalised_norm"]
        jnd = row["jacobian_norm_difference"]
        lines.append(
            f"{name}: mean normalised ||J|| known {mean['known']:.3f}, unknown "
            f"{mean['unknown']:.3f}; AUROC(||J||) {row['auroc_jacobian_norm']:.4f}; "
            f"JND {jnd['estimate']:.4g} [{jnd['low']:.4g}, {jnd['high']:.4g}]"
        )
    return "\n".join(lines)


def plot_tsne(
    maps: Mapping[str, np.ndarray],
    norms: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """2-D maps of the representation, by class and by Jacobian norm (Fig. 13).

    ``maps``: row title (e.g. the loss) -> ``[N, 2]`` t-SNE coordinates of the same N samples;
    ``norms``: row title -> ``[N]`` min-max normalised ||df/dx||_F in [0, 1]; ``labels``:
    ``[N]`` known label 0..K-1, or -1 for an unknown sample; ``class_names``: K legend names.
    Left column: known classes coloured, unknown black; right column: coloured by the norm.
    """
    colours = class_colours(len(class_names))
    known = labels >= 0
    fig = Figure(figsize=(10.5, 4.6 * len(maps)), layout="constrained")
    axes = fig.subplots(len(maps), 2, squeeze=False)
    for (left, right), (name, xy) in zip(axes, maps.items(), strict=True):
        for k, (colour, class_name) in enumerate(zip(colours, class_names, strict=True)):
            points = xy[labels == k]
            left.scatter(*points.T, s=6, color=colour, label=class_name, linewidths=0)
        left.scatter(*xy[~known].T, s=6, color="black", label="unknown", linewidths=0)
        left.set_title(f"{name}: classes")
        left.legend(
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            fontsize=8,
            markerscale=2,
            title="class",
            title_fontsize=8,
        )
        dots = right.scatter(*xy.T, s=6, c=norms[name], cmap="turbo", vmin=0, vmax=1, linewidths=0)
        right.set_title(f"{name}: " + r"$\|\partial f / \partial x\|_F$ (min-max normalised)")
        fig.colorbar(dots, ax=right, shrink=0.9)
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    return fig


COMMAND = Command(
    module=__name__,
    config=TsneConfig,
    run=run,
    workdir="runs/tsne",
    description=(
        "2-D t-SNE of the test representation, known classes and unknown, beside the same "
        "points coloured by the min-max normalised Jacobian norm, per loss (Fig. 13)."
    ),
    outputs=OUTPUTS,
    runs="the trained models (runs/)",
    summary=format_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
