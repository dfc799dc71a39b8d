"""Fig. 12: the Jacobian norm difference against the AUROC, one point per trained model.

    python -m jacosr.experiments.jnd_auroc          # digits: 4 Table III rows x 3 known sets
    python -m jacosr.experiments.jnd_auroc --runs runs/ablation runs/losses_table
    python -m jacosr.experiments.jnd_auroc --benchmark cifar10 --draws 5 --backbone wrn16_4 \\
        --embed-dim 256 --steps 20000 --workdir runs/jnd_auroc-cifar10   # the paper's (a GPU job)

The default trains 12 runs of 2,000 steps of the digits MLP (Ours carries the rotation task,
twice the images per step), then measures 12 final models exactly; a re-run that finds
everything finished and measured trains and measures nothing (runtimes, also of ``--runs`` on
the ablation's 70 digits runs: experiments/README.md). ``--draws 5`` is the paper's five
known sets per method.

What it does. Every point is one trained model, a method on one known set. By default the command
trains ``--methods`` (rows of Table III, :data:`jacosr.recipe.ROWS`; default m-OvR, f = N-SCE with
weight decay, g = m-OvR with weight decay, Ours = all six components) on ``--draws`` known sets: on
a ``--benchmark`` its standard splits 0..draws-1 (the paper's "protocol of [13]"), on any other data
set random sets of as many classes as ``--known`` has (digits: 6 of the 10 digits, as CIFAR10's six
known classes), the same sets for every method (:func:`jacosr.data.known_sets.draw_known_sets`). The
runs live in ``<workdir>/runs/<method>/<data set>/known<classes>`` (``.../split<i>`` on a
benchmark), the layout of the ablation's workdir. With ``--runs DIR ...`` it trains nothing and
measures instead every finished run (one with results.json) found under those folders: the grid runs
of a losses_table, ablation, protocol_a, sensitivity or dynamics workdir, or single training runs.
Those folders are only read (:func:`jacosr.runs.collect` and :func:`jacosr.runs.load_run`, which
takes no lock and writes nothing). A found run's method is the folder right below its experiment's
``runs/`` (the ablation's row, the loss table's loss); a run outside such a layout is named by what
it trains (:func:`jacosr.recipe.run_name`, e.g. ``movr+W``).

Each model's final state is measured as :mod:`jacosr.tracking` measures a tracked step
(:func:`jacosr.tracking.measure`, through :func:`jacosr.runs.measure_runs`, with the
``--track-estimator``, ``--track-probes``, ``--track-samples`` and ``--track-seed`` settings:
exact norms of every digits test image):
the JND (Eq. 20) is the mean ||df/dx||_F of the unknown test samples minus that of the known
ones, the AUROC the loss score's (Eq. 22, the paper's detector and "AUC"). Measurements are
kept in results.json with each run's identity (its config and the SHA-256 of its data), so a
re-run measures only runs it has not measured in that state; finished training runs are read
back, never trained again.

Writes ``results.json`` (per run: method, data set, known classes, the measured row; per data
set: the Pearson and Spearman correlation of JND and AUROC over all its models and per
method, with p-values, None below 3 models), ``jnd_auroc.md`` (per method and data set, mean
± std of JND, AUROC and accuracy; printed with the correlations) and ``jnd_auroc.png``: one
panel per data set, JND on x, AUROC on y, one colour and marker per method, every model a
marker and each method's mean ± 1 std as a cross, the correlations under the panel's title.

What the paper's Fig. 12 shows (WRN-16-4, per benchmark, 14 ablation rows x 5 splits): a
positive correlation between JND and AUROC, strong on CIFAR10 and TinyImageNet, non-linear on
CIFAR+10/+50, weak on SVHN (AUROC saturated), and "the all combined model" (Ours) has the
largest JND. The default leaves out Baseline (SCE without weight decay): its unnormalised
embedding puts its JND far from the normalised rows', where one distant row would carry the
correlation and squeeze the others on the axis. What the default and ``--runs`` on the
ablation's workdir measure on digits is in the README ("The paper's theory on digits", the
Fig. 12 row).

Readings: the paper's methods are Table III's rows (Fig. 12 is in its ablation section and
says "the all combined model"), so ``--methods`` takes row labels; its "different known set"
is one of the five standard splits of each benchmark, which digits lacks, so random known sets
of the same size stand in. SCE's embedding (Baseline) is not normalised, so its norms and JND
are on another scale than the normalised rows' (the paper plots them together); the AUROC is
scale-free.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jacosr.config import from_dict, require, to_dict
from jacosr.data import NUM_SPLITS, DataConfig
from jacosr.data.known_sets import draw_known_sets, known_set_name, source_classes, with_known
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import grid_identity, print_grid, run_grid, split_grid
from jacosr.metrics import metric_correlations
from jacosr.plots import class_colours
from jacosr.recipe import ROWS, ResolvedTrainConfig, TrainConfig, ablation_config, resolve, run_name
from jacosr.runs import RESULTS, collect, measure_runs, read_outputs
from jacosr.tables import markdown_table, summarise_values
from jacosr.workdir import MARKER, open_workdir

OUTPUTS = (RESULTS, "jnd_auroc.md", "jnd_auroc.png")
EVALUATION = EvalConfig(scores=("loss",))
"""Each trained run's own evaluation (its results.json); the figure uses the measured rows."""
EXTENT = ("methods", "draws", "runs")
"""The config fields that only choose which models are measured: left out of the workdir's
identity (:func:`jacosr.grids.grid_identity`), so more methods or draws add runs."""
COLUMNS = {"JND": "jnd", "AUROC (loss score)": "auroc_loss", "accuracy": "accuracy"}
"""The summary table's columns: header -> key of a measured row (:func:`jacosr.tracking.
measure`)."""
METHODS = {row.label: row for row in ROWS}
"""The methods ``--methods`` trains: Table III's rows by label."""


