"""The Jacobian norm over the whole input plane of toy2d, before and after training.

    python -m jacosr.experiments.heatmap                      # toy2d, known classes 0, 2, 4, 6
    python -m jacosr.experiments.heatmap --known 0 1 2 3 4 5 --resolution 400

The default trains the MLP for 2,000 steps on 1,080 points, then computes the exact
||df/dx||_F at the 200 x 200 = 40,000 grid points and at the 1,880 known-train and test
points, before and after training (runtime: experiments/README.md). The trained model lives
in ``<workdir>/train``; re-running reads it back and repeats only the norms.

Beyond the paper, which can only sample images: on toy2d (eight Gaussian classes around a
circle of radius 0.6 in [-1, 1]^2; its "images" are ``[1, 1, 2]`` points) the representation's
Jacobian norm can be drawn everywhere. ``heatmap.png`` shows ||df/dx||_F on a
``--resolution`` x ``--resolution`` grid over ``[-extent, extent]^2``, untrained on the left and
trained on the right, on one logarithmic colour scale: the normalisation f = z/||z|| makes the
norm blow up where z -> 0 (at initialisation, near the origin, where the zero-bias network's z
vanishes), and a linear scale would show that spike and nothing else. The known classes'
training points are drawn by class; the unknown classes' test points as white crosses. With
the default split (known 0, 2, 4, 6 and unknown 1, 3, 5, 7 between them), what training does
is the paper's claim in the input space: the norm falls on and beyond the known classes and
stays high in the open space between them, where the unknown classes lie. What the
defaults measure is in the README's table "The paper's theory on digits" (the heat map row).

``results.json`` gives, before and after training, the median norm over the plane, at the
known-train and unknown-test points, and the AUROC of the norm as an unknown score
(known-test vs unknown-test); ``heatmap.npz`` holds the two grids. These describe the pictured
model (one seed; the figure is a picture, not an estimate).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from jacosr import jacobian
from jacosr.config import require, to_dict
from jacosr.data import DataConfig, load_open_set
from jacosr.experiments.command import Command
from jacosr.metrics import metric_auroc
from jacosr.models import embedding_apply
from jacosr.plots import class_colours
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import RESULTS
from jacosr.step import init_train_state
from jacosr.train import fit
from jacosr.workdir import open_workdir

OUTPUTS = (RESULTS, "heatmap.npz", "heatmap.png")
POINT_SHAPE = (1, 1, 2)  # toy2d's "image" of a point of the plane


@dataclass(frozen=True)
class HeatmapConfig:
    """The input-plane heat map.

    Attributes:
      train: the model (default: toy2d with known classes 0, 2, 4, 6, the MLP, m-OvR, 2000
        steps); its data must be 2-D points (``--dataset toy2d``).
      resolution: grid points per side of the plane.
      extent: the plane drawn is ``[-extent, extent]^2`` (toy2d's points lie in [-1, 1]^2).

    Refused when built (``ValueError`` naming the flag): a data set other than toy2d, fewer
    than 2 grid points per side, an extent that is not positive.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            data=DataConfig(dataset="toy2d", known=(0, 2, 4, 6)), steps=2000
        )
    )
    resolution: int = 200
    extent: float = 1.0

    def __post_init__(self):
        data = self.train.data
        require(
            data.dataset == "toy2d" and data.benchmark is None and data.unknown_dataset is None,
            "--dataset",
            "toy2d, without --benchmark or --unknown-dataset (the heat map draws the 2-D "
            "input plane)",
            data.benchmark or data.unknown_dataset or data.dataset,
        )
        require(self.resolution >= 2, "--resolution", ">= 2", self.resolution)
        require(0 < self.extent < np.inf, "--extent", "> 0 and finite", self.extent)


def plane_grid(resolution: int, extent: float) -> np.ndarray:
    """``[R, R, 2]`` float32 points of ``[-extent, extent]^2``: ``grid[i, j] = (u[j], u[i])``
    with ``u = linspace(-extent, extent, R)``, so row i is height u[i] (``imshow`` with
    ``origin="lower"`` draws it upright)."""
    u = np.linspace(-extent, extent, resolution, dtype=np.float32)
    x, y = np.meshgrid(u, u)
    return np.stack([x, y], axis=-1)


def _points(x: np.ndarray) -> np.ndarray:
    """toy2d "images" ``[N, 1, 1, 2]`` -> plane coordinates ``[N, 2]``."""
    return x.reshape(len(x), 2)


