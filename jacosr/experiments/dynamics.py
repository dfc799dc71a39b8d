"""Training dynamics: DBI, inter-class distance, Jacobian norms, JND and AUROC against the step
(the paper's Figs. 4, 5, 8-11 and 15).

    python -m jacosr.experiments.dynamics                   # Fig. 4: m-OvR, 3 seeds, digits
    python -m jacosr.experiments.dynamics --figure fig5     # AUROC and DBI against the JND
    python -m jacosr.experiments.dynamics --figure fig15    # SCE ± augmentation ± normalisation
    python -m jacosr.experiments.dynamics --figure fig8 --benchmark cifar10 --backbone vgg32 \\
        --embed-dim 128 --steps 20000 --workdir runs/dynamics-cifar10   # the paper's setting

The default (digits, the MLP, 1,000 steps, 20 tracking points, 3 seeds) trains 3 runs for
fig4 and fig5 (the same runs), 6 for each of fig8-11 (two variants; fig11's second carries
the rotation task, twice the images per step) and 12 for fig15; a run's 20 tracking points
are exact measurements of the 539 test images. A figure whose runs are already in the
workdir trains nothing (fig5 after fig4; fig8-11 then train one variant). The default is
1,000 steps, not the other digits experiments' 2,000, to keep fig15's 12 runs short on a
CPU. Runtimes: experiments/README.md.

Every variant is a training run with tracking on (:mod:`jacosr.tracking`: at step 0 and at
``--track-points`` - 1 steps spaced geometrically up to ``--steps``, exact Jacobian norms of
every digits test image); its rows are in ``<workdir>/runs/<variant>/seed<i>/dynamics.jsonl``.
The workdir is shared by the figures: its identity is the base run, the seeds and the
tracking (not ``--figure``), and a variant is named by what it trains (``movr+W``: m-OvR with
weight decay; ``+A`` augmentation, ``+S`` the rotation task; ``sce``, ``nsce``), so a run
that two figures need trains once (Figs. 4, 5 and one side of each of Figs. 8-11 are the same
``movr+W`` runs on digits). Each figure writes ``<figure>.png``, and its numbers go into
``results.json`` under its name.

The variants set their technique explicitly, on or off, whatever the data set's default
(digits turns augmentation and the rotation task off, image data sets on), by the rule that
the ablation (Table III) and the sensitivity sweeps share,
:func:`jacosr.recipe.switch_techniques`: on is the base run's own value where it has the
technique on, else the paper's for the data set (:func:`jacosr.recipe.paper_techniques`):
weight decay 1e-3; the paper's weak augmentation for the images, which is ``translate`` (the
4 px translation, no flip) on handwritten digits (digits, mnist) and on data sets of your own
prepared with ``python -m jacosr.data.prepare NAME --from PATH --no-flip``, else ``weak``
(translation and horizontal flip); lambda_self 0.1. Off is 0 or ``none``. So Fig. 9 on the
default digits shifts the 8x8 digits without flipping them, as Table III's A rows do.

What each figure shows (curves: mean over seeds, band: ± 1 std; x: the step, linear up to 1
and logarithmic after, so step 0 and the early steps, where most change happens, are seen):

* ``fig4``: m-OvR alone: (a) DBI of the known-test embeddings, (b) mean inter-class distance,
  (c) Jacobian norm difference (Eq. 20), (d) AUROC of the loss score. The paper: all four
  improve as the model learns; the intra/inter ratio settles early, the inter-class distance
  keeps growing, the JND rises gradually and fastest late, the AUROC rises early and keeps
  improving.
* ``fig5``: the same runs' tracked points (every step of every seed, pooled), AUROC against
  the JND and DBI against the JND, coloured by step, with Pearson and Spearman correlations
  (pooled; per seed in results.json). The paper (one run): a strong, non-linear correlation.
* ``fig8``: SCE against m-OvR: DBI, JND, AUROC. The paper: m-OvR is better on all three.
* ``fig9``: m-OvR without and with augmentation: DBI, JND, AUROC. The paper: augmentation
  raises the JND and the AUROC.
* ``fig10``: m-OvR without and with weight decay: inter-class distance, JND, AUROC. The
  paper: weight decay raises all three.
* ``fig11``: m-OvR without and with the rotation task: JND, mean ||J||_F of the unknown, AUROC.
  The paper: the rotation task raises all three.
* ``fig15``: SCE and N-SCE (SCE on unit-normalised embeddings), each without and with
  augmentation: DBI, inter-class distance, JND, AUROC. The paper: the trends of Fig. 4 hold
  for SCE models too.

The paper's "AUC" is read as the AUROC of its detector, the loss at the pseudo label (Eq. 22;
for SCE the same ranking as MSP). SCE's embedding is not normalised, so its Jacobian norms,
JND and inter-class distance are on another scale than the normalised models' (the paper
compares them anyway; a panel whose curves span more than 30x gets a log axis); DBI and AUROC
are scale-free. Fig. 5 pools the tracked steps of every seed (the paper shows one run); the
per-seed correlations are in results.json.

What the defaults measure on digits, figure by figure against the paper's claims, is in the
README's table "The paper's theory on digits" (each figure's numbers are in its
``results.json``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.colors import SymLogNorm
from matplotlib.figure import Figure

from jacosr.config import require, to_dict
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import print_grid, run_grid, seed_grid
from jacosr.metrics import metric_correlations
from jacosr.plots import plot_dynamics, step_ticks
from jacosr.recipe import (
    ResolvedTrainConfig,
    TrainConfig,
    resolve,
    run_name,
    switch_techniques,
)
from jacosr.runs import RESULTS, read_dynamics, read_outputs
from jacosr.tracking import ROW_LABELS, TrackConfig, series_over_seeds
from jacosr.workdir import open_workdir

EVALUATION = EvalConfig(scores=("loss",))
"""Each run's final evaluation (results.json of the run; the figures use the tracked rows)."""


