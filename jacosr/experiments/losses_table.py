"""Closed-set accuracy and AUROC of every loss on digits, mean ± std over seeds.

    python -m jacosr.experiments.losses_table                  # 6 losses x 5 seeds x 2000 steps
    python -m jacosr.experiments.losses_table --seeds 2 --steps 500 --workdir runs/quick

Runtime: experiments/README.md. Every run has its own workdir under
``<workdir>/runs/<loss>/seed<s>``; re-running the command reads back finished runs and resumes
unfinished ones. The seeds are ``--seed`` .. ``--seed`` + ``--seeds`` - 1 (0..4 by default),
each run named by its seed; the workdir's identity (``config.json``) leaves out ``--seeds`` and
``--losses``, so asking for more seeds or losses adds runs next to the finished ones (fewer
tabulate a subset), while another base run or ``--seed`` is refused as another experiment.

Rows: SCE, N-SCE, DOC, m-OvR, GCPL and RPL (see :mod:`jacosr.losses`), each with the base
run's other settings (default: digits, known classes 0..5, the MLP, the paper's optimiser,
weight decay 1e-3, no augmentation, no rotation task). Columns: closed-set accuracy on
known-test, and the AUROC of known-test vs unknown-test for the loss's own loss score (Eq. 22)
and for MSP. Seeds vary initialisation and batch order; the split is fixed. What the default
measures is in the README ("Losses on digits").

Writes ``table.md`` (the Markdown table), ``table.json`` (per-seed values too) and
``table.png``: for each loss, bars of the three columns (mean ± std over seeds, seeds as dots),
so a glance shows whether a loss's detection AUROC stands out from the others' and how much
of a difference the seeds make.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.grids import seed_grid
from jacosr.losses import loss_spec
from jacosr.recipe import ResolvedTrainConfig, TrainConfig, resolve
from jacosr.tables import TABLE_FILES, seed_table, table_summary

COLUMNS = {
    "accuracy": ("accuracy",),
    "AUROC (loss score)": ("scores", "loss", "auroc"),
    "AUROC (MSP)": ("scores", "msp", "auroc"),
}
EVALUATION = EvalConfig(scores=("loss", "msp"))


@dataclass(frozen=True)
class LossesTableConfig:
    """The loss table.

    Attributes:
      train: the base run; each row replaces the loss name and the seed (the other loss
        hyper-parameters, e.g. --scale and --margin-pos, apply to the losses that have them).
        Its seed is the first of the seeds.
      losses: the rows, loss names (see ``jacosr.losses.LOSSES``).
      seeds: each loss is trained with seeds seed..seed+seeds-1 (--seed: the base run's).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    losses: tuple[str, ...] = ("sce", "nsce", "doc", "movr", "gcpl", "rpl")
    seeds: int = 5


def rows(config: LossesTableConfig) -> dict[str, ResolvedTrainConfig]:
    """Loss name -> the (resolved) base run with that loss."""
    for name in config.losses:
        loss_spec(name)  # an unknown name fails before any training
    base = resolve(config.train)
    return {
        name: dataclasses.replace(base, loss=dataclasses.replace(base.loss, loss=name))
        for name in config.losses
    }


def run(
    config: LossesTableConfig, workdir: Path, *, overwrite: bool = False, spread_runs: bool = False
) -> dict:
    """Run the grid into ``workdir/runs``, write the table; return summary and Markdown."""
    return seed_table(
        config,
        workdir,
        rows(config),
        COLUMNS,
        EVALUATION,
        title="",
        row_header="loss",
        extent=("seeds", "losses"),
        overwrite=overwrite,
        spread_runs=spread_runs,
    )


COMMAND = Command(
    module=__name__,
    config=LossesTableConfig,
    run=run,
    workdir="runs/losses_table",
    description="Accuracy and AUROC (loss score, MSP) of every loss, mean ± std over seeds.",
    outputs=TABLE_FILES,
    runs="the runs (runs/)",
    summary=table_summary,
    grid=lambda config: seed_grid(rows(config), config.seeds),
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
