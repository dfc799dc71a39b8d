"""Fig. 14: open-set AUROC (and closed-set accuracy) against T, m, weight decay and lambda_self.

    python -m jacosr.experiments.sensitivity                   # 4 sweeps, 3 seeds, 500 steps
    python -m jacosr.experiments.sensitivity --sweeps wd --wd-values 0 1e-4 1e-3 1e-2 3 10
    python -m jacosr.experiments.sensitivity --benchmark cifar10 --backbone vgg32 --steps 20000

The default command trains 15 points x 3 seeds = 45 runs of the digits MLP, 500 steps each
(the three lambda_self > 0 points carry the rotation task, twice the images per step). Each
point compiles its own training program (:mod:`jacosr.step` bakes the hyper-parameters into
it; the seeds of a point share it), which on a CPU costs more than its 500 training steps, so
the number of points sets the cost: the grids have 4 to 6 points, and the default steps are a
quarter of the other digits experiments' 2,000 (runtime: experiments/README.md). Raise
``--steps`` (the paper: 20,000) and the grids for the paper's setting. A re-run that finds
every run finished trains nothing.

Each sweep varies one hyper-parameter of the base run (m-OvR, the paper's defaults otherwise:
T = 32, m = 0.5, weight decay 1e-3, and on image data sets the weak augmentation and the
rotation task with lambda_self = 0.1):

* ``T``, the scale of the cosine logits (Eq. 23): 2, 8, 32, 128 (log axis; factors of 4
  around the paper's 32);
* ``m``, the angular margin in radians, set for the positive and the negative classes alike
  (Eq. 24 adds the same +m to every class): 0, 0.25, 0.5, 1;
* ``wd``, the weight-decay coefficient: 0, 1e-3, 1e-2, 1e-1, 1, 10 (log axis, 0 drawn one
  decade left of 1e-3 across an axis break). The grid reaches 10 because on digits that is
  where the embedding collapses: every input maps to one point (accuracy 1/6, AUROC 0.5,
  inter-class distance 0), while 1 only degrades it;
* ``self_sup``, lambda_self, the weight of the rotation task: 0, 0.1, 0.5, 1 (log axis, 0 at
  the left edge). On digits the base run has no rotation task (8x8 digits are small for
  it), so this sweep turns it on; its 0 point is the base run.

The paper gives no grid values (Fig. 14 is an image, and the paragraph that introduces it
is cut off in our copy of the text); these grids bracket each default and cover what the text
discusses: "an overly large weight decay collapses the embedding to a constant (the zero
vector)", and lambda_self "contributes positively only when small (smaller than 1)". Points
shared by sweeps (the base run is in all four) train once: runs are named by their four values,
``<workdir>/runs/T32.0-m0.5-wd0.001-self0.0/seed<i>``; re-running reads back finished runs and
resumes the others, and more values, sweeps or seeds in the same workdir add runs beside them.

Writes ``results.json`` (per sweep: the values, the runs, and per column the mean, the sample
standard deviation over seeds and the per-seed values; columns: AUROC of the loss score
(Eq. 22), closed-set accuracy, inter-class distance of the known-test embeddings),
``sensitivity.md`` (one Markdown table per sweep, also printed) and ``sensitivity.png``: one
panel per sweep, the AUROC and the accuracy against the hyper-parameter, mean over seeds with
a ± 1 std band and the seeds as dots, the paper's default marked. What the paper says of its
Fig. 14 (its sentences on T and m are cut off in our copy): an overly large weight decay
collapses the embedding, an overly small one does nothing, and lambda_self helps only below 1,
the AUROC being robust over small values. What the default measures on digits is in the
README ("The paper's theory on digits", the Fig. 14 row).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jacosr.config import require, to_dict
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import grid_identity, print_grid, run_grid, seed_grid
from jacosr.losses import LossConfig
from jacosr.recipe import (
    PAPER_SELF_SUP,
    PAPER_WEIGHT_DECAY,
    ResolvedTrainConfig,
    TrainConfig,
    resolve,
)
from jacosr.runs import RESULTS
from jacosr.tables import markdown_table, summarise
from jacosr.workdir import open_workdir

COLUMNS = {
    "AUROC (loss score)": ("scores", "loss", "auroc"),
    "accuracy": ("accuracy",),
    "inter-class distance": ("embedding", "inter_class_distance"),
}
"""What is recorded per point; the figure draws the first two (a collapsed embedding shows
as accuracy near 1/K and an inter-class distance near 0)."""
PLOTTED = ("AUROC (loss score)", "accuracy")
EVALUATION = EvalConfig(scores=("loss",))
OUTPUTS = (RESULTS, "sensitivity.md", "sensitivity.png")
EXTENT = ("sweeps", "t_values", "m_values", "wd_values", "self_sup_values", "seeds")
"""The config fields that only choose which runs are made: left out of the workdir's identity
(:func:`jacosr.grids.grid_identity`), so more values, sweeps or seeds add runs to a
workdir and fewer summarise a subset."""
DEFAULT_STEPS = 500


@dataclass(frozen=True)
class Sweep:
    """One panel of Fig. 14: a hyper-parameter of the base run.

    Attributes:
      label: the x-axis label and the heading of the sweep's table.
      log: whether the values span decades (a logarithmic x-axis).
      paper_default: the paper's value, marked in the panel.
      apply: ``(base, value) ->`` the base run with the hyper-parameter set to ``value``.
    """

    label: str
    log: bool
    paper_default: float
    apply: Callable[[TrainConfig, float], TrainConfig]


def _with_loss(base: TrainConfig, **changes: float) -> TrainConfig:
    return dataclasses.replace(base, loss=dataclasses.replace(base.loss, **changes))


SWEEPS: dict[str, Sweep] = {
    "T": Sweep("scale T", True, LossConfig().scale, lambda base, v: _with_loss(base, scale=v)),
    "m": Sweep(
        "margin m (positive and negative, Eq. 24)",
        False,
        LossConfig().margin_pos,
        lambda base, v: _with_loss(base, margin_pos=v, margin_neg=v),
    ),
    "wd": Sweep(
        "weight decay λ_wd",
        True,
        PAPER_WEIGHT_DECAY,
        lambda base, v: dataclasses.replace(base, weight_decay=v),
    ),
    "self_sup": Sweep(
        "λ_self (rotation task)",
        True,
        PAPER_SELF_SUP,
        lambda base, v: dataclasses.replace(base, self_sup=v),
    ),
}
"""The sweeps by name (``--sweeps``)."""


@dataclass(frozen=True)
class SensitivityConfig:
    """Fig. 14's hyper-parameter sweeps.

    Attributes:
      train: the base run: m-OvR with the paper's T, m and weight decay, and 500 steps by
        default, a quarter of the other digits experiments', since each point compiles its
        own program (raise --steps: the paper trains for 20,000). Each point replaces one
        hyper-parameter and the seed.
      sweeps: the hyper-parameters to sweep, one panel each: T (the scale), m (both margins,
        Eq. 24), wd (the weight-decay coefficient), self_sup (lambda_self, the rotation
        task's weight; the sweep turns the task on where the base run has it off, as on
        digits).
      t_values: the grid of T.
      m_values: the grid of m, in radians.
      wd_values: the grid of the weight-decay coefficient (0 is drawn left of the smallest
        positive value on the log axis).
      self_sup_values: the grid of lambda_self (0: no rotation task).
      seeds: each point is trained with this many seeds, from the base run's --seed on.

    Refused when built (``ValueError`` naming the flag): an unknown or repeated sweep, an
    empty grid for a chosen sweep, a value the base run refuses (e.g. a negative weight
    decay or a margin of pi), a loss other than movr, fewer than 1 seed.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=DEFAULT_STEPS))
    sweeps: tuple[str, ...] = tuple(SWEEPS)
    t_values: tuple[float, ...] = (2.0, 8.0, 32.0, 128.0)
    m_values: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0)
    wd_values: tuple[float, ...] = (0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
    self_sup_values: tuple[float, ...] = (0.0, 0.1, 0.5, 1.0)
    seeds: int = 3

    def __post_init__(self):
        names = ", ".join(SWEEPS)
        require(len(self.sweeps) > 0, "--sweeps", f"one or more of {names}", self.sweeps)
        for name in self.sweeps:
            require(name in SWEEPS, "--sweeps", f"names out of {names}", name)
        require(len(set(self.sweeps)) == len(self.sweeps), "--sweeps", "distinct", self.sweeps)
        require(
            self.train.loss.loss == "movr",
            "--loss",
            "movr (Fig. 14 sweeps the hyper-parameters of m-OvR)",
            self.train.loss.loss,
        )
        require(self.seeds >= 1, "--seeds", ">= 1", self.seeds)
        for name, values in self.grids().items():
            flag = f"--{name.lower().replace('_', '-')}-values"
            require(len(values) > 0, flag, f"one or more values for --sweeps {name}", values)
            for value in values:
                try:
                    SWEEPS[name].apply(self.train, value)
                except ValueError as err:
                    raise ValueError(f"{flag}: {err}") from None

    def grids(self) -> dict[str, tuple[float, ...]]:
        """The chosen sweeps' grids, ``name -> values`` in ``sweeps`` order."""
        every = {
            "T": self.t_values,
            "m": self.m_values,
            "wd": self.wd_values,
            "self_sup": self.self_sup_values,
        }
        return {name: every[name] for name in self.sweeps}


def point_name(config: ResolvedTrainConfig) -> str:
    """The run's four swept values, ``T32.0-m0.5-wd0.001-self0.0`` (``m<pos>,<neg>`` when the
    two margins differ): one name per distinct point, so a point shared by sweeps trains once.
    """
    loss = config.loss
    m = repr(float(loss.margin_pos))
    if loss.margin_neg != loss.margin_pos:
        m += f",{float(loss.margin_neg)!r}"
    return (
        f"T{float(loss.scale)!r}-m{m}-wd{float(config.weight_decay)!r}"
        f"-self{float(config.self_sup)!r}"
    )


def sweep_points(config: SensitivityConfig) -> dict[str, dict[float, ResolvedTrainConfig]]:
    """Sweep name -> value (ascending, duplicates dropped) -> the resolved run at that value."""
    base = resolve(config.train)
    return {
        name: {v: SWEEPS[name].apply(base, v) for v in sorted(set(values))}
        for name, values in config.grids().items()
    }


def sensitivity_grid(config: SensitivityConfig) -> dict[str, ResolvedTrainConfig]:
    """``<point>/seed<s>`` -> the run: every distinct point of the sweeps, x seeds."""
    points = sweep_points(config)
    rows = {point_name(c): c for sweep in points.values() for c in sweep.values()}
    return seed_grid(rows, config.seeds)


def _sweep_result(values: list[float], runs: list[str], summary: dict) -> dict:
    """One sweep's series from the grid's summary (:func:`jacosr.tables.summarise`):
    ``{"values": [P], "runs": [P], "columns": {column: {"mean": [P], "std": [P], "values":
    [P][S]}}}`` for P values and S seeds."""
    return {
        "values": values,
        "runs": runs,
        "columns": {
            column: {
                key: [summary[run][column][key] for run in runs] for key in summary[runs[0]][column]
            }
            for column in COLUMNS
        },
    }


def _markdown(sweeps: dict[str, dict]) -> str:
    """One Markdown table per sweep, headed by its label: a line per value, mean ± std."""
    parts = []
    for name, sweep in sweeps.items():
        rows = {
            f"{value:g}": {
                column: {key: cells[key][i] for key in ("mean", "std")}
                for column, cells in sweep["columns"].items()
            }
            for i, value in enumerate(sweep["values"])
        }
        parts.append(f"{name}: {SWEEPS[name].label}\n\n" + markdown_table(rows, row_header=name))
    return "\n".join(parts)


def run(
    config: SensitivityConfig,
    workdir: Path,
    *,
    overwrite: bool = False,
    spread_runs: bool = False,
) -> dict:
    """Train every point x seed into ``workdir/runs``, write the tables and the figure; return
    ``{"sweeps": name -> sweep result, "markdown"}``."""
    points = sweep_points(config)
    configs = sensitivity_grid(config)
    print_grid(configs)
    identity = grid_identity(config, EXTENT)
    with open_workdir(workdir, identity, outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        results = run_grid(configs, workdir / "runs", EVALUATION, spread_runs=spread_runs)
        summary = summarise(results, COLUMNS)
        sweeps = {
            name: _sweep_result(list(sweep), [point_name(c) for c in sweep.values()], summary)
            for name, sweep in points.items()
        }
        markdown = _markdown(sweeps)
        split = next(iter(results.values())).split
        first = config.train.seed
        seeds = f"seeds {first}-{first + config.seeds - 1}" if config.seeds > 1 else f"seed {first}"
        title = (
            f"m-OvR on {split['source']}, known {split['known_classes']}: "
            f"{config.train.steps} steps, mean ± std over {seeds}"
        )
        figure = plot_sweeps(
            {
                SWEEPS[name].label: (
                    np.array(sweep["values"]),
                    {c: np.array(sweep["columns"][c]["values"]) for c in PLOTTED},
                )
                for name, sweep in sweeps.items()
            },
            log_x={SWEEPS[name].label: SWEEPS[name].log for name in sweeps},
            marks={SWEEPS[name].label: SWEEPS[name].paper_default for name in sweeps},
            mark_label="the paper's default",
            title=title,
        )
        meta = {"config": to_dict(config), "split": split, "evaluation": to_dict(EVALUATION)}
        opened.write_json(RESULTS, {**meta, "sweeps": sweeps})
        opened.write("sensitivity.md", markdown)
        opened.save_figure("sensitivity.png", figure)
        return {"sweeps": sweeps, "markdown": markdown}


def _sweep_positions(values: np.ndarray, log: bool) -> np.ndarray:
    """Where a sweep's values go on its x-axis: themselves, except 0 on a log axis, which goes
    one grid step (the ratio of the two smallest positive values; 10 when there is one) left
    of the smallest positive value."""
    if not log or np.all(values > 0):
        return values
    positive = np.sort(values[values > 0])
    step = positive[1] / positive[0] if len(positive) > 1 else 10.0
    return np.where(values > 0, values, positive[0] / step)


def plot_sweeps(
    panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]],
    *,
    log_x: Mapping[str, bool],
    marks: Mapping[str, float],
    mark_label: str,
    title: str,
) -> Figure:
    """Metrics against one hyper-parameter per panel (Fig. 14): the mean over seeds as a line,
    ± 1 standard deviation (ddof 1) as a band, each seed as a dot.

    ``panels``: x-axis label -> ``(values [P], series)`` with ``series``: metric name ->
    ``[P, S]`` per-seed values at each of the P settings (S seeds); every panel has the same
    metrics. ``log_x``: x-axis label -> whether the axis is logarithmic; there a value 0 is
    drawn one grid step left of the smallest positive value, labelled "0", joined by a dotted
    line across an axis break (//). ``marks``: x-axis label -> a value marked by a vertical
    line, ``mark_label`` in the legend (the paper's default). Panels fill a grid two wide.
    """
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(max(6.4, 5.2 * ncols), 3.3 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (label, (values, series)) in zip(axes, panels.items(), strict=False):
        values = np.asarray(values, dtype=float)
        order = np.argsort(values)
        log = log_x[label] and np.any(values > 0)
        pos = _sweep_positions(values[order], log)
        # On a log axis the segment from 0 to the smallest positive value spans no real
        # interval: draw it dotted, across a break mark.
        cut = 1 if log and values[order][0] == 0 else 0
        for i, (name, per_seed) in enumerate(series.items()):
            colour = f"C{i}"
            per_seed = np.asarray(per_seed, dtype=float)[order]
            mean = per_seed.mean(axis=1)
            std = per_seed.std(axis=1, ddof=1) if per_seed.shape[1] > 1 else np.zeros_like(mean)
            ax.fill_between(pos, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
            ax.plot(pos[cut:], mean[cut:], "o-", color=colour, markersize=4, label=name)
            if cut:
                ax.plot(pos[:2], mean[:2], ":", color=colour)
                ax.plot(pos[:1], mean[:1], "o", color=colour, markersize=4)
            seeds = np.broadcast_to(pos[:, None], per_seed.shape)
            ax.plot(seeds.ravel(), per_seed.ravel(), ".", color=colour, alpha=0.45, markersize=3)
        mark = marks[label]
        at = mark if mark > 0 or not log else _sweep_positions(np.append(values, 0.0), log)[-1]
        ax.axvline(at, color="grey", linestyle="--", linewidth=1, label=mark_label)
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        if cut:
            ax.annotate(
                "//",
                xy=(np.sqrt(pos[0] * pos[1]), 0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
            )
        ax.set_xticks(pos, [f"{v:g}" for v in values[order]], fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    # Empty artists: legend entries for the bands and the dots of every metric.
    axes[0].fill_between([], [], color="grey", alpha=0.3, linewidth=0, label="± 1 std (seeds)")
    axes[0].plot([], [], ".", color="grey", label="one seed")
    handles, labels = axes[0].get_legend_handles_labels()
    columns = len(labels) if ncols > 1 else -(-len(labels) // 2)
    fig.legend(handles, labels, loc="outside lower center", ncol=columns, frameon=False)
    fig.suptitle(title, wrap=True)
    return fig


COMMAND = Command(
    module=__name__,
    config=SensitivityConfig,
    run=run,
    workdir="runs/sensitivity",
    description=(
        "Fig. 14: AUROC and accuracy against T, m, weight decay and lambda_self (one sweep "
        "each, the others at the paper's defaults), mean ± std over seeds. Default: digits, "
        f"{DEFAULT_STEPS} steps (raise --steps for the paper's 20,000)."
    ),
    outputs=OUTPUTS,
    runs="the runs (runs/<point>/seed<i>)",
    summary=lambda result: result["markdown"],
    grid=sensitivity_grid,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
