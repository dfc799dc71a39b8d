"""Training: the resumable loop around the step programs of :mod:`jacosr.step`, and the CLI.

    python -m jacosr.train --dataset digits --loss movr --steps 2000 --workdir runs/digits-movr
    python -m jacosr.train --loss rpl --self-sup 0.1 --augment strong --workdir runs/rpl-s-a

The workdir receives ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``results.json``
(the evaluation table, also printed; :mod:`jacosr.runs` documents the layout); re-running the
same command resumes from the last checkpoint. A finished run is never trained again:
re-run with the scores results.json holds, it is read back; with others (``--scores jacobian
...``), only those are evaluated and their rows added to results.json, which never loses a
row (:func:`run`; the evaluation settings are not part of the run's config).

    python -m jacosr.train --steps 2000 --track-points 20 --workdir runs/digits-movr-tracked

also measures the model at step 0 and 19 steps spaced geometrically up to 2,000 (DBI,
inter-class distance, Jacobian norms and their difference, AUROCs; :mod:`jacosr.tracking`)
and writes one line per step to ``dynamics.jsonl``, kept across kills as ``metrics.jsonl``
is (what it costs: ``benchmarks/tracking.py`` and the README).

What survives what (see :mod:`jacosr.workdir` and :mod:`jacosr.checkpoint`): a bad config value
is refused before anything is written; the workdir is locked for the whole run (a second
process on it is refused); a run killed at any moment resumes, from its newest intact
checkpoint, to bit-identical parameters and a ``metrics.jsonl`` without duplicated or missing
lines (a partial last line is dropped); a damaged checkpoint is skipped with a warning, never
restored; a failed checkpoint write (disk full) raises one error naming its cause and the
intact checkpoint to resume from. ``JACOSR_FAULT`` (:mod:`jacosr.checkpoint`) kills the process
at chosen points, for the tests of all this.

A run's identity is its resolved config and the data it trains on
(:func:`jacosr.runs.run_identity`): other data in an existing workdir (``fit`` with other
arrays, a data set prepared again from other files) is refused, naming what differs. The
config is resolved once, here, where it enters (:func:`fit`, :func:`run`;
:func:`jacosr.recipe.resolve`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO

import jax
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from jacosr.checkpoint import CheckpointStore, DamagedCheckpointError, fault_point
from jacosr.config import cli
from jacosr.data import OpenSetData, load_open_set
from jacosr.distributed import (
    DistributedConfig,
    barrier,
    check_batch,
    data_mesh,
    initialize,
    is_writer,
    put_replicated,
    to_local,
)
from jacosr.evaluate import EvalConfig, evaluate, format_table
from jacosr.models import ModelState
from jacosr.recipe import ResolvedTrainConfig, TrainConfig, resolve
from jacosr.runs import (
    DYNAMICS,
    METRICS,
    RESULTS,
    TRAIN_OUTPUTS,
    RunResults,
    describe_hardware,
    hardware,
    merge_results,
    results_to_keep,
    run_identity,
    saved_results,
    write_results,
)
from jacosr.step import TrainState, init_train_state, lr_schedule, make_train_dispatch, model_item
from jacosr.tracking import Tracker, track_samples, tracked_steps
from jacosr.workdir import Workdir, WorkdirError, file_stamp, open_workdir


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left intact."""


