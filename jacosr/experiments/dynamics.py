"""Training dynamics: DBI, inter-class distance, Jacobian norms, JND and AUROC against the step
(the paper's Figs. 4, 5, 8-11 and 15).

    python -m jacosr.experiments.dynamics                   # Fig. 4: m-OvR, 3 seeds, digits
    python -m jacosr.experiments.dynamics --figure fig5     # AUROC and DBI against the JND
    python -m jacosr.experiments.dynamics --figure fig15    # SCE ± augmentation ± normalisation
    python -m jacosr.experiments.dynamics --figure fig8 --benchmark cifar10 --backbone vgg32 \\
        --embed-dim 128 --steps 20000 --workdir runs/dynamics-cifar10   # the paper's setting

Runtime on 2 CPU cores (default: digits, the MLP, 1,000 steps, 20 tracking points, 3 seeds;
each figure measured with ``/usr/bin/time`` from an empty workdir, while other jobs kept the
load average at 4-8): wall (user + sys CPU) fig4 65 s (35 s, 3 runs), fig5 75 s (35 s, the
same 3 runs), fig8 108 s (63 s, 6 runs), fig9 104 s (65 s), fig10 81 s (61 s), fig11 72 s
(70 s, the rotation task doubles a step), fig15 128 s (125 s, 12 runs; 178 s at load 6.5).
About 40% of a run is its tracking (20 exact measurements of 539 images). A figure whose runs
are already in the workdir takes seconds (fig5 after fig4; fig8-11 then train one variant).
The default is 1,000 steps, not 2,000, so that fig15's 12 runs fit in 3 minutes.

Every variant is a training run with tracking on (:mod:`jacosr.dynamics`: at step 0 and at
``--track-points`` - 1 steps spaced geometrically up to ``--steps``, exact Jacobian norms of
every digits test image); its rows are in ``<workdir>/runs/<variant>/seed<i>/dynamics.jsonl``.
The workdir is shared by the figures: its identity is the base run, the seeds and the
tracking (not ``--figure``), and a variant is named by what it trains (``movr+W``: m-OvR with
weight decay; ``+A`` augmentation, ``+S`` the rotation task; ``sce``, ``nsce``), so a run
that two figures need trains once (Figs. 4, 5 and one side of each of Figs. 8-11 are the same
``movr+W`` runs on digits). Each figure writes ``<figure>.png``, and its numbers go into
``results.json`` under its name.

The variants set their technique explicitly, on or off, whatever the data set's default
(digits turns augmentation and the rotation task off, image data sets on): augmentation on is
the base run's augmentation, or ``weak`` (4 px translation and horizontal flip) where that is
``none``; the rotation task on is lambda_self 0.1 (or the base run's value); weight decay on
is 1e-3 (or the base run's), off is 0.

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

What the defaults show on digits (mean ± std over 3 seeds at step 1,000; results.json):

* fig4, as the paper: DBI falls from 2.2 to 0.27, the JND rises steadily from -0.01 to
  0.36, the AUROC from 0.47 to 0.967, most of it in the first 10 steps. Unlike the paper's,
  the inter-class distance wobbles (up to step 4, back down by step 10) before it grows to
  0.75, and the JND rises fastest early (to 0.25 by step 30), not late.
* fig5, as the paper: strong, non-linear correlations over 60 pooled points: AUROC vs JND
  Pearson 0.85, Spearman 0.90; DBI vs JND -0.90, -0.99 (monotone: DBI is a function of the
  JND here).
* fig8, as the paper at 1,000 steps: m-OvR has the lower DBI (0.27 vs 0.52), a JND that
  grows (0.36 ± 0.01 vs SCE's -0.06 ± 0.30, which swings with the unnormalised scale) and
  the higher AUROC (0.967 vs 0.946). SCE's AUROC is still rising at 1,000 steps; at 2,000
  steps the loss table has SCE ahead (0.982 vs 0.974).
* fig9, opposite to the paper: weak augmentation (flips and 4 px shifts of 8x8 digits)
  slows and spoils everything: DBI 0.78 vs 0.27, JND 0.23 vs 0.36, AUROC 0.83 vs 0.97.
* fig10, as the paper but small: weight decay raises the inter-class distance (0.750 vs
  0.727), the JND (0.362 vs 0.344) and the AUROC (0.967 vs 0.965, within a std), all in the
  last few hundred steps.
* fig11, mostly opposite: the rotation task (lambda 0.1) raises the unknown ||J|| a little
  (0.611 vs 0.597, within the spread) but lowers the JND (0.326 vs 0.362) and the AUROC
  (0.960 vs 0.967).
* fig15, in part as the paper: without augmentation SCE and N-SCE separate the classes (DBI
  0.52 both) and detect unknowns (AUROC 0.946, 0.911); N-SCE's JND rises to 0.57 like
  m-OvR's, SCE's stays near 0 with a large spread (-0.06 ± 0.30, unnormalised). With
  augmentation both are worse (AUROC 0.71, 0.83), as in fig9.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jacosr.config import require, to_dict
from jacosr.dynamics import TrackConfig, read_dynamics
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.experiments.grid import run_grid, seed_grid
from jacosr.metrics import metric_correlations
from jacosr.plots import plot_dynamics, plot_metric_pairs
from jacosr.train import PAPER_SELF_SUP, ResolvedTrainConfig, TrainConfig, resolve
from jacosr.workdir import open_workdir

METRIC_LABELS = {
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
SERIES = tuple(METRIC_LABELS)
"""The metrics kept per variant in results.json (mean and std over seeds at every step)."""
EVALUATION = EvalConfig(scores=("loss",))
"""Each run's final evaluation (results.json of the run; the figures use the tracked rows)."""
WEIGHT_DECAY = TrainConfig.weight_decay  # the paper's 1e-3