def _technique(
    base: ResolvedTrainConfig,
    *,
    loss: str | None = None,
    augment: bool | None = None,
    weight_decay: bool | None = None,
    rotation: bool | None = None,
) -> ResolvedTrainConfig:
    """``base`` with the loss and the techniques that are given switched on or off
    (:func:`jacosr.recipe.switch_techniques`, the rule of the ablation too); the others as
    in ``base``."""
    switched = switch_techniques(
        base, weight_decay=weight_decay, augment=augment, rotation=rotation
    )
    if loss is None:
        return switched
    return dataclasses.replace(switched, loss=dataclasses.replace(base.loss, loss=loss))


class FigureSpec(NamedTuple):
    """One figure: its variants (legend label -> run, from the resolved base run) and the
    metrics of its panels (keys of a ``dynamics.jsonl`` row), and its caption."""

    variants: Callable[[ResolvedTrainConfig], dict[str, ResolvedTrainConfig]]
    panels: tuple[str, ...]
    caption: str


FIG4_PANELS = ("dbi", "inter_class_distance", "jnd", "auroc_loss")
FIGURES: dict[str, FigureSpec] = {
    "fig4": FigureSpec(
        lambda b: {"m-OvR": _technique(b, loss="movr")},
        FIG4_PANELS,
        "Fig. 4: metrics while m-OvR trains",
    ),
    "fig5": FigureSpec(
        lambda b: {"m-OvR": _technique(b, loss="movr")},
        ("jnd", "auroc_loss", "dbi"),
        "Fig. 5: AUROC and DBI against the JND over training steps (m-OvR)",
    ),
    "fig8": FigureSpec(
        lambda b: {"SCE": _technique(b, loss="sce"), "m-OvR": _technique(b, loss="movr")},
        ("dbi", "jnd", "auroc_loss"),
        "Fig. 8: SCE vs m-OvR",
    ),
    "fig9": FigureSpec(
        lambda b: {
            "without augmentation": _technique(b, augment=False),
            "with augmentation": _technique(b, augment=True),
        },
        ("dbi", "jnd", "auroc_loss"),
        "Fig. 9: the effect of data augmentation",
    ),
    "fig10": FigureSpec(
        lambda b: {
            "without weight decay": _technique(b, weight_decay=False),
            "with weight decay": _technique(b, weight_decay=True),
        },
        ("inter_class_distance", "jnd", "auroc_loss"),
        "Fig. 10: the effect of weight decay",
    ),
    "fig11": FigureSpec(
        lambda b: {
            "without rotation task": _technique(b, rotation=False),
            "with rotation task": _technique(b, rotation=True),
        },
        ("jnd", "norm_unknown", "auroc_loss"),
        "Fig. 11: the effect of the self-supervised rotation task",
    ),
    "fig15": FigureSpec(
        lambda b: {
            "SCE": _technique(b, loss="sce", augment=False),
            "SCE + augmentation": _technique(b, loss="sce", augment=True),
            "N-SCE": _technique(b, loss="nsce", augment=False),
            "N-SCE + augmentation": _technique(b, loss="nsce", augment=True),
        },
        FIG4_PANELS,
        "Fig. 15: SCE and N-SCE (normalised embedding), without and with augmentation",
    ),
}
"""The figures ``--figure`` chooses from."""