def run(config: HeatmapConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train (or reuse) the model, draw the norm over the plane before and after training."""
    data = load_open_set(config.train.data)
    with open_workdir(workdir, to_dict(config), outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        train = resolve(config.train)
        graphdef, initial = init_train_state(train, data)
        _, trained = fit(train, data, workdir / "train")  # the same architecture
        grid = plane_grid(config.resolution, config.extent)
        parts = (
            grid.reshape(-1, *POINT_SHAPE),
            data.known_train.x,
            data.known_test.x,
            data.unknown_test.x,
        )
        # One batch per state: the plane and the samples share the engine's compiled chunks,
        # and the trained state reuses what the initial one compiled.
        xs = np.concatenate(parts)
        f = embedding_apply(graphdef)
        grids, stages = {}, {}
        for name, state in (("before training", initial.model), ("after training", trained)):
            norms = jacobian.jacobian_norms(f, xs, params=state)
            plane, train, known, unknown = np.split(norms, np.cumsum([len(p) for p in parts[:3]]))
            grids[name] = plane.reshape(grid.shape[:2])
            stages[name.replace(" ", "_")] = {
                "median_norm": {
                    "plane": float(np.median(plane)),
                    "known_train": float(np.median(train)),
                    "unknown_test": float(np.median(unknown)),
                },
                "norm_range_on_plane": [float(plane.min()), float(plane.max())],
                "auroc_jacobian_norm": metric_auroc(known, unknown),
            }

        opened.write(
            "heatmap.npz",
            lambda f: np.savez(
                f,
                grid=grid,
                **{k.replace(" ", "_"): v for k, v in grids.items()},
            ),
        )
        results = {"config": to_dict(config), "split": data.describe(), **stages}
        opened.write_json(RESULTS, results)
        split = data.describe()
        figure = plot_input_plane_norms(
            grids,
            config.extent,
            (_points(data.known_train.x), data.known_train.y),
            _points(data.unknown_test.x),
            class_names=[str(c) for c in data.known_classes],
            title=(
                f"{split['source']}: known {split['known_classes']} (training points), "
                f"unknown {split['unknown_classes']} (test points, white crosses)"
            ),
        )
        opened.save_figure("heatmap.png", figure)
        return results


def format_summary(results: dict) -> str:
    """One line per stage: median norms over the plane and at the points, the norm's AUROC."""
    lines = []
    for stage in ("before_training", "after_training"):
        r = results[stage]
        m = r["median_norm"]
        lines.append(
            f"{stage.replace('_', ' ')}: median ||J|| plane {m['plane']:.4g}, known train "
            f"{m['known_train']:.4g}, unknown test {m['unknown_test']:.4g}; "
            f"AUROC(||J||) {r['auroc_jacobian_norm']:.4f}"
        )
    return "\n".join(lines)


def plot_input_plane_norms(
    grids: Mapping[str, np.ndarray],
    extent: float,
    known: tuple[np.ndarray, np.ndarray],
    unknown: np.ndarray | None,
    *,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """||df/dx||_F over a 2-D input plane as heat maps on one logarithmic colour scale.

    ``grids``: panel title (e.g. before / after training) -> ``[R, R]`` norms at the points
    ``(u[j], u[i])`` of ``u = linspace(-extent, extent, R)`` (row i is height u[i]);
    ``known``: ``(points [N, 2], labels [N] in 0..K-1)`` drawn by class; ``unknown``:
    ``[M, 2]`` points drawn as white crosses, or None. The scale is logarithmic because the
    unit normalisation makes the norm blow up where the network's z vanishes, which a linear
    scale shows and nothing else; it is shared, so the panels compare directly.
    """
    values = np.concatenate([g.ravel() for g in grids.values()])
    values = values[np.isfinite(values) & (values > 0)]
    scale = LogNorm(values.min(), values.max())
    colours = class_colours(len(class_names))
    points, labels = known
    fig = Figure(figsize=(5.2 * len(grids) + 1.6, 5.4), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(
            grid,
            origin="lower",
            extent=(-extent, extent, -extent, extent),
            norm=scale,
            cmap="magma",
            interpolation="nearest",
        )
        for k, (colour, class_name) in enumerate(zip(colours, class_names, strict=True)):
            ax.scatter(
                *points[labels == k].T,
                s=3,
                color=colour,
                alpha=0.7,
                linewidths=0,
                label=f"known {class_name}",
            )
        if unknown is not None:
            ax.scatter(
                *unknown.T,
                s=5,
                marker="x",
                color="white",
                alpha=0.6,
                linewidths=0.5,
                label="unknown",
            )
        ax.set_title(name)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_aspect("equal")
    fig.colorbar(image, ax=axes, label=r"$\|\partial f / \partial x\|_F$ (log scale)", shrink=0.85)
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=len(class_names) + 1,
        frameon=False,
        fontsize=8,
        markerscale=3,
    )
    fig.suptitle(title, fontsize=10)
    return fig


COMMAND = Command(
    module=__name__,
    config=HeatmapConfig,
    run=run,
    workdir="runs/heatmap",
    description=(
        "The exact Jacobian norm over toy2d's input plane before and after training, as a "
        "log-scale heat map with the training points."
    ),
    outputs=OUTPUTS,
    runs="the trained model (train/)",
    summary=format_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
