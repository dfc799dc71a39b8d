"""Grids of training runs: which runs an experiment trains (:func:`seed_grid`,
:func:`split_grid`), and training them (:func:`run_grid`). Summarising them into tables is
:mod:`jacosr.tables`'s job.

A grid maps run names to resolved training configs. :func:`seed_grid` replicates rows over
seeds; :func:`split_grid` runs rows on the standard splits of Protocol A benchmarks (Table I
and Table III), optionally for a number of epochs rather than steps. :func:`run_grid` trains
and evaluates every config of a grid in its own sub-workdir (one tqdm bar over the runs; a
finished run whose results.json holds the scores asked for is read back, a partial one resumes
from its checkpoint). :func:`grid_identity` is an experiment's workdir identity without the
fields that only choose which runs are made, so that asking for more seeds (or rows) adds runs
to a workdir instead of refusing it. :func:`describe_grid` says what a grid trains, in runs
and steps.

Several devices (see :mod:`jacosr.distributed`): by default the runs go one after another,
each data parallel over every device (and every process, under ``jax.distributed``), which
suits big runs. With ``spread_runs`` (``--spread-runs``) the runs go side by side instead, one
per local device, each on its device alone (threads of one process; a free device takes the
next run); each run is then exactly the one-device run. That is the better use of several
GPUs for the tables' many small runs (an MLP, LeNet or VGG32 at batch 128 leaves most of a GPU
idle, and data parallelism adds an all-reduce to every step). Runs are independent and
resumable either way; only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import queue
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tqdm.auto import tqdm

from jacosr.config import to_dict
from jacosr.data import BENCHMARKS, load_open_set, protocol_a_config
from jacosr.distributed import is_writer, on_device, spread_devices
from jacosr.evaluate import EvalConfig
from jacosr.recipe import ResolvedTrainConfig, TrainConfig, resolve
from jacosr.runs import RunResults
from jacosr.train import run

Grid = Mapping[str, ResolvedTrainConfig]
"""Run name (its folder below the experiment's ``runs/``) -> the run's resolved config."""


def seed_grid(rows: Grid, seeds: int) -> dict[str, ResolvedTrainConfig]:
    """Every row's config at ``seeds`` training seeds from the row's own (``--seed``, default
    0): ``seed .. seed + seeds - 1``, named ``<row>/seed<s>`` by the seed itself, so a run's
    name says its seed and more seeds add runs beside the ones there."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return {
        f"{row}/seed{s}": dataclasses.replace(config, seed=s)
        for row, config in rows.items()
        for s in range(config.seed, config.seed + seeds)
    }


def grid_identity(config, extent: Sequence[str] = ("seeds",)) -> dict:
    """An experiment's workdir identity (what its ``config.json`` holds and a re-run must
    match): ``to_dict(config)`` without the ``extent`` fields, those that only choose which
    runs of the grid are made (the number of seeds; a table's rows).

    The runs live in sub-workdirs named after what they are (``<row>/seed<s>``), each guarding
    its own config, so more seeds or rows add runs and reuse the finished ones, fewer
    summarise a subset; any other field (the base run, the base seed) changes what a run
    of a given name means, and a workdir holding other such values is refused as before.
    ``table.json`` records the full config of the last run.
    """
    return {k: v for k, v in to_dict(config).items() if k not in extent}


RowsOf = Callable[[ResolvedTrainConfig], Grid]
"""A table's rows as a function of the base run (resolved, its data already the split's): row
name -> that row's config."""