@dataclass(frozen=True)
class DynamicsConfig:
    """The training-dynamics figures.

    Attributes:
      figure: which figure: fig4, fig5, fig8, fig9, fig10, fig11 or fig15 (see the module
        docstring). Not part of the workdir's identity: the figures share one workdir and
        the runs they have in common.
      train: the base run, tracked (default: digits, known 0..5, m-OvR, the MLP, 1,000
        steps, 20 tracking points); each figure's variants set the loss or one technique.
      seeds: each variant is trained with seeds 0..seeds-1.

    Refused when built (``ValueError`` naming the flag): an unknown figure, fewer than 2
    seeds (the band is the spread over seeds), a base run without tracking.
    """

    figure: str = "fig4"
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1000, track=TrackConfig(track_points=20))
    )
    seeds: int = 3

    def __post_init__(self):
        require(self.figure in FIGURES, "--figure", f"one of {', '.join(FIGURES)}", self.figure)
        require(self.seeds >= 2, "--seeds", ">= 2 (the band is the spread over seeds)", self.seeds)
        require(
            self.train.track.enabled,
            "--track-points",
            "> 0, or --track-every / --track-steps set (the figures are of tracked runs)",
            self.train.track.track_points,
        )


def identity(config: DynamicsConfig) -> dict:
    """The workdir's identity: the config without ``figure`` (shared by every figure)."""
    return {k: v for k, v in to_dict(config).items() if k != "figure"}


UNDEFINED = "correlation undefined (fewer than 3 points, or a constant series)"
FIG5_PAIRS = (("jnd", "auroc_loss"), ("jnd", "dbi"))


def pooled_correlations(runs: Mapping[str, list[dict]]) -> dict:
    """Fig. 5's correlations over the tracked points of every seed's run, pooled, and per
    seed: ``{"<x> vs <y>": {"pooled": {...}, "per_seed": {run: {...}}}}``."""
    result = {}
    for x, y in FIG5_PAIRS:
        per_seed = {
            name: (np.array([r[x] for r in rows]), np.array([r[y] for r in rows]))
            for name, rows in runs.items()
        }
        pooled = [np.concatenate(v) for v in zip(*per_seed.values(), strict=True)]
        result[f"{y} vs {x}"] = {
            "pooled": metric_correlations(*pooled),
            "per_seed": {name: metric_correlations(*xy) for name, xy in per_seed.items()},
        }
    return result


def _note(c: dict) -> str:
    pooled = c["pooled"]
    if pooled is None:
        return UNDEFINED
    return (
        f"Pearson r = {pooled['pearson']:.3f}\nSpearman ρ = {pooled['spearman']:.3f}\n"
        f"({pooled['points']} points)"
    )


