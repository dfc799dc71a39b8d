"""The Jacobian norm over the whole input plane of toy2d, before and after training.

    python -m jacosr.experiments.heatmap                      # toy2d, known classes 0, 2, 4, 6
    python -m jacosr.experiments.heatmap --known 0 1 2 3 4 5 --resolution 400

Runtime on 2 CPU cores: 22-25 s wall (12.5 s CPU) at load average 6-6.5 (2,000 training steps of the
MLP on 1,080 points, then the exact ||df/dx||_F at the 200 x 200 = 40,000 grid points and at
the 1,880 known-train and test points, before and after training; imports and compilation
included). The trained model lives in ``<workdir>/train``; re-running reads it back and
repeats only the norms (7 s CPU).

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
stays high in the open space between them, where the unknown classes lie. Measured with the
defaults: the median norm at the known training points falls from 1.72 to 0.39 while at the
unknown test points it stays at 1.7-1.75, and the norm's AUROC (known-test vs unknown-test)
goes from 0.48 to 0.995; the trained map is dark on rays through the known classes and bright
on the diagonals between them and at the centre.

``results.json`` gives, before and after training, the median norm over the plane, at the
known-train and unknown-test points, and the AUROC of the norm as an unknown score
(known-test vs unknown-test); ``heatmap.npz`` holds the two grids. These describe the pictured
model (one seed; the figure is a picture, not an estimate).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jacosr import jacobian
from jacosr.config import require, to_dict
from jacosr.data import DataConfig, load_open_set
from jacosr.experiments.command import Command
from jacosr.metrics import metric_auroc
from jacosr.models import embedding_apply
from jacosr.plots import plot_input_plane_norms
from jacosr.train import TrainConfig, fit, init_train_state
from jacosr.workdir import open_workdir

OUTPUTS = ("results.json", "heatmap.npz", "heatmap.png")
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
        graphdef, initial = init_train_state(config.train, data)
        _, trained = fit(config.train, data, workdir / "train")  # the same architecture
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
        opened.write_json("results.json", results)
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
