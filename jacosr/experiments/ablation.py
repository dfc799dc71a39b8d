"""Table III's ablation: the paper's fourteen rows, each one config, AUROC as mean ± std over
the five standard splits of each benchmark (or over seeds on digits).

    python -m jacosr.experiments.ablation                  # digits: 14 rows x 5 seeds x 2000 steps
    python -m jacosr.experiments.ablation --seeds 2 --steps 500 --workdir runs/quick
    python -m jacosr.experiments.ablation --benchmarks cifar10 cifar+10 cifar+50 svhn \
        tinyimagenet --backbone wrn16_4 --embed-dim 256 --steps 20000   # the paper's (a GPU job)

The default trains 70 runs of the digits MLP (14 rows x 5 seeds, 2000 steps each); a row with the
rotation task passes twice the images per step. ``--seeds 2 --steps 500`` is a quick check.
``experiments/table3_ablation_wrn16_4.sh`` is the paper's setting (WRN-16-4, 20k steps, five
benchmarks x five splits: 350 runs). The command prints the grid's size before it trains
(``grid: 70 runs, ...``); ``python benchmarks/gpu_cost.py ablation <the same flags>`` prints its
expected time on one H100. Runtimes: experiments/README.md. Runs live in
``<workdir>/runs/<row>/<column>/<replicate>`` (``split<i>`` on benchmarks, ``split<i>-seed<s>`` with
--seeds, ``seed<s>`` on digits, named by the seed); re-running reads back finished runs and resumes
the others. The workdir's identity (``config.json``) leaves out --rows, --benchmarks, --splits and
--seeds, which only choose the runs: asking for more adds runs beside the finished ones.

The switches are Table III's columns; a row is the set that is on
(:func:`jacosr.recipe.ablation_config` maps it to a :class:`~jacosr.recipe.ResolvedTrainConfig`;
"SCE substitutes in the absence of m-OvR"):

* OvR x N: the loss. Neither: SCE. N: N-SCE (softmax on scaled cosines). OvR: DOC
  (one-vs-rest sigmoids on linear logits). OvR + N: normalised one-vs-rest, ``movr``.
* m: the angular margins 0.5 of m-OvR (Eq. 24); needs OvR and N (``movr`` with margins 0
  without it).
* W, A, S: switched by :func:`jacosr.recipe.switch_techniques`, the rule the dynamics
  figures and the sensitivity sweeps share: on is the base run's own value where it has the
  technique on, else the paper's for the data set (:func:`jacosr.recipe.paper_techniques`);
  off is 0 or ``none``.
* W: weight decay, the paper's 1e-3 (else 0).
* A: the paper's weak augmentation for the data (4 px translation and horizontal flip; the
  translation alone, ``translate``, on handwritten digits (digits, mnist) and on data sets of
  your own prepared with ``--no-flip``; else none).
* S: the self-supervised rotation task with lambda_self 0.1 (else off).

The rows (:data:`jacosr.recipe.ROWS`), labelled and grouped as in the paper: Baseline (SCE) and
m-OvR (OvR+N+m); "one out": a (no OvR: N-SCE with W, A, S), b (no N: OvR with W, A, S, and no m,
which needs unit vectors), c (no W), d (no A); "w/o A+S": e (SCE+W), f (N-SCE+W), g
(m-OvR+W); "w/o S": h (SCE+W+A), i (N-SCE+W+A), j (m-OvR+W+A, which is also the one-out row
without S: "the third block ('one out') ... along with the model-j compares each component by
removing one of them"); "on m": k (all but m); Ours (all six). Rows a and b are garbled in the
paper's text; the reading above is the one that makes the one-out block remove each
component once: c, d, j and k remove W, A, S and m, and the columns run OvR, N, m, W, A, S, so
a and b remove OvR and N.

Replicates: on ``--benchmarks`` (Protocol A: no known-val, every known training image trained
on), one model per standard split (``--splits``), as the paper's "averages from 5 random
splits"; without, the run's own data (digits) with seeds 0..``--seeds``-1 standing in for the
splits. On 8x8 digits a 4 px shift moves half the image, so the A rows measure that, not the
paper's CIFAR setting.

What to expect: in the paper (WRN-16-4, Protocol A) every block says one thing: m-OvR beats
SCE without any technique (Avg. AUROC 83.9 vs 80.7), each one-out row and k fall below Ours
(90.9), and with A and W (j, 89.6) m-OvR gains more than SCE (h, 87.5) or N-SCE (i, 86.9).
What the default measures on digits, and where it departs from the paper, is in the README
("Table III on digits").

Writes ``table.md`` with two tables: the paper's layout (per row its block and switches, the
AUROC of the loss score (Eq. 22, margin kept) per benchmark or data set, mean ± std, and with
several benchmarks the paper's Avg.: the mean of the means ± the mean of the stds), then
per column closed-set accuracy, AUROC of MSP and OSCR of the loss score; ``table.json``
(both, with every replicate's value) and ``table.png``: per row, the AUROC bars (mean ± std,
replicates as dots), from which the effect of each switch reads off row by row.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jacosr.config import require, to_dict
from jacosr.data import DataConfig
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import grid_identity, print_grid, run_grid, seed_grid, split_grid
from jacosr.plots import plot_row_bars
from jacosr.recipe import (
    ROWS,
    SWITCH_LABELS,
    ResolvedTrainConfig,
    Row,
    TrainConfig,
    ablation_config,
    resolve,
)
from jacosr.tables import (
    TABLE_FILES,
    markdown_table,
    summarise,
    summarise_columns,
    table_summary,
    write_table,
)
from jacosr.workdir import open_workdir

SCORE = "loss"
"""The tables' unknown score: the loss at the pseudo label, margin kept (Eq. 22)."""
EVALUATION = EvalConfig(scores=(SCORE, "msp"))
AUROC = {"AUROC": ("scores", SCORE, "auroc")}
DETAILS = {
    "ACC": ("accuracy",),
    "AUROC (MSP)": ("scores", "msp", "auroc"),
    "OSCR": ("scores", SCORE, "oscr"),
}
DIGITS_SEEDS = 5