def _technique(
    base: ResolvedTrainConfig,
    *,
    loss: str | None = None,
    augment: bool | None = None,
    weight_decay: bool | None = None,
    rotation: bool | None = None,
) -> TrainConfig:
    """``base`` with the loss and the techniques that are given switched on or off (see the
    module docstring for the values "on" takes); the others as in ``base``."""
    changes = {}
    if loss is not None:
        changes["loss"] = dataclasses.replace(base.loss, loss=loss)
    if augment is not None:
        on = base.augment if base.augment != "none" else "weak"
        changes["augment"] = on if augment else "none"
    if weight_decay is not None:
        changes["weight_decay"] = (base.weight_decay or WEIGHT_DECAY) if weight_decay else 0.0
    if rotation is not None:
        changes["self_sup"] = (base.self_sup or PAPER_SELF_SUP) if rotation else 0.0
    return dataclasses.replace(base, **changes)


def variant_name(config: TrainConfig) -> str:
    """The run folder of a variant, from what it trains: the loss, then ``+W`` (weight decay),
    ``+A`` (weak augmentation; ``+A-<name>`` another one) and ``+S`` (rotation task) when on,
    e.g. ``movr+W`` or ``sce+W+A``."""
    config = resolve(config)
    parts = [config.loss.loss]
    if config.weight_decay > 0:
        parts.append("W")
    if config.augment != "none":
        parts.append("A" if config.augment == "weak" else f"A-{config.augment}")
    if config.self_sup > 0:
        parts.append("S")
    return "+".join(parts)


class FigureSpec(NamedTuple):
    """One figure: its variants (legend label -> run, from the resolved base run) and the
    metrics of its panels (keys of a ``dynamics.jsonl`` row), and its caption."""

    variants: Callable[[ResolvedTrainConfig], dict[str, TrainConfig]]
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


