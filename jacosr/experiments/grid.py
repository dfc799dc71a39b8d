"""The loop shared by the table experiments: a grid of runs x replicates, summarised as a table.

A grid maps run names to training configs. :func:`seed_grid` replicates rows over seeds;
:func:`split_grid` runs rows on the standard splits of Protocol A benchmarks (Table I and
Table III), optionally for a number of epochs rather than steps. :func:`run_grid` trains and
evaluates every config of a grid in its own sub-workdir (one tqdm bar over the runs; a finished
run whose results.json holds the scores asked for is read back, a partial one resumes from its
checkpoint). :func:`grid_identity` is an experiment's workdir identity without the fields that
only choose which runs are made, so that asking for more seeds (or rows) adds runs to a
workdir instead of refusing it. :func:`summarise` turns the per-replicate results into mean
and standard deviation per row and column (:func:`summarise_columns` per row, column group
and metric); :func:`markdown_table` and :func:`jacosr.plots.plot_summary` render the summary;
:func:`write_table` writes ``table.md``, ``table.json`` and ``table.png``.
:func:`expected_gpu_time` says what a grid costs on one H100, from the measured throughput.
:func:`draw_known_sets` draws random known sets per number of classes (Fig. 6, and Fig. 12 on
a data set without standard splits), and :func:`measure_runs` measures the final model of
every finished run of a grid with :func:`jacosr.dynamics.measure` (cached in the experiment's
results.json while the run and the settings are unchanged).

Several devices (see :mod:`jacosr.distributed`): by default the runs go one after another,
each data parallel over every device (and every process, under ``jax.distributed``), which
suits big runs. With ``--spread-runs`` (:func:`jacosr.distributed.spreading_runs`) the runs go
side by side instead, one per local device, each on its device alone (threads of one process;
a free device takes the next run); each run is then exactly the one-device run. That is the
better use of several GPUs for the tables' many small runs (an MLP, LeNet or VGG32 at batch
128 leaves most of a GPU idle, and data parallelism adds an all-reduce to every step). Runs
are independent and resumable either way; only process 0 writes the table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import queue
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from jacosr.config import to_dict
from jacosr.data import BENCHMARKS, DataConfig, load_open_set, load_source, protocol_a_config
from jacosr.data.splits import resolve_benchmark
from jacosr.distributed import is_writer, on_device, spread_devices
from jacosr.dynamics import TrackConfig, measure, track_samples
from jacosr.evaluate import EvalConfig
from jacosr.plots import plot_summary
from jacosr.train import TrainConfig, load_run, resolve, run
from jacosr.workdir import Workdir, open_workdir

# A table column: its header and the path of keys to its value in a run's results.json.
Columns = Mapping[str, tuple[str, ...]]
TABLE_FILES = ("table.md", "table.json", "table.png")
"""What a table experiment writes in its workdir besides ``config.json`` and its runs."""


def seed_grid(rows: Mapping[str, TrainConfig], seeds: int) -> dict[str, TrainConfig]:
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


RowsOf = Callable[[TrainConfig], Mapping[str, TrainConfig]]
"""A table's rows as a function of the base run (whose data is already the split's): row name
-> that row's config."""


