"""Beyond the paper: does training for the Jacobian norm difference directly help? The paper's
recipe with and without each Jacobian term, over a sweep of their weights and seeds, tracked.

    python -m jacosr.experiments.jacobian_training               # digits: 6 variants x 3 seeds
    python -m jacosr.experiments.jacobian_training --dataset mnist5k --data-dir DIR \\
        --backbone lenet --steps 600 --seeds 2                    # real images (README)

The paper explains open-set recognition by the Jacobian norm difference (JND, Eq. 20): metric
learning lowers ``||df/dx||_F`` on the known classes and leaves it high between and beyond
them. The terms of :class:`jacosr.recipe.JacobianTerms` ask for that directly
(:mod:`jacosr.jacobian.penalties`): the known-class smoothness term ``lambda_known mean_b
||J_f(x_b)||_F^2`` (Hoffman, Roberts and Yaida 2019), and the open-space term, a hinge that
asks the norm at points mid-path between samples of two known classes (where the paper's Fig. 3
has it peak) to exceed the known-class norm by ``--open-space-ratio``.

The variants: the base run (the paper's recipe for the data set; ``paper``), the base run with
the known-class term at each weight of ``--known-weights`` (``known<w>``), and with the
open-space term at each of ``--open-weights`` (``open<w>``), each at seeds ``--seed`` ..
``--seed + --seeds - 1``, every one tracked (:mod:`jacosr.tracking`: accuracy, the mean
``||J||`` on known and unknown test samples, the JND with its 95% bootstrap interval, the
AUROC of the loss score, MSP and ``||J||``, at ``--track-points`` steps). Runs live in
``<workdir>/runs/<variant>/seed<i>``; re-running reads back finished runs.

Writes ``results.json`` (per variant: its weights, the tracked series' mean and std over seeds
at every step, the final row of every seed), ``jacobian_training.md`` (the final values, mean
± std over seeds, and the JND's bootstrap interval averaged over seeds), and two figures:
``jacobian_training.png``, the JND, the known and unknown norms, the AUROCs and the accuracy
against the step, one curve per variant (mean over seeds, ± 1 std band), and
``jacobian_training_final.png``, the final JND, AUROCs and accuracy against each term's weight
(0: the paper's recipe), seeds as dots.

What to look for: a term helps if it raises the final AUROC of the loss score (the paper's
detector) or of ``||J||`` beyond the seeds' spread without costing accuracy; the JND should
rise with the open-space term (it asks for it) and may fall with the known-class term (which
lowers every norm). What the defaults found on digits and MNIST: README, "Training for the
Jacobian norm difference". Runtimes: experiments/README.md.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jacosr.config import require, to_dict
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import grid_identity, print_grid, run_grid, seed_grid
from jacosr.plots import plot_dynamics
from jacosr.recipe import ResolvedTrainConfig, TrainConfig, resolve
from jacosr.runs import RESULTS, read_dynamics
from jacosr.tables import markdown_table, summarise_values
from jacosr.tracking import ROW_LABELS, TrackConfig, series_over_seeds
from jacosr.workdir import open_workdir

OUTPUTS = (RESULTS, "jacobian_training.md", "jacobian_training.png", "jacobian_training_final.png")
EVALUATION = EvalConfig(scores=("loss", "msp"))
"""Each run's own evaluation (its results.json, with the JND of the runs that use a term);
the tables and figures use the tracked rows."""
EXTENT = ("known_weights", "open_weights", "seeds")
"""The fields that only choose which runs are made (left out of the workdir's identity)."""
CURVES = ("jnd", "norm_known", "norm_unknown", "auroc_loss", "auroc_jacobian", "accuracy")
"""The panels of the figure against the step (keys of a tracked row)."""
FINAL = {
    "JND": "jnd",
    "AUROC (loss)": "auroc_loss",
    "AUROC (MSP)": "auroc_msp",
    "AUROC (‖J‖)": "auroc_jacobian",
    "accuracy": "accuracy",
}
"""The columns of the final table and the series of the final figure: header -> row key."""
PAPER = "paper"


@dataclass(frozen=True)
class JacobianTrainingConfig:
    """Training for the Jacobian norm difference.

    Attributes:
      train: the base run: the paper's recipe for the data set (default: digits, m-OvR, the
        MLP, 1,000 steps, 12 tracking points); each variant turns one term on at a weight
        (its probes, side and ratio are the base run's --jacobian-reg-probes,
        --jacobian-reg-side and --open-space-ratio).
      known_weights: the weights (lambda_known) of the known-class smoothness term, one
        variant each.
      open_weights: the weights (lambda_open) of the open-space term, one variant each.
      seeds: each variant is trained with this many seeds, from the base run's --seed on.

    Refused when built (``ValueError`` naming the flag): a base run with a term on (the
    variants set them), a weight that is not positive and finite, repeated weights, fewer
    than 2 seeds, a base run without tracking.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=1000, track=TrackConfig(track_points=12))
    )
    known_weights: tuple[float, ...] = (0.01, 0.1, 1.0)
    open_weights: tuple[float, ...] = (0.1, 1.0)
    seeds: int = 3

    def __post_init__(self):
        terms = self.train.jacobian
        require(
            not terms.enabled,
            "--jacobian-reg/--open-space-reg",
            "0 in the base run (each variant turns one term on at its weight)",
            (terms.jacobian_reg, terms.open_space_reg),
        )
        for flag, weights in (
            ("--known-weights", self.known_weights),
            ("--open-weights", self.open_weights),
        ):
            require(
                all(0 < w < np.inf for w in weights) and len(set(weights)) == len(weights),
                flag,
                "distinct weights > 0 (the paper's recipe, weight 0, is always trained)",
                weights,
            )
        require(self.seeds >= 2, "--seeds", ">= 2 (the spread over seeds)", self.seeds)
        require(
            self.train.track.enabled,
            "--track-points",
            "> 0, or --track-every / --track-steps set (the series are of tracked runs)",
            self.train.track.track_points,
        )


def variants(config: JacobianTrainingConfig) -> dict[str, ResolvedTrainConfig]:
    """Variant name -> its run: ``paper``, ``known<w>``, ``open<w>``."""
    base = resolve(config.train)
    terms = base.jacobian

    def with_terms(**weights: float) -> ResolvedTrainConfig:
        return dataclasses.replace(base, jacobian=dataclasses.replace(terms, **weights))

    return {
        PAPER: base,
        **{f"known{w:g}": with_terms(jacobian_reg=w) for w in config.known_weights},
        **{f"open{w:g}": with_terms(open_space_reg=w) for w in config.open_weights},
    }


def training_grid(config: JacobianTrainingConfig) -> dict[str, ResolvedTrainConfig]:
    """``<variant>/seed<s>`` -> the run."""
    return seed_grid(variants(config), config.seeds)


def final_table(series: dict[str, dict]) -> str:
    """The final values per variant in Markdown: mean ± std over seeds, then the JND's 95%
    bootstrap interval, each bound averaged over the seeds."""
    values = {
        f"{name}/{i}": {header: s["final"][key][i] for header, key in FINAL.items()}
        for name, s in series.items()
        for i in range(len(s["runs"]))
    }
    summary = summarise_values(values)
    intervals = {
        name: [f"[{np.mean(s['final']['jnd_low']):.3f}, {np.mean(s['final']['jnd_high']):.3f}]"]
        for name, s in series.items()
    }
    return markdown_table(
        summary, row_header="variant", labels=intervals, label_headers=["JND 95% CI"]
    )


def run(
    config: JacobianTrainingConfig,
    workdir: Path,
    *,
    overwrite: bool = False,
    spread_runs: bool = False,
) -> dict:
    """Train (or read back) every variant x seed with tracking, write the table, the figures
    and results.json; return results.json's content."""
    runs = variants(config)
    grid = training_grid(config)
    print_grid(grid)
    identity = grid_identity(config, EXTENT)
    with open_workdir(workdir, identity, outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        finished = run_grid(grid, workdir / "runs", EVALUATION, spread_runs=spread_runs)
        series = {
            name: series_over_seeds(
                {
                    run: read_dynamics(workdir / "runs" / run)
                    for run in grid
                    if run.rsplit("/", 1)[0] == name
                }
            )
            for name in runs
        }
        split = next(iter(finished.values())).split
        markdown = final_table(series)
        results = {
            "config": to_dict(config),
            "split": split,
            "variants": {
                name: {"jacobian": to_dict(runs[name].jacobian), **series[name]} for name in runs
            },
            "markdown": markdown,
        }
        opened.write_json(RESULTS, results)
        opened.write("jacobian_training.md", markdown)
        where = f"{split['source']}: known {split['known_classes']}"
        seeds = f"mean ± 1 std over {config.seeds} seeds"
        curves = plot_dynamics(
            series,
            {key: ROW_LABELS[key] for key in CURVES},
            title=f"Training for the Jacobian norm difference, {where}; {seeds}",
        )
        opened.save_figure("jacobian_training.png", curves)
        opened.save_figure(
            "jacobian_training_final.png",
            _final_figure(series, runs, title=f"At the last step, {where}; {seeds}"),
        )
        return results


def _final_figure(series: dict[str, dict], runs: dict[str, ResolvedTrainConfig], *, title: str):
    """The final values against each term's weight (log axis; weight 0, the paper's recipe,
    one step left of the smallest weight): a panel per metric, a line per term, the mean over
    seeds with a ± 1 std band and each seed as a dot."""
    terms = {
        "known-class term": ("jacobian_reg", "known"),
        "open-space term": ("open_space_reg", "open"),
    }
    weights = sorted({getattr(c.jacobian, a) for a, _ in terms.values() for c in runs.values()})
    positive = [w for w in weights if w > 0]
    zero = positive[0] / (positive[1] / positive[0] if len(positive) > 1 else 10.0)
    fig = Figure(figsize=(3.4 * len(FINAL), 3.6), layout="constrained")
    axes = fig.subplots(1, len(FINAL), squeeze=False)[0]
    for ax, (header, key) in zip(axes, FINAL.items(), strict=True):
        for i, (label, (attribute, prefix)) in enumerate(terms.items()):
            names = [PAPER, *(n for n in runs if n.startswith(prefix))]
            x = np.array([getattr(runs[n].jacobian, attribute) or zero for n in names])
            per_seed = np.array([series[n]["final"][key] for n in names])
            mean, std = per_seed.mean(axis=1), per_seed.std(axis=1, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=f"C{i}", alpha=0.2, linewidth=0)
            ax.plot(x, mean, "o-", color=f"C{i}", markersize=4, label=label)
            seeds = np.broadcast_to(x[:, None], per_seed.shape)
            ax.plot(seeds.ravel(), per_seed.ravel(), ".", color=f"C{i}", alpha=0.45, markersize=3)
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks([zero, *positive], ["0", *(f"{w:g}" for w in positive)], fontsize=8)
        ax.set_xlabel("weight λ (0: the paper's recipe)")
        ax.set_title(header, fontsize=10)
        ax.grid(alpha=0.3)
    fig.legend(
        *axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, frameon=False
    )
    fig.suptitle(title)
    return fig


def format_summary(results: dict) -> str:
    """The final table."""
    return results["markdown"]


COMMAND = Command(
    module=__name__,
    config=JacobianTrainingConfig,
    run=run,
    workdir="runs/jacobian_training",
    description=(
        "Beyond the paper: the paper's recipe with and without each Jacobian term "
        "(known-class smoothness, open-space sharpness) over their weights and seeds, tracked: "
        "accuracy, JND, AUROC of the loss score, MSP and ||J|| against the step and at the end."
    ),
    outputs=OUTPUTS,
    runs="the runs (runs/<variant>/seed<i>)",
    summary=format_summary,
    grid=training_grid,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