def variant_series(runs: Mapping[str, list[dict]]) -> dict:
    """``{"steps": [T], "mean": {metric: [T]}, "std": {metric: [T]}, "final": {metric:
    [S]}, "estimator", "num_probes"}`` from the ``dynamics.jsonl`` rows of one variant's S
    seeds (``run name -> rows``; every seed tracks the same steps). ``std`` is the sample
    standard deviation over seeds (ddof 1)."""
    tables = list(runs.values())
    steps = [row["step"] for row in tables[0]]
    for rows in tables:
        if [row["step"] for row in rows] != steps:
            raise ValueError(f"the seeds of a variant tracked different steps: {list(runs)}")
    values = {m: np.array([[row[m] for row in rows] for rows in tables]) for m in SERIES}
    return {
        "runs": list(runs),
        "estimator": tables[0][0]["estimator"],
        "num_probes": tables[0][0]["num_probes"],
        "steps": steps,
        "mean": {m: v.mean(axis=0).tolist() for m, v in values.items()},
        "std": {m: v.std(axis=0, ddof=1).tolist() for m, v in values.items()},
        "final": {m: v[:, -1].tolist() for m, v in values.items()},
    }


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
        panels = {m: METRIC_LABELS[m] for m in spec.panels}
        title = f"{spec.caption}\n{where}, mean ± 1 std over {seeds} seeds"
        return plot_dynamics(entry["variants"], panels, title=title)
    (runs,) = rows.values()
    points = {m: np.concatenate([[r[m] for r in v] for v in runs.values()]) for m in spec.panels}
    steps = np.concatenate([[r["step"] for r in v] for v in runs.values()])
    seed = np.concatenate([[i] * len(v) for i, v in enumerate(runs.values())])
    notes = [_note(c) for c in entry["correlations"].values()]
    title = f"{spec.caption}\n{where}, the tracked steps of {seeds} seeds"
    return plot_metric_pairs(points, FIG5_PAIRS, steps, seed, METRIC_LABELS, notes, title=title)


def run(config: DynamicsConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train (or read back) the figure's variants x seeds with tracking, write its figure and
    its entry of results.json; return that entry."""
    spec = FIGURES[config.figure]
    base = resolve(config.train)
    variants = spec.variants(base)
    outputs = ("results.json", *(f"{name}.png" for name in FIGURES))
    with open_workdir(workdir, identity(config), outputs=outputs, overwrite=overwrite) as opened:
        workdir = opened.path
        names = {label: variant_name(c) for label, c in variants.items()}
        grid = seed_grid({names[label]: c for label, c in variants.items()}, config.seeds)
        finished = run_grid(grid, workdir / "runs", EVALUATION)
        rows = {
            label: {
                run_name: read_dynamics(workdir / "runs" / run_name)
                for run_name in grid
                if run_name.rsplit("/", 1)[0] == names[label]
            }
            for label in variants
        }
        split = next(iter(finished.values()))["split"]
        png = workdir / f"{config.figure}.png"
        entry = {
            "figure": config.figure,
            "caption": spec.caption,
            "png": str(png),
            "panels": list(spec.panels),
            "variants": {
                label: {"run": names[label], **variant_series(runs)} for label, runs in rows.items()
            },
        }
        if config.figure == "fig5":
            (runs,) = rows.values()
            entry["correlations"] = pooled_correlations(runs)
        opened.save_figure(png.name, _figure(spec, entry, rows, split, config.seeds))
        path = workdir / "results.json"
        results = json.loads(path.read_text()) if path.exists() else {}
        results.update({"config": identity(config), "split": split})
        results.setdefault("figures", {})[config.figure] = entry
        opened.write_json("results.json", results)
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


COMMAND = Command(
    module=__name__,
    config=DynamicsConfig,
    run=run,
    workdir="runs/dynamics",
    description=(
        "Training dynamics (DBI, inter-class distance, JND, AUROC against the step) of the "
        "paper's Figs. 4, 5, 8-11 and 15."
    ),
    outputs=("results.json",),
    runs="<figure>.png and the tracked runs (runs/<variant>/seed<i>)",
    summary=format_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