def split_grid(
    rows_of: RowsOf,
    base: TrainConfig,
    benchmarks: Sequence[str],
    splits: Sequence[int],
    *,
    seeds: int | None = None,
    epochs: int | None = None,
) -> dict[str, TrainConfig]:
    """Every row on every standard split of every Protocol A benchmark, named
    ``<row>/<benchmark>/split<i>`` (``.../split<i>-seed<j>`` with ``seeds``).

    ``base``'s data fields other than data_dir, split_seed and val_fraction are replaced by the
    split's (:func:`jacosr.data.protocol_a_config`) before ``rows_of`` sees it, so a row may
    depend on the data (the ablation's augmentation does). ``seeds``: None, one run per split
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
            for row, config in rows_of(dataclasses.replace(base, data=data)).items():
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
    configs: Mapping[str, TrainConfig],
    workdir: Path,
    evaluation: EvalConfig,
    *,
    progress: bool = True,
) -> dict[str, dict]:
    """Train and evaluate each named config in ``workdir/<name>``; return name -> results.

    Each run goes through :func:`jacosr.train.run`: a finished run whose results.json holds
    every score of ``evaluation`` (same settings) is read back untouched, one missing scores
    evaluates only those, any other resumes from its checkpoints (a workdir that holds a
    different config is refused).

    Inside :func:`jacosr.distributed.spreading_runs` (``--spread-runs``) on a process with
    several local devices, the runs train side by side, one per device (see the module
    docstring); the results are the same, in the same order. A failed run stops the runs not
    yet started and raises its error once those in progress have finished (and
    checkpointed).
    """
    devices = spread_devices()
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

    def one(name: str, config: TrainConfig) -> dict:
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


def _lookup(results: dict, path: tuple[str, ...]) -> float:
    value = results
    for key in path:
        value = value[key]
    return float(value)


def summarise(results: Mapping[str, dict], columns: Columns) -> dict[str, dict[str, dict]]:
    """``row -> column -> {"mean", "std", "values"}`` over the replicates of each row.

    Run names are ``<row>/<replicate>`` (``<row>/seed<i>`` from :func:`seed_grid`,
    ``<benchmark>/split<i>`` in Protocol A); rows keep the order of their first run.
    ``std`` is the sample standard deviation (ddof 1; 0 for a single replicate).
    """
    grouped: dict[str, list[dict]] = {}
    for name, result in results.items():
        grouped.setdefault(name.rsplit("/", 1)[0], []).append(result)
    summary = {}
    for row, runs in grouped.items():
        summary[row] = {}
        for header, path in columns.items():
            values = np.array([_lookup(r, path) for r in runs])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[row][header] = {
                "mean": float(values.mean()),
                "std": std,
                "values": values.tolist(),
            }
    return summary


def summarise_columns(
    results: Mapping[str, dict], metrics: Columns
) -> dict[str, dict[str, dict[str, dict]]]:
    """``row -> column -> metric -> {"mean", "std", "values"}`` from runs named
    ``<row>/<column>/<replicate>`` (:func:`split_grid`'s ``<row>/<benchmark>/split<i>``, or
    :func:`seed_grid` of rows named ``<row>/<column>``); rows and columns keep their order."""
    table: dict[str, dict[str, dict]] = {}
    for key, cells in summarise(results, metrics).items():
        row, column = key.rsplit("/", 1)
        table.setdefault(row, {})[column] = cells
    return table


def markdown_table(
    summary: Mapping[str, Mapping[str, dict]],
    *,
    row_header: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_headers: Sequence[str] = (),
) -> str:
    """A Markdown table: one line per row, ``mean ± std`` per column.

    ``labels``: extra leading cells per row (e.g. the ablation's switches), under
    ``label_headers``.
    """
    rows = list(summary)
    columns = list(summary[rows[0]])
    header = [row_header, *label_headers, *columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--"] + [":-:"] * len(label_headers) + ["--:"] * len(columns)) + "|",
    ]
    for row in rows:
        cells = [row, *(labels[row] if labels else ())]
        cells += [f"{summary[row][c]['mean']:.4f} ± {summary[row][c]['std']:.4f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_table(
    config,
    workdir: Path,
    rows: Mapping[str, TrainConfig],
    columns: Columns,
    evaluation: EvalConfig,
    *,
    title: str,
    row_header: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_headers: Sequence[str] = (),
    extent: Sequence[str] = ("seeds",),
    overwrite: bool = False,
) -> dict:
    """The seed-replicated table experiments' run: ``rows`` x ``config.seeds`` into
    ``workdir/runs``, summarised over seeds and written; returns summary and Markdown.

    ``config`` is the experiment's config (its ``seeds`` field sets the replicates; stored in
    ``table.json``, and in ``config.json`` without ``extent``, see :func:`grid_identity`);
    ``title`` is prefixed to the split in the figure.
    """
    identity = grid_identity(config, extent)
    with open_workdir(workdir, identity, outputs=TABLE_FILES, overwrite=overwrite) as opened:
        workdir = opened.path
        grid = seed_grid(rows, config.seeds)
        results = run_grid(grid, workdir / "runs", evaluation)
        summary = summarise(results, columns)
        markdown = markdown_table(
            summary, row_header=row_header, labels=labels, label_headers=label_headers
        )
        split = next(iter(results.values()))["split"]
        first = next(iter(rows.values())).seed
        seeds = f"seeds {first}-{first + config.seeds - 1}" if config.seeds > 1 else f"seed {first}"
        full_title = f"{title}{split['source']}: known {split['known_classes']}, {seeds}"
        meta = {"config": to_dict(config), "split": split, "evaluation": to_dict(evaluation)}
        write_table(opened, summary, markdown, plot_summary(summary, title=full_title), meta)
        return {"summary": summary, "markdown": markdown}


def table_summary(result: dict) -> str:
    """What a table experiment's command prints (:class:`~jacosr.experiments.command.Command`'s
    ``summary``): its Markdown table."""
    return result["markdown"]


def write_table(
    opened: Workdir,
    summary: Mapping[str, Mapping[str, dict]],
    markdown: str,
    figure: Figure,
    meta: dict,
) -> None:
    """Write ``table.md``, ``table.json`` (``meta`` and the summary) and ``table.png`` into
    the opened workdir (in process 0 only, as every :class:`~jacosr.workdir.Workdir` write)."""
    opened.write("table.md", markdown)
    opened.write_json("table.json", {**meta, "rows": summary})
    opened.save_figure("table.png", figure)


H100_SECONDS_PER_1K_STEPS: dict[str, tuple[float, float | None]] = {
    "mlp": (0.1, None),
    "lenet": (0.2, None),
    "vgg32": (1.7, 2.9),
    "wrn16_4": (3.4, 6.0),
    "resnet18": (4.7, 8.0),
}
"""Training seconds per 1,000 steps at batch 128 on one NVIDIA H100, measured with
``benchmarks/gpu.sh`` (README, "Speed"): (the plain dispatch, the paper's recipe: weak
augmentation and the rotation task, 256 images through the network per step). None: not
measured."""


def expected_gpu_time(configs: Mapping[str, TrainConfig]) -> str:
    """One line: what training the grid ``configs`` costs on one H100, from
    :data:`H100_SECONDS_PER_1K_STEPS`.

    A run with the rotation task is costed at the paper-recipe rate, any other at the plain
    rate (augmentation is cheap on the GPU: colour jitter is not counted), scaled by
    batch_size / 128. Evaluation and data loading are not included. The rates were measured
    on 32x32 images; TinyImageNet's 64x64 ones cost up to 4x more, which the line says.
    """
    steps: dict[tuple[str, bool], int] = {}
    larger = any(resolve_benchmark(c.data).dataset == "tinyimagenet" for c in configs.values())
    seconds: dict[tuple[str, bool], float] = {}
    for given in configs.values():
        config = resolve(given)
        key = (config.model.backbone, config.self_sup > 0)
        rate = H100_SECONDS_PER_1K_STEPS.get(key[0], (None, None))[key[1]]
        steps[key] = steps.get(key, 0) + config.steps
        if rate is not None:
            scaled = config.steps / 1000 * rate * config.batch_size / 128
            seconds[key] = seconds.get(key, 0.0) + scaled
    head = f"expected GPU time: {len(configs)} runs, {sum(steps.values()):,} steps"
    parts, missing = [], []
    for (backbone, rotation), n in steps.items():
        with_ = "with" if rotation else "without"
        if (backbone, rotation) not in seconds:
            missing.append(f"{backbone} {with_} the rotation task")
            continue
        rate = H100_SECONDS_PER_1K_STEPS[backbone][rotation]
        parts.append(f"{backbone} {with_} rotation: {n:,} x {rate} s/1k")
    if missing:
        return f"{head}; no H100 measurement for {', '.join(missing)}"
    minutes = sum(seconds.values()) / 60
    when = f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
    caveat = ", up to 4x that for TinyImageNet's 64x64 images" if larger else ""
    return (
        f"{head} ({'; '.join(parts)}) = {when} of training on one H100 (measured with "
        f"benchmarks/gpu.sh on 32x32 images at batch 128{caveat}; evaluation not included)"
    )


def print_expected_gpu_time(configs: Mapping[str, TrainConfig]) -> None:
    """Print :func:`expected_gpu_time` before a grid trains (in process 0 only)."""
    if is_writer():
        print(expected_gpu_time(configs))


# Known sets of classes, and the final models of finished runs (Figs. 6 and 12)


def draw_known_sets(
    num_classes: int, sizes: Sequence[int], draws: int, seed: int
) -> list[dict[int, tuple[int, ...]]]:
    """``draws`` random, nested known sets of each size: ``[{K: classes}]``, one dict per draw.

    Draw ``d`` is a random order of the ``num_classes`` classes; its known set of size K is the
    first K of them, sorted (so a draw's sets are nested: the K = 3 set holds the K = 2 one,
    which pairs the sizes). Orders are drawn one after another from ``default_rng(seed)``; an
    order that repeats, for some size, the set of an earlier draw is drawn again, so the
    ``draws`` sets of each size are distinct. More draws keep the earlier ones.

    Raises ``ValueError`` when a size is not in ``2 .. num_classes - 1`` or has fewer than
    ``draws`` distinct sets.
    """
    for k in sizes:
        if not 2 <= k < num_classes:
            raise ValueError(
                f"cannot draw {k} known classes of {num_classes} with at least one unknown; "
                f"choose sizes from 2 to {num_classes - 1}"
            )
        if math.comb(num_classes, k) < draws:
            raise ValueError(
                f"only {math.comb(num_classes, k)} distinct sets of {k} of {num_classes} "
                f"classes, fewer than {draws} draws; lower --draws"
            )
    rng = np.random.default_rng(seed)
    chosen: list[dict[int, tuple[int, ...]]] = []
    for _ in range(100_000):
        if len(chosen) == draws:
            return chosen
        order = rng.permutation(num_classes)
        sets = {k: tuple(sorted(int(c) for c in order[:k])) for k in sizes}
        if all(sets[k] != earlier[k] for earlier in chosen for k in sizes):
            chosen.append(sets)
    raise ValueError(f"could not draw {draws} distinct known sets of sizes {list(sizes)}")


def source_classes(data: DataConfig) -> int:
    """The number of classes of ``data``'s (known) data set, a benchmark's included."""
    resolved = resolve_benchmark(data)
    return load_source(resolved.dataset, resolved.data_dir).num_classes


def known_set_name(classes: Sequence[int]) -> str:
    """A run's folder for a known set: ``known0-2-5``."""
    return "known" + "-".join(str(c) for c in classes)