@dataclass(frozen=True)
class Every:
    """The steps ``every, 2 every, 3 every, ...`` below ``last``, and ``last``.

    The training loop's boundaries are such schedules: the metrics.jsonl lines (every
    ``log_every`` steps), the checkpoints (every ``checkpoint_every``) and the end; the
    tracked steps are an :class:`At` (see :func:`_train`)."""

    every: int
    last: int

    def after(self, step: int) -> int:
        """The first of these steps after ``step`` (``last`` when none is before it)."""
        return min((step // self.every + 1) * self.every, self.last)


@dataclass(frozen=True)
class At:
    """The given ``steps`` (sorted, the last of them the run's last step): a boundary
    schedule like :class:`Every`, for the tracked steps
    (:func:`jacosr.tracking.tracked_steps`)."""

    steps: tuple[int, ...]

    def after(self, step: int) -> int:
        """The first of these steps after ``step`` (the last one when none is after it)."""
        return next((s for s in self.steps if s > step), self.steps[-1])


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines after ``step`` (written by a run that died before its next
    checkpoint) and a partial last line (a kill while writing it). Lines are appended in step
    order, so what goes is a tail; an unchanged log is not rewritten (read-only workdirs)."""
    if not path.exists():
        return
    text = path.read_bytes()
    keep = 0
    for line in text.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n") or json.loads(line)["step"] > step:
                break
        except (ValueError, KeyError, TypeError):
            break
        keep += len(line)
    if keep < len(text):
        with path.open("r+b") as log:
            log.truncate(keep)


def _check_config(config: ResolvedTrainConfig, data: OpenSetData) -> None:
    height, width = data.image_shape[:2]
    if config.self_sup > 0 and height != width:
        raise ValueError(
            f"the rotation task needs square images, got {height}x{width}; "
            "pass --self-sup 0 or --image-size"
        )
    check_batch(config.batch_size)
    n = len(data.known_train.y)
    if n < config.batch_size:
        raise ValueError(
            f"known_train has {n} images, fewer than batch_size {config.batch_size}; "
            "lower --batch-size or use more known classes"
        )


def _resume(wd: Workdir, template: TrainState, overwrite: bool) -> tuple[TrainState, list[int]]:
    """The state to start from: the newest intact checkpoint, or ``template`` (a fresh run);
    and the newer damaged checkpoints (to delete before their steps are saved again).

    A checkpoint of another config (``config.json`` deleted by hand) or none intact is
    refused, unless ``overwrite``: then the old run is deleted and this one starts afresh.
    """
    with CheckpointStore(wd.path, read_only=True) as store:
        try:
            state, damaged = store.restore(template, wd.config)
        except (WorkdirError, DamagedCheckpointError):
            if not overwrite:
                wd.discard_config()
                raise
        else:
            return (template, []) if state is None else (state, damaged)
    barrier("jacosr-resume-overwrite")  # every process has read the old run before it goes
    wd.clear()
    return template, []


class _MetricsLog:
    """Appends to ``metrics.jsonl`` while training: one line per ``log_every`` steps and at the
    last step, ``{"step", "loss", "accuracy", "lr", "seconds"}`` where ``loss`` and
    ``accuracy`` are the means over the steps since the previous line, ``lr`` the rate of the
    line's last step and ``seconds`` the time since training (re)started.

    Lines do not depend on how the steps were dispatched: each dispatch hands over its
    per-step values (:meth:`add`), which may complete several lines or none. Checkpoints fall
    on lines (``checkpoint_every`` is a multiple of ``log_every``), so a resumed run starts
    between two lines, with nothing pending, and writes the same lines again."""

    def __init__(self, file: IO[str], config: ResolvedTrainConfig):
        self.file = file
        self.lines = Every(config.log_every, config.steps)
        self.lr = lr_schedule(config)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.t0 = time.perf_counter()

    def add(self, step: int, loss: np.ndarray, accuracy: np.ndarray) -> None:
        """The losses and accuracies ``[n]`` of steps ``step + 1 .. step + n``; writes the
        lines they complete (each flushed, then the ``after-step`` fault point)."""
        done = 0
        while done < len(loss):
            line = self.lines.after(step + done)
            end = min(line - step, len(loss))
            self.pending.append((loss[done:end], accuracy[done:end]))
            done = end
            if step + done == line:
                self._write(line)

    def _write(self, step: int) -> None:
        loss, accuracy = (np.concatenate(values) for values in zip(*self.pending, strict=True))
        self.pending.clear()
        record = {
            "step": step,
            "loss": float(loss.mean()),
            "accuracy": float(accuracy.mean()),
            "lr": float(self.lr(step - 1)),
            "seconds": round(time.perf_counter() - self.t0, 3),
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        fault_point("after-step", step)


def _train(
    config: ResolvedTrainConfig,
    data: OpenSetData,
    wd: Workdir,
    *,
    overwrite: bool,
    progress: bool,
) -> tuple[nnx.GraphDef, ModelState]:
    """:func:`fit` in the open workdir ``wd``.

    The loop dispatches ``dispatch_steps`` steps at a time, ending a dispatch early at each
    *stop*: a step at which the state itself is needed on the host, here the tracked steps
    (when ``config.track`` is on), the checkpoints and the last step. Stops are ``(schedule,
    action)`` pairs: a schedule's ``after(step)`` is its next step (see :class:`Every`), and
    ``action(step, state)`` runs there, in the list's order. Every stop falls at the same
    steps in a run and in the same run resumed from any checkpoint (checkpoints are stops),
    so both dispatch the same steps together and reach bit-identical states.

    On several devices the state and the training set are replicated on the mesh and the
    dispatch runs data parallel (:func:`make_train_dispatch`); the model comes back on this
    thread's default device. With several processes every process runs this loop (the
    dispatches, checkpoints and tracked measurements are collectives), and only the writer
    (``wd.writer``, process 0) writes ``metrics.jsonl``, ``dynamics.jsonl`` and the bar.

    ``dynamics.jsonl`` is kept as ``metrics.jsonl`` is: a tracked step's row is written (and
    flushed) before a checkpoint of the same step is saved, so every row up to a committed
    checkpoint is on disk; a resumed run drops the rows after its checkpoint's step (and a
    partial last line) and measures the later steps again, a fresh run measures step 0.
    """
    graphdef, fresh = init_train_state(config, data)
    mesh = data_mesh()
    place = jax.device_put if mesh is None else partial(put_replicated, mesh=mesh)
    fresh = fresh if mesh is None else place(fresh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
    state, damaged = _resume(wd, fresh, overwrite)
    step = int(state.step)
    log_path, dynamics_path = wd.path / METRICS, wd.path / DYNAMICS
    tracked = tracked_steps(config.track, config.steps)
    if wd.writer:
        _truncate_log(log_path, step)
        if tracked:
            _truncate_log(dynamics_path, step if step > 0 else -1)  # a fresh run: every row
    if step >= config.steps:  # finished: the checkpoints were only read
        return graphdef, to_local(state.model)
    dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
    train = place(data.known_train.x), place(data.known_train.y)
    # Every process computes the logged values and tracked rows (they take collectives);
    # only the writer's reach the files.
    log_target = log_path if wd.writer else Path(os.devnull)
    dynamics_target = dynamics_path if wd.writer else Path(os.devnull)
    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not (progress and wd.writer),
        desc="train",
        unit="step",
    )
    with (
        CheckpointStore(wd.path, keep=config.keep_checkpoints) as store,
        log_target.open("a") as log_file,
        dynamics_target.open("a") if tracked else contextlib.nullcontext() as dynamics_file,
        bar,
    ):
        store.delete(damaged)
        log = _MetricsLog(log_file, config)

        def checkpoint(at: int, state: TrainState) -> None:
            store.save(at, state, wd.config, model=model_item(config, data))

        stops = [(Every(config.checkpoint_every, config.steps), checkpoint)]
        if tracked:
            samples = track_samples(data, config.track.track_samples, config.track.track_seed)
            tracker = Tracker(graphdef, samples, config.loss, config.track, dynamics_file)
            stops.insert(
                0, (At(tracked), lambda at, state: tracker.write(at, to_local(state.model)))
            )
            if step == 0:
                tracker.write(0, to_local(state.model))
        while step < config.steps:
            stop = min(schedule.after(step) for schedule, _ in stops)
            n = min(stop - step, config.dispatch_steps)
            state, (loss, accuracy, finite) = dispatch(state, *train, n)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                raise NonFiniteLossError(
                    f"training diverged at step {step + bad}: the loss ({loss[bad]}) or the "
                    f"updated parameters are not finite; {store.describe_intact(abstract)}. "
                    "Lower --lr or check the data"
                )
            log.add(step, loss, accuracy)
            step += n
            bar.update(n)
            bar.set_postfix(loss=f"{loss.mean():.4f}", acc=f"{accuracy.mean():.3f}")
            for schedule, action in stops:
                if schedule.after(step - 1) == step:
                    action(step, state)
    return graphdef, to_local(state.model)


def fit(
    config: TrainConfig,
    data: OpenSetData,
    workdir: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[nnx.GraphDef, ModelState]:
    """Train (or resume) the run ``config`` describes in ``workdir``; return the final model.

    Steps run up to ``dispatch_steps`` at a time in one device dispatch; every ``log_every``
    steps one line goes to ``metrics.jsonl``; every ``checkpoint_every`` steps and at the end
    the state is checkpointed. A non-finite loss or parameter raises
    :class:`NonFiniteLossError` naming the step, without saving the diverged state. ``config``
    is resolved here (:func:`resolve`), once: ``config.json`` and the checkpoints hold the
    :class:`ResolvedTrainConfig`.

    The workdir is opened with :func:`jacosr.workdir.open_workdir` (its lock held throughout;
    a different config is refused unless ``overwrite``); training resumes from the newest
    intact checkpoint (:meth:`jacosr.checkpoint.CheckpointStore.restore`); a finished run
    only reads its last checkpoint (a read-only workdir works).
    """
    config = resolve(config)
    _check_config(config, data)
    identity = run_identity(config, data)
    with open_workdir(workdir, identity, outputs=TRAIN_OUTPUTS, overwrite=overwrite) as wd:
        return _train(config, data, wd, overwrite=overwrite, progress=progress)


def run(
    config: TrainConfig,
    workdir: Path,
    evaluation: EvalConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> RunResults:
    """Train ``config`` in ``workdir``, evaluate on the open-set split, write results.json.

    ``evaluation`` defaults to ``EvalConfig()``; a run trained with the Jacobian terms
    (``config.jacobian``) is scored by ``jacobian`` too, whose exact norms give its Jacobian
    norm difference (``results.jnd``). ``config`` is resolved here, as in :func:`fit`. Returns
    the :class:`~jacosr.runs.RunResults` results.json holds (every score row, see
    :func:`jacosr.evaluate.evaluate`).

    results.json only grows: a finished run asked for scores it has not evaluated evaluates
    those alone and adds their rows to the ones there (``eval.scores`` lists them all); one
    whose results.json already holds every score asked for (under the same settings) is
    read back when the data it holds are still those it was computed on (the split's classes
    and the SHA-256 of every split, ``results.split``): nothing is trained, evaluated or
    written. The rows of a results.json share one set of settings: when they change, every
    row there is evaluated again under the new ones, with a warning
    (:func:`jacosr.runs.results_to_keep`).

    The workdir stays locked until results.json is written; if it cannot be written (a
    read-only workdir), a warning says so and the results are still returned.
    """
    config = resolve(config)
    evaluation = evaluation or EvalConfig()
    if config.jacobian.enabled and "jacobian" not in evaluation.scores:
        # trained for the Jacobian norm difference: the jacobian score's norms report it
        evaluation = dataclasses.replace(evaluation, scores=(*evaluation.scores, "jacobian"))
    data = load_open_set(config.data)
    saved = saved_results(workdir, config)
    if saved is not None and saved.covers(evaluation) and saved.split == data.describe():
        return saved  # else: the data changed under their name, which open_workdir refuses
    _check_config(config, data)
    identity = run_identity(config, data)
    with open_workdir(workdir, identity, outputs=TRAIN_OUTPUTS, overwrite=overwrite) as wd:
        graphdef, model_state = _train(config, data, wd, overwrite=overwrite, progress=progress)
        saved = saved_results(wd.path, config)  # again, under the lock
        kept, names = results_to_keep(saved, evaluation)
        todo = dataclasses.replace(evaluation, scores=tuple(n for n in names if n not in kept))
        fresh = evaluate(
            graphdef, model_state, data, config.loss, todo, progress=progress and wd.writer
        )
        results = merge_results(config, evaluation, names, kept, fresh, saved)
        try:
            write_results(wd, results)
        except OSError as err:
            warnings.warn(
                f"could not write {wd.path / RESULTS}: {err.strerror}; the results "
                "above are not saved",
                stacklevel=2,
            )
    return results


@dataclass(frozen=True)
class TrainArgs:
    """Train an open-set model, evaluate it, and write the workdir.

    Your own data: python -m jacosr.data.prepare NAME --from PATH reads a .npz, MNIST idx
    files, the CIFAR python pickles, SVHN .mat files or class folders of images into a data
    set named NAME; then train with --dataset NAME --known ... (--data-dir as there).

    Attributes:
      config: the run.
      evaluation: the unknown scores and their settings (not part of the run's identity:
        re-running a finished workdir with other scores evaluates only those and adds their
        rows to results.json; with the scores it has, it reads results.json back).
      workdir: where config.json, metrics.jsonl, checkpoints/ and results.json go.
      overwrite: instead of refusing a workdir that holds a run with a different config (or
        none of whose checkpoints is intact), delete that run and train this one; deletes
        only what jacosr wrote there (never other files), and never a workdir in use.
      distributed: several processes (see :mod:`jacosr.distributed`); the devices of one
        process need no flag: the run is data parallel over all of them.
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    workdir: Path = Path("runs/train")
    overwrite: bool = False
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def main(args: list[str] | None = None) -> RunResults:
    parsed = cli(TrainArgs, args=args)
    initialize(parsed.distributed)
    path = parsed.workdir / RESULTS
    before = file_stamp(path)
    if is_writer():
        print(f"on {describe_hardware(hardware())}")
    results = run(parsed.config, parsed.workdir, parsed.evaluation, overwrite=parsed.overwrite)
    if is_writer():
        print(format_table(results.to_json()))
        if file_stamp(path) != before:  # not when run read it back or could not write it
            print(f"wrote {path}")
    return results


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