@dataclass(frozen=True)
class JndAurocConfig:
    """Fig. 12: JND against AUROC, one point per trained model (method x known set).

    Attributes:
      train: the base run (default: digits, the MLP, 2,000 steps, no known-val as in
        Protocol A); each method sets the loss and the techniques (Table III's switches),
        each known set the classes. Every final model (also with --runs) is measured
        with its tracking settings: the estimator (--track-estimator), the probes per
        sample (--track-probes), the sample cap (--track-samples) and the seed of the
        samples and probes (--track-seed).
      methods: Table III rows to train (Baseline, m-OvR, a-k, Ours; see
        jacosr.experiments.ablation), one colour each. Ignored with --runs.
      draws: known sets per method: on a --benchmark its standard splits 0..draws-1 (at
        most 5); otherwise random sets of as many classes as --known has, drawn from the data
        set's classes with --draw-seed, the rest unknown.
      draw_seed: seed of the random known sets.
      runs: measure the finished runs (with results.json) found under these folders instead
        of training (e.g. the workdirs of losses_table, ablation, protocol_a); they are only
        read.

    Refused when built (``ValueError`` naming the flag): no method or an unknown one, fewer
    than 1 draw, more draws than a benchmark's 5 splits, a negative draw seed.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, data=DataConfig(val_fraction=0.0))
    )
    methods: tuple[str, ...] = ("m-OvR", "f", "g", "Ours")
    draws: int = 3
    draw_seed: int = 0
    runs: tuple[Path, ...] = ()

    def __post_init__(self):
        valid = ", ".join(METHODS)
        require(len(self.methods) > 0, "--methods", f"one or more of {valid}", self.methods)
        for name in self.methods:
            require(name in METHODS, "--methods", f"names out of {valid}", name)
        require(len(set(self.methods)) == len(self.methods), "--methods", "distinct", self.methods)
        require(self.draws >= 1, "--draws", ">= 1", self.draws)
        if self.train.data.benchmark is not None:
            require(
                self.draws <= NUM_SPLITS,
                "--draws",
                f"at most {NUM_SPLITS} on a --benchmark (its standard splits)",
                self.draws,
            )
        require(self.draw_seed >= 0, "--draw-seed", ">= 0", self.draw_seed)


def training_grid(config: JndAurocConfig) -> dict[str, ResolvedTrainConfig]:
    """``<method>/<data set>/known<classes>`` (``<method>/<benchmark>/split<i>`` on a
    benchmark) -> the training config of that run (none with ``--runs``)."""
    if config.runs:
        return {}
    rows = [METHODS[name] for name in config.methods]

    def rows_of(base: ResolvedTrainConfig) -> dict[str, ResolvedTrainConfig]:
        return {row.label: ablation_config(row.switches, base) for row in rows}

    data = config.train.data
    if data.benchmark is not None:
        splits = range(config.draws)
        return split_grid(rows_of, config.train, [data.benchmark], splits)
    size = len(data.known)
    try:
        draws = draw_known_sets(source_classes(data), [size], config.draws, config.draw_seed)
    except ValueError as err:
        raise ValueError(f"--known, --draws: {err}") from None
    grid = {}
    for row, run in rows_of(resolve(config.train)).items():
        for draw in draws:
            known = draw[size]
            name = f"{row}/{data.dataset}/{known_set_name(known)}"
            grid[name] = dataclasses.replace(run, data=with_known(data, known))
    return grid


def method_of(run: Path, config: dict) -> str:
    """The method a finished run stands for: the folder right below the ``runs/`` of the
    experiment workdir that holds it (a folder with jacosr's marker), e.g. ``Ours`` for
    ``runs/ablation/runs/Ours/digits/seed0``; for a run outside such a layout, what it trains
    (:func:`jacosr.recipe.run_name` of its resolved ``config``)."""
    run = Path(run).resolve()
    for folder in run.parents:
        if folder.name == "runs" and (folder.parent / MARKER).exists():
            return run.relative_to(folder).parts[0]
    return run_name(from_dict(ResolvedTrainConfig, config))


def panels(records: Mapping[str, dict]) -> dict[str, dict]:
    """Per data set: ``{"methods": {method: [run names]}, "all": metric_correlations(JND, AUROC),
    "per_method": {method: metric_correlations(...)}}``; data sets in order of first run, methods in
    Table III's order, then the others in order of first run."""
    out: dict[str, dict] = {}
    for name, record in records.items():
        panel = out.setdefault(record["dataset"], {"methods": {}})
        panel["methods"].setdefault(record["method"], []).append(name)
    rank = {label: i for i, label in enumerate(METHODS)}
    for panel in out.values():
        order = sorted(panel["methods"], key=lambda m: rank.get(m, len(rank)))  # stable
        panel["methods"] = {m: panel["methods"][m] for m in order}

    def pair(names: list[str]) -> dict | None:
        return metric_correlations(
            [records[n]["jnd"] for n in names], [records[n]["auroc_loss"] for n in names]
        )

    for panel in out.values():
        every = [n for names in panel["methods"].values() for n in names]
        panel["all"] = pair(every)
        panel["per_method"] = {m: pair(names) for m, names in panel["methods"].items()}
    return out


def _table(records: Mapping[str, dict]) -> str:
    """Mean ± std of JND, AUROC and accuracy per method and data set, in Markdown."""
    # summarise_values groups the runs by what precedes the last "/" of their names
    grouped = {
        f"{r['method']} ({r['dataset']})/{i}": {header: r[key] for header, key in COLUMNS.items()}
        for i, r in enumerate(records.values())
    }
    return markdown_table(summarise_values(grouped), row_header="method (data set)")


def _corr_text(c: dict | None) -> str:
    if c is None:
        return "undefined (fewer than 3 models or a constant)"
    return f"Pearson r = {c['pearson']:.3f}, Spearman rho = {c['spearman']:.3f}"


def run(
    config: JndAurocConfig, workdir: Path, *, overwrite: bool = False, spread_runs: bool = False
) -> dict:
    """Train (or read back) the grid, or find the runs of ``--runs``; measure every final
    model; write the table, results.json and the figure; return results.json's content."""
    grid = training_grid(config)
    if grid:
        print_grid(grid)
    found = collect(config.runs) if config.runs else {}  # before the workdir: a bad path fails
    identity = grid_identity(config, EXTENT)
    with open_workdir(workdir, identity, outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        if grid:
            finished = run_grid(grid, workdir / "runs", EVALUATION, spread_runs=spread_runs)
            runs = {name: (workdir / "runs" / name, r) for name, r in finished.items()}
        else:
            runs = {label: (Path(label), r) for label, r in found.items()}
        saved = read_outputs(workdir).get("runs", {})
        records = measure_runs(runs, config.train.track, saved)
        for name, record in records.items():
            record["method"] = method_of(runs[name][0], runs[name][1].config)
        by_panel = panels(records)
        markdown = _table(records)
        results = {
            "config": to_dict(config),
            "measured_with": to_dict(config.train.track),
            "runs": records,
            "panels": by_panel,
            "markdown": markdown,
        }
        opened.write_json(RESULTS, results)
        opened.write("jnd_auroc.md", markdown)
        opened.save_figure("jnd_auroc.png", _figure(records, by_panel))
        return results


def _label(method: str) -> str:
    """A method's legend label: a Table III row with its switches (``g: OvR+N+m+W``)."""
    return METHODS[method].description if method in METHODS else method


def _figure(records: Mapping[str, dict], by_panel: Mapping[str, dict]):
    points = {
        dataset: {
            _label(method): (
                np.array([records[n]["jnd"] for n in names]),
                np.array([records[n]["auroc_loss"] for n in names]),
            )
            for method, names in panel["methods"].items()
        }
        for dataset, panel in by_panel.items()
    }
    notes = {}
    for dataset, panel in by_panel.items():
        c, n = panel["all"], sum(len(v) for v in panel["methods"].values())
        notes[dataset] = (
            f"{n} models: Pearson r = {c['pearson']:.2f}, Spearman ρ = {c['spearman']:.2f}"
            if c
            else f"{n} models"
        )
    return plot_grouped_scatter(
        points,
        xlabel="Jacobian norm difference (Eq. 20)",
        ylabel="AUROC (loss score, Eq. 22)",
        notes=notes,
        title="Fig. 12: JND against AUROC, one point per model (method x known set); "
        "crosses: mean ± 1 std per method",
    )


def format_summary(results: dict) -> str:
    """The table, then per data set the correlations over all models and per method."""
    lines = [results["markdown"].rstrip()]
    for dataset, panel in results["panels"].items():
        models = sum(len(v) for v in panel["methods"].values())
        lines.append(f"{dataset}, JND vs AUROC over {models} models: {_corr_text(panel['all'])}")
        for method, c in panel["per_method"].items():
            lines.append(f"  {method}: {_corr_text(c)}")
    return "\n".join(lines)


def plot_grouped_scatter(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    xlabel: str,
    ylabel: str,
    notes: Mapping[str, str],
    title: str,
) -> Figure:
    """One scatter per panel, one colour and marker per group (Fig. 12: a panel per data set,
    a group per method, a point per trained model): every point a marker, each group's mean a
    cross with ± 1 std (ddof 1) error bars in both coordinates (none for a group of one point).

    ``panels``: panel title -> group label -> ``(x [N], y [N])``; a group keeps its colour in
    every panel. ``notes``: panel title -> a line under the title (e.g. the correlations),
    where it hides no point. One legend of the groups below the panels.
    """
    groups = list(dict.fromkeys(g for panel in panels.values() for g in panel))
    colour = dict(zip(groups, class_colours(len(groups)), strict=True))
    markers = "osD^v<>p"  # with tab20's paired hues, the shape tells neighbours apart
    marker = {g: markers[i % len(markers)] for i, g in enumerate(groups)}
    fig = Figure(figsize=(1.0 + 4.8 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, (name, panel) in zip(axes, panels.items(), strict=True):
        for group, (x, y) in panel.items():
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            (handles[group],) = ax.plot(
                x,
                y,
                marker[group],
                linestyle="none",
                color=colour[group],
                alpha=0.7,
                markersize=6,
                markeredgecolor="black",
                markeredgewidth=0.4,
                label=group,
            )
            spread = len(x) > 1
            ax.errorbar(
                x.mean(),
                y.mean(),
                xerr=x.std(ddof=1) if spread else None,
                yerr=y.std(ddof=1) if spread else None,
                fmt="X",
                color=colour[group],
                markersize=10,
                markeredgecolor="black",
                markeredgewidth=0.6,
                capsize=3,
                linewidth=1.2,
            )
        ax.set_title(f"{name}\n{notes[name]}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.legend(
        [handles[g] for g in groups],
        groups,
        loc="outside lower center",
        ncol=min(len(groups), (2 if len(groups) <= 6 else 3) * len(panels)),
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(title, wrap=True, fontsize=10)
    return fig


COMMAND = Command(
    module=__name__,
    config=JndAurocConfig,
    run=run,
    workdir="runs/jnd_auroc",
    description=(
        "Fig. 12: Jacobian norm difference against AUROC, one point per trained model "
        "(Table III row x known set, or the finished runs of --runs), with correlations."
    ),
    outputs=OUTPUTS,
    runs="the runs it trains (runs/<method>/<data set>/<known set>)",
    summary=format_summary,
    grid=training_grid,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
