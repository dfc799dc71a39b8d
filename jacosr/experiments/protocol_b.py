"""Protocol B (the paper's Table II): train on all of CIFAR10, detect ImageNet / LSUN images.

    python -m jacosr.experiments.protocol_b                       # VGG32, m-OvR, 20k steps
    python -m jacosr.experiments.protocol_b --ood lsun_crop lsun_resize --seeds 3

Needs CIFAR10 and the OOD folders prepared (see the README):
``python -m jacosr.data.prepare cifar10 imagenet_crop imagenet_resize lsun_crop lsun_resize``.
It trains one 20k-step VGG32 per seed (a GPU job), then evaluates it on each OOD set. Each seed
trains once in ``<workdir>/seed<s>`` (checkpointed, resumable; seeds ``--seed`` ..
``--seed`` + ``--seeds`` - 1) and is evaluated against every OOD set. Training sees
only the known classes, so a model's config names no OOD set (:func:`model_config`) and the
workdir's identity (``config.json``) is the training config alone: other, more or reordered
``--ood`` sets, more ``--seeds``, other ``--scores`` or ``--reject-rate`` reuse the trained
models and only evaluate again.

All ten CIFAR10 classes are known; the unknown test images are an OOD set, resized (``*_resize``)
or centre-cropped (``*_crop``) to 32x32 as distributed by the ODIN authors. The macro-F1 is over
the 10 known classes plus "unknown", with the score threshold set so that ``reject_rate``
(default 10%) of the known validation images are rejected (:func:`jacosr.metrics.metric_macro_f1`).

Writes ``table.md`` (one row per score, one column per OOD set: macro-F1, mean ± std over
seeds; plus the closed-set accuracy), ``table.json`` and ``table.png`` (bars, seeds as dots).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from jacosr.config import to_dict
from jacosr.data import load_open_set, protocol_b_config
from jacosr.data.folders import OOD_FOLDERS
from jacosr.evaluate import EvalConfig, evaluate
from jacosr.experiments.command import Command
from jacosr.grids import grid_identity
from jacosr.models import ModelConfig
from jacosr.plots import plot_summary
from jacosr.recipe import TrainConfig
from jacosr.tables import (
    TABLE_FILES,
    markdown_table,
    summarise_values,
    table_summary,
    write_table,
)
from jacosr.train import fit
from jacosr.workdir import open_workdir


@dataclass(frozen=True)
class ProtocolBConfig:
    """Protocol B.

    Attributes:
      train: the run (its data fields other than data_dir, split_seed and val_fraction are
        replaced by CIFAR10 with all ten classes known; val_fraction, 0.1, holds out the
        known-val images that set the threshold).
      ood: the out-of-distribution sets, the table's columns.
      seeds: training seeds --seed..--seed+seeds-1, one model each.
      scores: unknown scores, the table's rows (see ``jacosr.scores.SCORES``).
      reject_rate: fraction of the known validation images the threshold rejects.
    """

    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(model=ModelConfig(backbone="vgg32"))
    )
    ood: tuple[str, ...] = tuple(OOD_FOLDERS)
    seeds: int = 1
    scores: tuple[str, ...] = ("loss", "msp")
    reject_rate: float = 0.1


def ood_config(config: ProtocolBConfig, ood: str, seed: int) -> TrainConfig:
    """The training config of ``seed`` with the unknowns of ``ood`` (what it is evaluated on)."""
    data = config.train.data
    return dataclasses.replace(
        config.train,
        seed=seed,
        data=protocol_b_config(
            ood,
            data_dir=data.data_dir,
            split_seed=data.split_seed,
            val_fraction=data.val_fraction,
        ),
    )


def model_config(config: ProtocolBConfig, seed: int) -> TrainConfig:
    """The config the model of ``seed`` trains under: :func:`ood_config` without an unknown
    set (training sees only the known classes), the same whichever ``--ood`` sets are asked
    for, in any order."""
    given = ood_config(config, config.ood[0], seed)
    return dataclasses.replace(given, data=dataclasses.replace(given.data, unknown_dataset=None))


def run(config: ProtocolBConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train each seed once, evaluate it on every OOD set, write the table; return it.

    One model per seed serves every OOD set: it trains under :func:`model_config` (recorded
    in ``seed<s>/config.json``) on the known classes, which every OOD set's data share.
    """
    if not config.ood:
        raise ValueError(f"no OOD sets given; choose from: {', '.join(OOD_FOLDERS)}")
    if config.seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {config.seeds}")
    if config.train.data.val_fraction == 0:
        raise ValueError(
            "Protocol B sets its threshold on known-val: --val-fraction must be above 0 "
            "(the paper's convention: 0.1)"
        )
    evaluation = EvalConfig(scores=config.scores, reject_rate=config.reject_rate)
    identity = grid_identity(config, ("ood", "seeds", "scores", "reject_rate"))
    with open_workdir(workdir, identity, outputs=TABLE_FILES, overwrite=overwrite) as opened:
        workdir = opened.path
        per_score: dict[str, dict] = {}  # "<score>/seed<s>" -> {ood: macro-F1, ..., "ACC"}
        splits = {}
        first = config.train.seed
        for seed in tqdm(range(first, first + config.seeds), desc="seeds", unit="model"):
            trained = model_config(config, seed)
            # the known classes of any OOD set's data (a split without unknowns is refused)
            known = load_open_set(ood_config(config, config.ood[0], seed).data)
            graphdef, state = fit(trained, known, workdir / f"seed{seed}")
            for ood in config.ood:
                data = load_open_set(ood_config(config, ood, seed).data)
                result = evaluate(graphdef, state, data, trained.loss, evaluation)
                splits[ood] = result["split"]
                for score in config.scores:
                    cell = per_score.setdefault(f"{score}/seed{seed}", {})
                    cell[ood] = result["scores"][score]["macro_f1"]
            for score in config.scores:  # the known classes, the same for every OOD set
                per_score[f"{score}/seed{seed}"]["ACC"] = result["accuracy"]
        summary = {
            f"{config.train.loss.loss} ({score})": cells
            for score, cells in summarise_values(per_score).items()
        }
        markdown = markdown_table(summary, row_header="method (score)")
        meta = {"config": to_dict(config), "evaluation": to_dict(evaluation), "splits": splits}
        title = f"Protocol B: macro-F1 at {config.reject_rate:.0%} known rejection, CIFAR10 known"
        write_table(opened, summary, markdown, plot_summary(summary, title=title), meta)
        return {"summary": summary, "markdown": markdown}


COMMAND = Command(
    module=__name__,
    config=ProtocolBConfig,
    run=run,
    workdir="runs/protocol_b",
    description=(
        "Protocol B: CIFAR10 known, ImageNet/LSUN crop/resize unknown, macro-F1 (Table II)."
    ),
    outputs=TABLE_FILES,
    runs="the models (seed<i>/)",
    summary=table_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