@dataclass(frozen=True)
class AblationConfig:
    """The ablation.

    Attributes:
      train: the base run (data, model, steps, optimiser); each row sets the loss, weight
        decay, augmentation and rotation task. Table III is evaluated under Protocol A, which
        has no known-val: val_fraction 0 trains on every known training image.
      rows: which rows of Table III to run, by the paper's labels (default: all, in the
        table's order).
      benchmarks: Protocol A benchmarks to run every row on (the table's columns), each on
        the standard splits of --splits; none (the default): the run's own data (digits),
        over seeds.
      splits: the standard splits (0..4) of each benchmark.
      seeds: training seeds --seed..--seed+seeds-1 per split or data set; unset: 5 on the
        run's own data, standing in for the five splits, and one run per split (at --seed) on
        benchmarks.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2000, data=DataConfig(val_fraction=0.0))
    )
    rows: tuple[str, ...] = tuple(row.label for row in ROWS)
    benchmarks: tuple[str, ...] = ()
    splits: tuple[int, ...] = (0, 1, 2, 3, 4)
    seeds: int | None = None

    def __post_init__(self):
        valid = ", ".join(row.label for row in ROWS)
        require(len(self.rows) > 0, "--rows", f"at least one of {valid}", self.rows)
        for name in self.rows:
            require(name in (row.label for row in ROWS), "--rows", f"names out of {valid}", name)
        require(self.seeds is None or self.seeds >= 1, "--seeds", "unset or >= 1", self.seeds)


def selected_rows(labels: tuple[str, ...]) -> list[Row]:
    """The rows labelled ``labels``, in that order."""
    by_label = {row.label: row for row in ROWS}
    return [by_label[label] for label in labels]


def ablation_grid(config: AblationConfig) -> dict[str, ResolvedTrainConfig]:
    """``<row>/<column>/<replicate>`` -> the training config of that run."""
    chosen = selected_rows(config.rows)

    def rows_of(base: ResolvedTrainConfig) -> dict[str, ResolvedTrainConfig]:
        return {row.label: ablation_config(row.switches, base) for row in chosen}

    if config.benchmarks:
        return split_grid(
            rows_of, config.train, config.benchmarks, config.splits, seeds=config.seeds
        )
    data = config.train.data
    column = (
        data.dataset if data.benchmark is None else f"{data.benchmark}-split{data.protocol_split}"
    )
    rows = {f"{label}/{column}": run for label, run in rows_of(resolve(config.train)).items()}
    return seed_grid(rows, config.seeds or DIGITS_SEEDS)


def _flatten(table: dict[str, dict[str, dict]], metrics: dict) -> dict[str, dict[str, dict]]:
    """``row -> column -> metric -> cell`` to ``row -> "<column> <metric>" -> cell`` (just
    ``<column>`` for a single metric)."""
    one = len(metrics) == 1
    return {
        row: {
            (column if one else f"{column} {metric}"): cell
            for column, cells in columns.items()
            for metric, cell in cells.items()
        }
        for row, columns in table.items()
    }


def with_average(summary: dict[str, dict[str, dict]]) -> dict[str, dict[str, dict]]:
    """Each row with the paper's "Avg." cell when it has several columns: the mean of the
    columns' means ± the mean of their standard deviations (Table III: Baseline 80.7 ± 1.7
    from 76.5 ± 2.5, 84.7 ± 1.2, 83.9 ± 1.2, 92.1 ± 1.3, 66.1 ± 2.1); its values are the
    columns' means."""
    out = {}
    for row, cells in summary.items():
        out[row] = dict(cells)
        if len(cells) > 1:
            means = [cell["mean"] for cell in cells.values()]
            stds = [cell["std"] for cell in cells.values()]
            out[row]["Avg."] = {
                "mean": float(np.mean(means)),
                "std": float(np.mean(stds)),
                "values": means,
            }
    return out