def with_known(data: DataConfig, classes: Sequence[int]) -> DataConfig:
    """``data`` with the known classes ``classes`` and every other class of its data set
    unknown; a benchmark only chooses the data set and image size."""
    resolved = resolve_benchmark(data)
    return dataclasses.replace(
        resolved,
        known=tuple(classes),
        unknown=None,
        unknown_dataset=None,
        benchmark=None,
        protocol_split=DataConfig().protocol_split,
    )


def run_identity_digest(results: dict) -> str:
    """SHA-256 of a finished run's config and split (classes and the data's SHA-256), from its
    results.json: a measurement of the run is reused only while this is unchanged."""
    text = json.dumps({"config": results["config"], "split": results["split"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def measure_final(path: Path, steps: int, track: TrackConfig) -> dict:
    """The row :func:`jacosr.dynamics.measure` gives the final model (step ``steps``) of the
    run in ``path``, on the samples and with the key a run tracked with ``track`` would use
    at that step. Read-only (:func:`jacosr.train.load_run`)."""
    config, data, graphdef, state = load_run(path, step=steps)
    samples = track_samples(data, track.track_samples, track.track_seed)
    key = jax.random.fold_in(jax.random.key(track.track_seed), steps)
    return measure(graphdef, state, samples, config.loss, track, key)


def measure_runs(
    runs: Mapping[str, tuple[Path, dict]],
    track: TrackConfig,
    saved: Mapping[str, dict],
    *,
    progress: bool = True,
) -> dict[str, dict]:
    """Measure the final model of every finished run: ``name -> record``.

    ``runs``: name -> ``(path, results)``, the run's folder and its results.json; ``saved``:
    records of an earlier call (results.json's ``runs``), reused when they hold the same run
    (:func:`run_identity_digest`) measured with the same ``track`` settings. A record is the
    measured row and ``{"path", "dataset", "known_classes", "seed", "steps", "identity",
    "measured_with"}``.
    """
    settings = to_dict(track)
    records = {}
    bar = tqdm(runs.items(), desc="measuring", unit="model", disable=not progress)
    for name, (path, results) in bar:
        identity = run_identity_digest(results)
        old = saved.get(name, {})
        if old.get("identity") == identity and old.get("measured_with") == settings:
            records[name] = old
            continue
        split = results["split"]
        records[name] = {
            "path": str(path),
            "dataset": split["benchmark"] or split["source"],
            "known_classes": split["known_classes"],
            "seed": results["config"]["seed"],
            "steps": results["config"]["steps"],
            "identity": identity,
            "measured_with": settings,
            **measure_final(path, results["config"]["steps"], track),
        }
    return records
