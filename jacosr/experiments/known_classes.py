"""Fig. 6: the Jacobian norm difference (and the AUROC) against the number K of known classes.

    python -m jacosr.experiments.known_classes               # digits: K = 2..8, 3 draws each
    python -m jacosr.experiments.known_classes --ks 2 4 6 8 --draws 5
    python -m jacosr.experiments.known_classes --dataset cifar10 --backbone vgg32 \\
        --embed-dim 128 --steps 20000 --ks 2 3 4 5 6 7 8 9 --workdir runs/known_classes-cifar10

The default trains 21 runs of 2,000 steps of the digits MLP (each known set has its own
training-set size, so its own training program), then measures the 21 final models exactly;
a re-run that finds every run finished and measured trains and measures nothing (runtime:
experiments/README.md). The 2,000 steps are the other digits experiments': at 1,000 the
JND's rise with K did not show yet (README, "The paper's theory on digits").

For every K of ``--ks`` it trains ``--draws`` models, each on a random set of K known classes
of the data set with every other class unknown, then measures each final model as
:mod:`jacosr.tracking` measures a tracked step (:func:`jacosr.tracking.measure`; exact
Jacobian norms of every digits test image; the settings of ``--track-estimator``,
``--track-probes``, ``--track-samples``, ``--track-seed``): the JND (Eq. 20, mean ||df/dx||_F
of the unknown test samples minus that of the known), the AUROC of the loss score (Eq. 22),
the two mean norms, the closed-set accuracy. The draws are nested and paired
(:func:`jacosr.data.known_sets.draw_known_sets`): draw d is a random order of the
classes and its set for K is the first K of them, so each draw is a curve over K on which only
K changes. The training seed (``--seed``) is the same for every run: the draws vary the
classes, not the initialisation. Runs live in ``<workdir>/runs/K<k>/known<classes>``; re-running
reads finished runs back, resumes the others, and re-uses the measurements results.json holds
(a re-run measures only what changed). The workdir's identity leaves out ``--ks`` and
``--draws``, so more of either adds runs. ``--benchmark`` only picks the data set and image
size here; the known sets are always drawn, and ``--ks`` must leave at least one unknown
class (K <= classes - 1; a clear error otherwise).

Writes ``results.json`` (the draws, every run's measured row, the series ``[K, draws]`` of each
metric, the mean ± std per K, and the rank correlations with K over all runs: Spearman's rho and
Kendall's tau-b with p-values, Pearson too), ``known_classes.md`` (the table per K, printed with
the correlations) and ``known_classes.png``: against K, (a) the JND, (b) the AUROC, (c) the mean
||df/dx||_F of the known and of the unknown test samples; in each the mean over draws with a
± 1 std band and every draw as a thin line, the rank correlations above the panel.

The paper's Fig. 6 shows the JND growing with K (its text: "the Jacobian norm difference
becomes larger with a larger number K of known classes"; by Theorem 2, more pairs of known
classes to push apart put more of the open set at high norm). What the default measures on
digits is in the README ("The paper's theory on digits", the Fig. 6 row).

Readings: the paper does not say which classes are unknown for each K; here every class that
is not known is unknown (so the unknown set shrinks as K grows, which the draws average over),
and the known sets are random and nested (the paper does not say how it chose them). The
default trains on every known training image (no known-val, as in Protocol A).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jacosr.config import require, to_dict
from jacosr.data import DataConfig, resolve_benchmark
from jacosr.data.known_sets import draw_known_sets, known_set_name, source_classes, with_known
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import grid_identity, print_grid, run_grid
from jacosr.metrics import metric_correlations
from jacosr.recipe import ResolvedTrainConfig, TrainConfig, resolve
from jacosr.runs import RESULTS, measure_runs, read_outputs
from jacosr.tables import markdown_table, summarise_values
from jacosr.workdir import open_workdir

OUTPUTS = (RESULTS, "known_classes.md", "known_classes.png")
EVALUATION = EvalConfig(scores=("loss",))
"""Each run's own evaluation (its results.json); the figure uses the measured rows."""
DEFAULT_STEPS = 2000
METRICS = {
    "jnd": "JND (Eq. 20)",
    "auroc_loss": "AUROC (loss score)",
    "norm_known": "‖J‖ known",
    "norm_unknown": "‖J‖ unknown",
    "accuracy": "accuracy",
}
"""The recorded series: key of a measured row -> its column in the table."""
CORRELATED = ("jnd", "auroc_loss")
"""The metrics whose rank correlation with K is reported."""