def _figure(spec: FigureSpec, entry: dict, rows: dict, split: dict, seeds: int):
    """The figure of ``entry`` (curves per variant; Fig. 5: the pooled points)."""
    where = f"{split['source']}: known {split['known_classes']}"
    if "correlations" not in entry:
        panels = {m: ROW_LABELS[m] for m in spec.panels}
        title = f"{spec.caption}\n{where}, mean ± 1 std over {seeds} seeds"
        return plot_dynamics(entry["variants"], panels, title=title)
    (runs,) = rows.values()
    points = {m: np.concatenate([[r[m] for r in v] for v in runs.values()]) for m in spec.panels}
    steps = np.concatenate([[r["step"] for r in v] for v in runs.values()])
    seed = np.concatenate([[i] * len(v) for i, v in enumerate(runs.values())])
    notes = [_note(c) for c in entry["correlations"].values()]
    title = f"{spec.caption}\n{where}, the tracked steps of {seeds} seeds"
    return plot_metric_pairs(points, FIG5_PAIRS, steps, seed, ROW_LABELS, notes, title=title)


def dynamics_grid(config: DynamicsConfig) -> dict[str, ResolvedTrainConfig]:
    """``<variant>/seed<s>`` -> the run: the figure's variants (named by
    :func:`jacosr.recipe.run_name`) x seeds."""
    variants = FIGURES[config.figure].variants(resolve(config.train))
    return seed_grid({run_name(c): c for c in variants.values()}, config.seeds)


def run(
    config: DynamicsConfig, workdir: Path, *, overwrite: bool = False, spread_runs: bool = False
) -> dict:
    """Train (or read back) the figure's variants x seeds with tracking, write its figure and
    its entry of results.json; return that entry."""
    spec = FIGURES[config.figure]
    variants = spec.variants(resolve(config.train))
    names = {label: run_name(c) for label, c in variants.items()}
    grid = dynamics_grid(config)
    print_grid(grid)
    outputs = (RESULTS, *(f"{name}.png" for name in FIGURES))
    with open_workdir(workdir, identity(config), outputs=outputs, overwrite=overwrite) as opened:
        workdir = opened.path
        finished = run_grid(grid, workdir / "runs", EVALUATION, spread_runs=spread_runs)
        rows = {
            label: {
                run_name: read_dynamics(workdir / "runs" / run_name)
                for run_name in grid
                if run_name.rsplit("/", 1)[0] == names[label]
            }
            for label in variants
        }
        split = next(iter(finished.values())).split
        png = workdir / f"{config.figure}.png"
        entry = {
            "figure": config.figure,
            "caption": spec.caption,
            "png": str(png),
            "panels": list(spec.panels),
            "variants": {
                label: {"run": names[label], **series_over_seeds(runs)}
                for label, runs in rows.items()
            },
        }
        if config.figure == "fig5":
            (runs,) = rows.values()
            entry["correlations"] = pooled_correlations(runs)
        opened.save_figure(png.name, _figure(spec, entry, rows, split, config.seeds))
        results = read_outputs(workdir)
        results.update({"config": identity(config), "split": split})
        results.setdefault("figures", {})[config.figure] = entry
        opened.write_json(RESULTS, results)
        return entry


def format_summary(entry: dict) -> str:
    """The figure's final values (mean ± std over seeds at the last step) per variant and
    panel metric; for Fig. 5 the correlations; the figure's file."""
    panels = entry["panels"]
    lines = [entry["caption"], "variant (run) at the last step: " + ", ".join(panels)]
    for label, v in entry["variants"].items():
        cells = [
            f"{np.mean(v['final'][m]):.4f} ± {np.std(v['final'][m], ddof=1):.4f}" for m in panels
        ]
        lines.append(f"  {label} ({v['run']}, step {v['steps'][-1]}): " + ", ".join(cells))
    for pair, c in entry.get("correlations", {}).items():
        pooled = c["pooled"]
        if pooled is None:
            lines.append(f"  {pair}: {UNDEFINED}")
            continue
        lines.append(
            f"  {pair}, {pooled['points']} points pooled over seeds: Pearson r = "
            f"{pooled['pearson']:.3f}, Spearman rho = {pooled['spearman']:.3f}"
        )
    lines.append(f"figure: {entry['png']}")
    return "\n".join(lines)


