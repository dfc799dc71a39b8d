"""Protocol A (the paper's Table I): one model per standard split, mean ± std over splits.

    python -m jacosr.experiments.protocol_a --benchmarks cifar10 --backbone vgg32 --loss movr \
        --splits 0 1 2 3 4
    python -m jacosr.experiments.protocol_a --benchmarks mnist svhn cifar10 cifar+10 cifar+50 \
        tinyimagenet

Needs the prepared data sets (``python -m jacosr.data.prepare cifar10 ...``; see the README).
Runtime: the paper's 20,000 steps of VGG32 per split are a GPU job (see benchmarks/gpu.sh for
the time per 1k steps); on 2 CPU cores one such run takes hours. Every split trains in its own
workdir ``<workdir>/runs/<benchmark>/split<i>`` with checkpoints; re-running the command reads
back finished splits and resumes unfinished ones.

Defaults are the paper's: VGG32, m-OvR (T = 32, m = 0.5), SGD with momentum 0.9, cosine LR
0.1 -> 1e-5, weight decay 1e-3, batch 128, 20k steps, weak augmentation and the rotation task
(lambda_self 0.1). The standard splits come verbatim from :mod:`jacosr.data.splits`.

Writes ``table.md`` laid out like Table I (one row per method and score, for every benchmark
its ACC, AUROC and OSCR as mean ± std over the splits), ``table.json`` (per-split values and
the class lists of every split) and ``table.png`` (the same numbers as bars, splits as dots).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from jacosr.config import to_dict
from jacosr.data import BENCHMARKS, protocol_a_config
from jacosr.evaluate import EvalConfig
from jacosr.experiments.command import Command
from jacosr.experiments.grid import (
    TABLE_FILES,
    markdown_table,
    run_grid,
    summarise,
    table_summary,
    write_table,
)
from jacosr.models import ModelConfig
from jacosr.plots import plot_summary
from jacosr.train import TrainConfig
from jacosr.workdir import open_workdir


@dataclass(frozen=True)
class ProtocolAConfig:
    """Protocol A.

    Attributes:
      train: the run trained on every split (its data fields other than data_dir,
        split_seed and val_fraction are replaced by the benchmark's split).
      benchmarks: Protocol A benchmarks, the table's column groups (see
        ``jacosr.data.BENCHMARKS``).
      splits: which of the five standard splits (0..4) to train on.
      scores: unknown scores to report (rows of the table; see ``jacosr.scores.SCORES``).
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(model=ModelConfig(backbone="vgg32"))
    )
    benchmarks: tuple[str, ...] = ("cifar10",)
    splits: tuple[int, ...] = (0, 1, 2, 3, 4)
    scores: tuple[str, ...] = ("loss", "msp")


def split_configs(config: ProtocolAConfig) -> dict[str, TrainConfig]:
    """``<benchmark>/split<i>`` -> the training config of that standard split."""
    if not config.splits:
        raise ValueError("no splits given; choose some of 0 1 2 3 4 with --splits")
    data = config.train.data
    return {
        f"{benchmark}/split{split}": dataclasses.replace(
            config.train,
            data=protocol_a_config(
                benchmark,
                split,
                data_dir=data.data_dir,
                split_seed=data.split_seed,
                val_fraction=data.val_fraction,
            ),
        )
        for benchmark in config.benchmarks
        for split in config.splits
    }


def table_i(results: dict[str, dict], config: ProtocolAConfig) -> dict[str, dict]:
    """Table I's layout: row ``<loss> (<score>)``, columns ``<benchmark> ACC|AUROC|OSCR``."""
    rows = {}
    for score in config.scores:
        columns = {
            "ACC": ("accuracy",),
            "AUROC": ("scores", score, "auroc"),
            "OSCR": ("scores", score, "oscr"),
        }
        per_benchmark = summarise(results, columns)
        rows[f"{config.train.loss.loss} ({score})"] = {
            f"{benchmark} {metric}": cell
            for benchmark, cells in per_benchmark.items()
            for metric, cell in cells.items()
        }
    return rows


def run(config: ProtocolAConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train and evaluate every split into ``workdir/runs``; write the table; return it."""
    unknown = [b for b in config.benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; valid are: {', '.join(BENCHMARKS)}")
    configs = split_configs(config)
    evaluation = EvalConfig(scores=config.scores)
    with open_workdir(workdir, to_dict(config), outputs=TABLE_FILES, overwrite=overwrite) as opened:
        workdir = opened.path
        results = run_grid(configs, workdir / "runs", evaluation)
        summary = table_i(results, config)
        markdown = markdown_table(summary, row_header="method (score)")
        meta = {
            "config": to_dict(config),
            "evaluation": to_dict(evaluation),
            "splits": {name: r["split"] for name, r in results.items()},
        }
        title = f"Protocol A, splits {list(config.splits)} (dots: splits)"
        write_table(workdir, summary, markdown, plot_summary(summary, title=title), meta)
        return {"summary": summary, "markdown": markdown}


COMMAND = Command(
    module=__name__,
    config=ProtocolAConfig,
    run=run,
    workdir="runs/protocol_a",
    description="Protocol A: train on each standard split, report ACC, AUROC and OSCR (Table I).",
    outputs=TABLE_FILES,
    runs="the runs (runs/)",
    summary=table_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