def split_grid(
    rows_of: RowsOf,
    base: TrainConfig,
    benchmarks: Sequence[str],
    splits: Sequence[int],
    *,
    seeds: int | None = None,
    epochs: int | None = None,
) -> dict[str, ResolvedTrainConfig]:
    """Every row on every standard split of every Protocol A benchmark, named
    ``<row>/<benchmark>/split<i>`` (``.../split<i>-seed<j>`` with ``seeds``).

    ``base``'s data fields other than data_dir, split_seed and val_fraction are replaced by the
    split's (:func:`jacosr.data.protocol_a_config`) and the result resolved for that data
    (:func:`jacosr.recipe.resolve`: ``base`` is what the user gave, its techniques decided
    per split) before ``rows_of`` sees it, so a row may depend on the data (the ablation's
    augmentation does). ``seeds``: None, one run per split
    at the row's own seed; n, n seeds per split from the row's own (``seed .. seed + n - 1``,
    named by the seed). ``epochs``: when set, each run trains for
    ``epochs * (known-train size // batch_size)`` steps (the batches the loop draws per epoch:
    it drops the last partial batch) instead of its ``steps``; counting the known-train images
    loads each split once, so the data must be prepared.
    """
    unknown = [b for b in benchmarks if b not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmarks {unknown}; valid are: {', '.join(BENCHMARKS)}")
    if not benchmarks:
        raise ValueError(f"no benchmarks given; choose some of {', '.join(BENCHMARKS)}")
    if not splits:
        raise ValueError("no splits given; choose some of 0 1 2 3 4 with --splits")
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    grid = {}
    given = base.data
    for benchmark in benchmarks:
        for split in splits:
            data = protocol_a_config(
                benchmark,
                split,
                data_dir=given.data_dir,
                split_seed=given.split_seed,
                val_fraction=given.val_fraction,
            )
            train_size = len(load_open_set(data).known_train.y) if epochs is not None else 0
            for row, config in rows_of(resolve(dataclasses.replace(base, data=data))).items():
                replicates = (
                    {f"split{split}": None}
                    if seeds is None
                    else {
                        f"split{split}-seed{s}": s for s in range(config.seed, config.seed + seeds)
                    }
                )
                if epochs is not None:
                    per_epoch = train_size // config.batch_size
                    if per_epoch < 1:
                        raise ValueError(
                            f"{benchmark} split {split} has {train_size} known training "
                            f"images, fewer than one batch of {config.batch_size}"
                        )
                    config = dataclasses.replace(config, steps=epochs * per_epoch)
                for replicate, seed in replicates.items():
                    grid[f"{row}/{benchmark}/{replicate}"] = (
                        config if seed is None else dataclasses.replace(config, seed=seed)
                    )
    return grid


def run_grid(
    configs: Grid,
    workdir: Path,
    evaluation: EvalConfig,
    *,
    spread_runs: bool = False,
    progress: bool = True,
) -> dict[str, RunResults]:
    """Train and evaluate each named config in ``workdir/<name>``; return name -> results.

    Each run goes through :func:`jacosr.train.run`: a finished run whose results.json holds
    every score of ``evaluation`` (same settings) is read back untouched, one missing scores
    evaluates only those, any other resumes from its checkpoints (a workdir that holds a
    different config is refused).

    With ``spread_runs`` (``--spread-runs``), on a process with several local devices, the
    runs train side by side, one per device (see the module docstring); the results are the
    same, in the same order. A failed run stops the runs not yet started and raises its
    error once those in progress have finished (and checkpointed).
    """
    devices = spread_devices(spread_runs)
    bar = tqdm(total=len(configs), desc="runs", unit="run", disable=not (progress and is_writer()))
    if len(devices) <= 1:
        results = {}
        with bar:
            for name, config in configs.items():
                bar.set_postfix_str(name)
                results[name] = run(config, Path(workdir) / name, evaluation, progress=False)
                bar.update()
        return results
    free: queue.SimpleQueue = queue.SimpleQueue()
    for device in devices:
        free.put(device)

    def one(name: str, config: ResolvedTrainConfig) -> RunResults:
        device = free.get()
        try:
            with on_device(device):
                return run(config, Path(workdir) / name, evaluation, progress=False)
        finally:
            free.put(device)
            bar.update()

    with bar, ThreadPoolExecutor(len(devices), thread_name_prefix="run") as pool:
        futures = {name: pool.submit(one, name, config) for name, config in configs.items()}
        try:
            return {name: future.result() for name, future in futures.items()}
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise


def describe_grid(configs: Grid) -> str:
    """What training ``configs`` takes, in one line: the runs and their steps at batch 128,
    by backbone and whether the rotation task doubles the images per step (``40 runs,
    800,000 steps of batch 128: vgg32 600,000, vgg32 with the rotation task 200,000``).
    Printed before a grid trains; ``benchmarks/gpu_cost.py`` turns it into GPU hours."""
    steps: dict[str, int] = {}
    for config in configs.values():
        key = config.model.backbone + (" with the rotation task" if config.self_sup > 0 else "")
        steps[key] = steps.get(key, 0) + config.steps * config.batch_size // 128
    parts = ", ".join(f"{key} {n:,}" for key, n in steps.items())
    return f"{len(configs)} runs, {sum(steps.values()):,} steps of batch 128: {parts}"


def print_grid(configs: Grid) -> None:
    """Print :func:`describe_grid` before a grid trains (process 0 only)."""
    if is_writer():
        print(f"grid: {describe_grid(configs)}")
