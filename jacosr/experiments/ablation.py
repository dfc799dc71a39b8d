"""Table III's ablation switchboard on digits: every row one config, mean ± std over seeds.

    python -m jacosr.experiments.ablation                      # 9 rows x 5 seeds x 2000 steps
    python -m jacosr.experiments.ablation --seeds 2 --steps 500 --workdir runs/quick

Runtime on 2 CPU cores: about 9 minutes for the default 45 runs (measured 529 s while other
jobs shared the cores; rows with the rotation task cost about twice as much). Runs live in
``<workdir>/runs/<row>/seed<i>``; re-running reads back finished runs and resumes the others.

The switches are Table III's columns, and a row is the set of switches that are on
(:func:`ablation_config` maps it to one :class:`~jacosr.train.TrainConfig`):

* OvR x N: the loss family. Neither: SCE. OvR: DOC (one-vs-rest sigmoids on linear logits).
  N: N-SCE (softmax on scaled cosines). OvR + N: normalised one-vs-rest, ``movr`` with both
  margins 0.
* m: the angular margins 0.5 of m-OvR (Eq. 24); needs OvR and N.
* W: weight decay 1e-3 (else 0).
* A: the paper's weak augmentation (4 px translation and horizontal flip; else none).
* S: the self-supervised rotation task with lambda_self 0.1 (else off).

The rows follow the paper's table layout as we understand it: starting from SCE, the loss
components are added one at a time (OvR, N, OvR + N, + m), then the training techniques
(+ W, + A, + S) on top of m-OvR. One control row the paper may not list is added: SCE with
W, A and S, which separates the loss's contribution from the techniques'. On 8x8 digits the
weak augmentation is harmful (flips are not label-preserving for digits and a 4 px shift moves
half the image), so the A rows measure that, not the paper's CIFAR setting.

Columns: closed-set accuracy, AUROC of the loss's own loss score (Eq. 22) and of MSP, and OSCR
of the loss score. Writes ``table.md``, ``table.json`` and ``table.png`` (per row, bars of the
four columns, mean ± std over seeds with seeds as dots: where each switch helps or hurts).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.experiments.grid import TABLE_FILES, seed_table, table_summary
from jacosr.train import PAPER_SELF_SUP, TrainConfig

COLUMNS = {
    "accuracy": ("accuracy",),
    "AUROC (loss score)": ("scores", "loss", "auroc"),
    "AUROC (MSP)": ("scores", "msp", "auroc"),
    "OSCR (loss score)": ("scores", "loss", "oscr"),
}
EVALUATION = EvalConfig(scores=("loss", "msp"))
PAPER_WEIGHT_DECAY = 1e-3


class Switches(NamedTuple):
    """One row of Table III: which components are on."""

    ovr: bool = False
    n: bool = False
    m: bool = False
    w: bool = False
    a: bool = False
    s: bool = False

    @property
    def name(self) -> str:
        """``"OvR+N+m"`` style: the switches that are on, or ``"SCE"`` when none is."""
        on = [label for label, value in zip(SWITCH_LABELS, self, strict=True) if value]
        return "+".join(on) or "SCE"


SWITCH_LABELS = ("OvR", "N", "m", "W", "A", "S")

ROWS = (
    Switches(),
    Switches(ovr=True),
    Switches(n=True),
    Switches(ovr=True, n=True),
    Switches(ovr=True, n=True, m=True),
    Switches(ovr=True, n=True, m=True, w=True),
    Switches(ovr=True, n=True, m=True, w=True, a=True),
    Switches(ovr=True, n=True, m=True, w=True, a=True, s=True),
    Switches(w=True, a=True, s=True),
)

_LOSS_FAMILY = {
    (False, False): "sce",
    (True, False): "doc",
    (False, True): "nsce",
    (True, True): "movr",
}


def ablation_config(switches: Switches, base: TrainConfig) -> TrainConfig:
    """The run for one row: ``base`` with its loss and techniques set by ``switches``.

    The loss's scale and margins (when m is on) come from ``base.loss``; W uses 1e-3, S the
    paper's lambda_self 0.1, A the ``weak`` augmentation.
    """
    if switches.m and not (switches.ovr and switches.n):
        raise ValueError(f"the margin m is defined for normalised OvR only; got {switches}")
    loss = dataclasses.replace(
        base.loss,
        loss=_LOSS_FAMILY[(switches.ovr, switches.n)],
        margin_pos=base.loss.margin_pos if switches.m else 0.0,
        margin_neg=base.loss.margin_neg if switches.m else 0.0,
    )
    return dataclasses.replace(
        base,
        loss=loss,
        weight_decay=PAPER_WEIGHT_DECAY if switches.w else 0.0,
        augment="weak" if switches.a else "none",
        self_sup=PAPER_SELF_SUP if switches.s else 0.0,
    )


@dataclass(frozen=True)
class AblationConfig:
    """The ablation.

    Attributes:
      train: the base run (data, model, steps, optimiser); each row sets the loss, weight
        decay, augmentation and rotation task, and the seed.
      rows: which rows of ``ROWS`` to run, by name (default: all, in the table's order).
      seeds: each row is trained with seeds 0..seeds-1.
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    rows: tuple[str, ...] = tuple(row.name for row in ROWS)
    seeds: int = 5


def selected_rows(names: tuple[str, ...]) -> list[Switches]:
    """The rows called ``names``; an unknown name lists the valid ones."""
    by_name = {row.name: row for row in ROWS}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"unknown rows {unknown}; valid rows are: {', '.join(by_name)}")
    return [by_name[name] for name in names]


def run(config: AblationConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Run the chosen rows into ``workdir/runs``, write the table; return it."""
    chosen = selected_rows(config.rows)
    return seed_table(
        config,
        workdir,
        {row.name: ablation_config(row, config.train) for row in chosen},
        COLUMNS,
        EVALUATION,
        title="ablation, ",
        row_header="row",
        labels={row.name: ["✓" if on else "" for on in row] for row in chosen},
        label_headers=SWITCH_LABELS,
        overwrite=overwrite,
    )


COMMAND = Command(
    module=__name__,
    config=AblationConfig,
    run=run,
    workdir="runs/ablation",
    description="Table III's ablation (OvR, N, m, W, A, S) on digits, mean ± std over seeds.",
    outputs=TABLE_FILES,
    runs="the runs (runs/)",
    summary=table_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