def run(
    config: AblationConfig, workdir: Path, *, overwrite: bool = False, spread_runs: bool = False
) -> dict:
    """Run the chosen rows into ``workdir/runs``, write the tables; return them."""
    configs = ablation_grid(config)
    print_grid(configs)
    identity = grid_identity(config, ("rows", "benchmarks", "splits", "seeds"))
    with open_workdir(workdir, identity, outputs=TABLE_FILES, overwrite=overwrite) as opened:
        workdir = opened.path
        results = run_grid(configs, workdir / "runs", EVALUATION, spread_runs=spread_runs)
        summary = _flatten(summarise_columns(summarise(results, AUROC)), AUROC)
        table = with_average(summary)
        details = _flatten(summarise_columns(summarise(results, DETAILS)), DETAILS)
        chosen = selected_rows(config.rows)
        labels = {
            row.label: [row.block, *["✓" if on else "" for on in row.switches]] for row in chosen
        }
        markdown = (
            markdown_table(
                table, row_header="model", labels=labels, label_headers=["block", *SWITCH_LABELS]
            )
            + "\n"
            + markdown_table(details, row_header="model")
        )
        replicates = "splits" if config.benchmarks else "seeds"
        columns = ", ".join(next(iter(summary.values())))
        title = f"Table III: AUROC of the loss score, {config.train.model.backbone} on {columns}"
        meta = {
            "config": to_dict(config),
            "evaluation": to_dict(EVALUATION),
            "splits": {name: r.split for name, r in results.items()},
            "details": details,
        }
        described = {row.description: summary[row.label] for row in chosen}
        figure = plot_row_bars(described, title=title, metric="AUROC", replicates=replicates)
        write_table(opened, table, markdown, figure, meta)
        return {"summary": table, "details": details, "markdown": markdown}


COMMAND = Command(
    module=__name__,
    config=AblationConfig,
    run=run,
    workdir="runs/ablation",
    description=(
        "Table III's ablation (rows Baseline, m-OvR, a-k, Ours over OvR, N, m, W, A, S): AUROC "
        "mean ± std over the standard splits of each benchmark, or over seeds on digits."
    ),
    outputs=TABLE_FILES,
    runs="the runs (runs/)",
    summary=table_summary,
    grid=ablation_grid,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