def _emptiest_corner(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str, str]:
    """``(x, y, ha, va)`` in axes fraction of the corner of the ``x, y`` scatter with the
    fewest points (for a text box that hides none)."""
    fx = (x - x.min()) / max(np.ptp(x), 1e-12)
    fy = (y - y.min()) / max(np.ptp(y), 1e-12)
    corners = {
        (0.97, 0.03, "right", "bottom"): np.sum((fx > 0.55) & (fy < 0.45)),
        (0.97, 0.97, "right", "top"): np.sum((fx > 0.55) & (fy > 0.55)),
        (0.03, 0.03, "left", "bottom"): np.sum((fx < 0.45) & (fy < 0.45)),
        (0.03, 0.97, "left", "top"): np.sum((fx < 0.45) & (fy > 0.55)),
    }
    return min(corners, key=corners.get)


def plot_metric_pairs(
    points: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    steps: np.ndarray,
    groups: np.ndarray,
    labels: Mapping[str, str],
    notes: Sequence[str],
    *,
    title: str,
) -> Figure:
    """One metric against another over the tracked steps of runs (Fig. 5): one panel per
    ``(x, y)`` pair of ``pairs``.

    ``points``: metric -> ``[P]`` values, one per tracked step of a run; ``steps: [P]`` the
    step of each point (its colour, on the step axis of :func:`plot_dynamics`); ``groups:
    [P]`` int, the run of each point (its marker; a run's points are joined in step order);
    ``labels``: metric -> axis label; ``notes``: per panel, text in its corner (e.g. the
    correlations).
    """
    fig = Figure(figsize=(4.6 * len(pairs) + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    last = max(1, int(np.max(steps)))
    norm = SymLogNorm(linthresh=1.0, linscale=0.5, vmin=0, vmax=last)
    markers = "os^Dv<>p"
    for ax, (x, y), note in zip(axes, pairs, notes, strict=True):
        for g in np.unique(groups):
            at = groups == g
            ax.plot(points[x][at], points[y][at], "-", color="grey", alpha=0.4, linewidth=0.8)
            scatter = ax.scatter(
                points[x][at],
                points[y][at],
                c=steps[at],
                cmap="viridis",
                norm=norm,
                marker=markers[int(g) % len(markers)],
                s=22,
                edgecolors="black",
                linewidths=0.3,
                label=f"seed {int(g)}",
            )
        ax.set_xlabel(labels[x])
        ax.set_ylabel(labels[y])
        ax.grid(alpha=0.3)
        tx, ty, ha, va = _emptiest_corner(points[x], points[y])
        ax.text(
            tx,
            ty,
            note,
            transform=ax.transAxes,
            ha=ha,
            va=va,
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.8},
        )
        ax.legend(frameon=False, fontsize=8, loc="best")
    bar = fig.colorbar(scatter, ax=list(axes), label="training step")
    ticks, tick_labels = step_ticks(last)
    bar.set_ticks(ticks, labels=tick_labels)
    bar.minorticks_off()
    fig.suptitle(title)
    return fig


COMMAND = Command(
    module=__name__,
    config=DynamicsConfig,
    run=run,
    workdir="runs/dynamics",
    description=(
        "Training dynamics (DBI, inter-class distance, JND, AUROC against the step) of the "
        "paper's Figs. 4, 5, 8-11 and 15."
    ),
    outputs=(RESULTS,),
    runs="<figure>.png and the tracked runs (runs/<variant>/seed<i>)",
    summary=format_summary,
    grid=dynamics_grid,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