@dataclass(frozen=True)
class KnownClassesConfig:
    """Fig. 6: JND and AUROC against the number K of known classes.

    Attributes:
      train: the base run (default: digits, m-OvR, the MLP, 2,000 steps, no known-val as in
        Protocol A); each run replaces its known classes by a draw (every other class of the
        data set unknown; --benchmark only picks the data set). Each final model is
        measured with its tracking settings: --track-estimator, --track-probes, the sample
        cap --track-samples and the seed --track-seed.
      ks: the numbers of known classes, each from 2 to the data set's classes - 1.
      draws: random known sets per K (nested: draw d's set for K is the first K classes of a
        random order).
      draw_seed: seed of the draws.

    Refused when built (``ValueError`` naming the flag): fewer than 2 distinct K or a K below
    2, fewer than 1 draw, a negative draw seed, --known, --unknown or --unknown-dataset set
    (the draws choose the classes). A K beyond the data set's classes is refused before any
    workdir is made.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=DEFAULT_STEPS, data=DataConfig(val_fraction=0.0))
    )
    ks: tuple[int, ...] = (2, 3, 4, 5, 6, 7, 8)
    draws: int = 3
    draw_seed: int = 0

    def __post_init__(self):
        require(
            len(set(self.ks)) >= 2 and len(set(self.ks)) == len(self.ks),
            "--ks",
            "at least 2 distinct numbers of known classes",
            self.ks,
        )
        require(all(k >= 2 for k in self.ks), "--ks", "numbers >= 2", self.ks)
        require(self.draws >= 1, "--draws", ">= 1", self.draws)
        require(self.draw_seed >= 0, "--draw-seed", ">= 0", self.draw_seed)
        data = self.train.data
        require(
            data.known == DataConfig().known,
            "--known",
            "left out (the draws choose the known classes)",
            data.known,
        )
        for flag, value in (
            ("--unknown", data.unknown),
            ("--unknown-dataset", data.unknown_dataset),
        ):
            require(
                value is None,
                flag,
                "left out (every class of the data set that is not known is unknown)",
                value,
            )


def training_grid(
    config: KnownClassesConfig, num_classes: int
) -> tuple[list[dict], dict[str, ResolvedTrainConfig]]:
    """The draws (``[{K: classes}]``, one dict per draw) and the runs, ``K<k>/known<classes>``
    -> training config, K ascending, for a data set of ``num_classes`` classes."""
    ks = sorted(config.ks)
    try:
        draws = draw_known_sets(num_classes, ks, config.draws, config.draw_seed)
    except ValueError as err:
        raise ValueError(f"--ks, --draws: {err}") from None
    base = resolve(config.train)
    grid = {
        f"K{k}/{known_set_name(draw[k])}": dataclasses.replace(
            base, data=with_known(base.data, draw[k])
        )
        for k in ks
        for draw in draws
    }
    return draws, grid


def series(records: dict[str, dict], draws: list[dict], ks: list[int]) -> dict:
    """``{"k": [P], metric: [P][S]}`` for P values of K and S draws, from the measured rows
    (``records``: run name -> row)."""
    out: dict = {"k": ks}
    for metric in METRICS:
        out[metric] = [
            [records[f"K{k}/{known_set_name(draw[k])}"][metric] for draw in draws] for k in ks
        ]
    return out


def run(
    config: KnownClassesConfig,
    workdir: Path,
    *,
    overwrite: bool = False,
    spread_runs: bool = False,
) -> dict:
    """Train (or read back) every K x draw, measure the final models, write the table, the
    figure and results.json; return results.json's content."""
    num_classes = source_classes(config.train.data)
    draws, grid = training_grid(config, num_classes)  # a K too large fails before the workdir
    print_grid(grid)
    identity = grid_identity(config, ("ks", "draws"))
    with open_workdir(workdir, identity, outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        finished = run_grid(grid, workdir / "runs", EVALUATION, spread_runs=spread_runs)
        saved = read_outputs(workdir).get("runs", {})
        runs = {name: (workdir / "runs" / name, r) for name, r in finished.items()}
        records = measure_runs(runs, config.train.track, saved)
        ks = sorted(config.ks)
        values = series(records, draws, ks)
        every_k = np.repeat(ks, config.draws)
        correlations = {
            metric: metric_correlations(every_k, np.ravel(values[metric])) for metric in CORRELATED
        }
        summary = summarise_values(
            {
                name: {header: row[metric] for metric, header in METRICS.items()}
                for name, row in records.items()
            }
        )
        markdown = markdown_table(summary, row_header="K")
        data = resolve_benchmark(config.train.data)
        results = {
            "config": to_dict(config),
            "measured_with": to_dict(config.train.track),
            "dataset": data.dataset,
            "num_classes": num_classes,
            "draws": [{str(k): list(classes) for k, classes in d.items()} for d in draws],
            "runs": records,
            "series": values,
            "summary": summary,
            "correlations": correlations,
            "markdown": markdown,
        }
        opened.write_json(RESULTS, results)
        opened.write("known_classes.md", markdown)
        opened.save_figure("known_classes.png", _figure(results, config))
        return results


def _note(c: dict | None) -> str:
    if c is None:
        return "rank correlation with K undefined (a constant)"
    return (
        f"with K ({c['points']} runs): Spearman ρ = {c['spearman']:.2f} "
        f"(p = {c['spearman_p']:.1g}),\nKendall τ = {c['kendall']:.2f} (p = {c['kendall_p']:.1g})"
    )


def _figure(results: dict, config: KnownClassesConfig):
    s = {metric: np.array(v) for metric, v in results["series"].items()}
    jnd, auroc, norms = (
        "Jacobian norm difference (Eq. 20)",
        "AUROC (loss score, Eq. 22)",
        (r"mean $\|\partial f/\partial x\|_F$"),
    )
    panels = {
        jnd: {"JND": s["jnd"]},
        auroc: {"AUROC": s["auroc_loss"]},
        norms: {"known test": s["norm_known"], "unknown test": s["norm_unknown"]},
    }
    notes = {
        jnd: _note(results["correlations"]["jnd"]),
        auroc: _note(results["correlations"]["auroc_loss"]),
    }
    train = config.train
    title = (
        f"Fig. 6: {results['dataset']} ({results['num_classes']} classes), K known and the "
        f"rest unknown; {train.model.backbone}, {train.loss.loss}, {train.steps:,} steps; "
        f"{config.draws} random nested known sets per K"
    )
    return plot_paired_series(
        s["k"],
        panels,
        xlabel="number of known classes K",
        notes=notes,
        replicates="draws",
        title=title,
    )


def format_summary(results: dict) -> str:
    """The table per K, then the rank correlations of JND and AUROC with K."""
    lines = [results["markdown"].rstrip()]
    for metric, c in results["correlations"].items():
        if c is None:
            lines.append(f"{METRICS[metric]} vs K: undefined (a constant)")
            continue
        lines.append(
            f"{METRICS[metric]} vs K over {c['points']} runs: Spearman rho = "
            f"{c['spearman']:.3f} (p = {c['spearman_p']:.2g}), Kendall tau = "
            f"{c['kendall']:.3f} (p = {c['kendall_p']:.2g})"
        )
    return "\n".join(lines)


def plot_paired_series(
    xs: np.ndarray,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    *,
    xlabel: str,
    notes: Mapping[str, str],
    replicates: str,
    title: str,
) -> Figure:
    """Metrics against a count, one panel per y-axis label (Fig. 6: the JND, the AUROC and the
    mean norms against the number K of known classes): per series the mean over replicates as
    a line with a ± 1 std (ddof 1) band, and each replicate's values as a thin line (a
    replicate is paired across x, e.g. one draw's nested known sets).

    ``xs: [P]`` the x values, each one a tick; ``panels``: y label -> series label -> ``[P,
    S]`` values of S replicates (a panel of several series gets a legend of them);
    ``notes``: y label -> the panel's title (e.g. a correlation; none when missing);
    ``replicates``: what a replicate is, for the legend below the panels (e.g. "draws").
    """
    xs = np.asarray(xs)
    order = np.argsort(xs)
    xs = xs[order]
    fig = Figure(figsize=(0.6 + 4.4 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, series) in zip(axes, panels.items(), strict=True):
        for i, (name, values) in enumerate(series.items()):
            values = np.asarray(values, dtype=float)[order]
            colour = f"C{i}"
            mean = values.mean(axis=1)
            std = values.std(axis=1, ddof=1) if values.shape[1] > 1 else np.zeros_like(mean)
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
            ax.plot(xs, values, "-", color=colour, alpha=0.35, linewidth=0.8)
            ax.plot(xs, values, ".", color=colour, alpha=0.6, markersize=4)
            ax.plot(xs, mean, "o-", color=colour, markersize=5, linewidth=2, label=name)
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8, loc="best")
        if label in notes:
            ax.set_title(notes[label], fontsize=9)
        ax.set_xticks(xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # Empty artists: the legend of what the lines, bands and thin lines are.
    key = axes[0]
    legend = [
        key.plot([], [], "o-", color="grey", linewidth=2, markersize=5)[0],
        key.fill_between([], [], color="grey", alpha=0.3, linewidth=0),
        key.plot([], [], ".-", color="grey", alpha=0.5, linewidth=0.8)[0],
    ]
    fig.legend(
        legend,
        [f"mean over {replicates}", f"± 1 std over {replicates}", f"one of the {replicates}"],
        loc="outside lower center",
        ncol=3,
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(title, wrap=True, fontsize=10)
    return fig


COMMAND = Command(
    module=__name__,
    config=KnownClassesConfig,
    run=run,
    workdir="runs/known_classes",
    description=(
        "Fig. 6: Jacobian norm difference and AUROC against the number K of known classes "
        "(random known sets per K, the rest unknown), with rank correlations."
    ),
    outputs=OUTPUTS,
    runs="the runs (runs/K<k>/known<classes>)",
    summary=format_summary,
    grid=lambda config: training_grid(config, source_classes(config.train.data))[1],
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
