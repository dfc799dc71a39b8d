"""The on-disk run format, in one place: the files of a workdir, the results record, a run's
identity, and reading runs back (:func:`load_run`, :func:`find_runs`, :func:`collect`,
:func:`measure_runs`).

A training run's workdir (``python -m jacosr.train``, :func:`jacosr.train.fit`, and every
run of an experiment)::

    <workdir>/
      .jacosr-workdir    the marker: jacosr made this folder and wrote OUTPUTS there
                         (:mod:`jacosr.workdir`; what --overwrite may delete)
      config.json        the run's identity (:func:`run_identity`): the resolved config
                         (:class:`jacosr.recipe.ResolvedTrainConfig`) and, under
                         ``trained_on``, the data it trains on
      metrics.jsonl      one JSON object per --log-every steps: step, loss, accuracy, lr,
                         seconds (:mod:`jacosr.train`)
      dynamics.jsonl     with tracking on, one row per tracked step (:mod:`jacosr.tracking`)
      checkpoints/       Orbax checkpoints of the last --keep-checkpoints steps
                         (:mod:`jacosr.checkpoint` documents their layout)
      results.json       the evaluation (:class:`RunResults`): config, split, accuracy,
                         embedding geometry, one row of metrics per score, and the hardware

An experiment's workdir holds its own ``config.json`` (the experiment's config), its
``results.json`` (what the experiment measured: its own schema, documented by the experiment
module), its figures and tables, and its training runs below it: ``train/``,
``runs/<row>/seed<i>``, ``runs/<row>/<benchmark>/split<i>``, ``seed<i>/``.

``results.json`` of a training run only grows (:func:`results_to_keep`): a re-run with more
``--scores`` adds their rows; changed evaluation settings evaluate every row again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from tqdm.auto import tqdm

from jacosr.checkpoint import CHECKPOINTS as CHECKPOINT_FOLDER
from jacosr.checkpoint import CheckpointStore
from jacosr.config import from_dict, to_dict
from jacosr.data import OpenSetData, load_open_set
from jacosr.distributed import devices as run_devices
from jacosr.evaluate import EvalConfig
from jacosr.models import ModelState
from jacosr.recipe import ResolvedTrainConfig
from jacosr.step import ModelInputs, init_train_state
from jacosr.tracking import TrackConfig, measure, track_samples
from jacosr.workdir import CONFIG, Workdir, WorkdirError, config_diff

METRICS = "metrics.jsonl"
DYNAMICS = "dynamics.jsonl"
RESULTS = "results.json"
CHECKPOINTS = CHECKPOINT_FOLDER.name
TRAIN_OUTPUTS = (CHECKPOINT_FOLDER, METRICS, DYNAMICS, RESULTS)
"""What a training run writes in its workdir besides ``config.json`` (all that ``--overwrite``
may delete there; in ``checkpoints/``, only the checkpoints)."""
TRAINED_ON = "trained_on"
"""The key of a run's identity (``config.json``, each checkpoint) that records its data."""


def run_identity(config: ResolvedTrainConfig, data: OpenSetData) -> dict:
    """A run's identity, as ``config.json`` and each checkpoint hold it: the resolved config's
    dict and, under :data:`TRAINED_ON`, what the model depends on in ``data``
    (:meth:`jacosr.data.OpenSetData.training_identity`: source, known classes, image shape
    and dtype, size and SHA-256 of known-train). The data are what was trained on, whatever
    ``config.data`` says: :func:`jacosr.train.fit` takes data built from arrays too."""
    return {**to_dict(config), TRAINED_ON: data.training_identity()}


def hardware() -> dict:
    """What a run computes on, for every results file and the start of a run: the platform,
    the device kind, the number of devices it uses (:func:`jacosr.distributed.devices`: all of
    every process's, or the one of a ``--spread-runs`` run) and of processes, and the versions
    of jax, jaxlib, flax and Python. Not part of a run's identity: a run resumes anywhere."""
    devices = run_devices()
    return {
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "processes": jax.process_count(),
        "jax": jax.__version__,
        "jaxlib": version("jaxlib"),
        "flax": version("flax"),
        "python": platform.python_version(),
    }


def describe_hardware(found: Mapping[str, Any]) -> str:
    """One line of :func:`hardware`: ``4 cpu devices (cpu) in 1 process; jax 0.10.2, ...``."""
    devices = "device" if found["devices"] == 1 else "devices"
    processes = "process" if found["processes"] == 1 else "processes"
    return (
        f"{found['devices']} {found['platform']} {devices} ({found['device_kind']}) in "
        f"{found['processes']} {processes}; jax {found['jax']}, jaxlib {found['jaxlib']}, "
        f"flax {found['flax']}"
    )


class ResultsError(ValueError):
    """A results.json that is not what jacosr writes (damaged, or of something else)."""


def json_type(value: object) -> str:
    """The JSON type of a value ``json.loads`` gave, with its article, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


RESULTS_FIELDS = {
    "config": "an object",
    "accuracy": "a number",
    "split": "an object",
    "scores": "an object",
}
"""The fields of a training run's ``results.json`` that its readers rely on, each with its
JSON type as :meth:`RunResults.from_json` names it."""


@dataclass(frozen=True)
class RunResults:
    """A training run's ``results.json``: what :func:`jacosr.evaluate.evaluate` returns, the
    run's resolved config and the hardware it ran on.

    Attributes:
      config: the resolved config, as ``config.json`` holds it (without ``trained_on``).
      accuracy: closed-set accuracy on known-test.
      split: the data (:meth:`jacosr.data.OpenSetData.describe`: sources, classes, sizes,
        each split's SHA-256).
      scores: score name -> metric name -> value (``auroc``, ``aupr_in``, ``aupr_out``,
        ``fpr95``, ``oscr``, ``macro_f1`` when there is a known-val; null where undefined).
      eval: the evaluation settings, :class:`jacosr.evaluate.EvalConfig` as a dict; its
        ``scores`` lists every row of ``scores``.
      embedding: DBI, inter-class distance and intra/inter ratio of the known-test embeddings.
      subsets: score name -> split -> the samples scored, for the scores evaluated on a
        seeded subset (the Jacobian scores, ``--jacobian-max-samples``).
      hardware: :func:`hardware` of the process that evaluated the newest rows (None in a
        file written before it was recorded).
      jnd: the Jacobian norm difference (Eq. 20) ``{"estimate", "low", "high"}`` of the
        ``jacobian`` score's norms, when that score is evaluated (None otherwise).
    """

    config: dict
    accuracy: float
    split: dict
    scores: dict[str, dict[str, float | None]]
    eval: dict = dataclasses.field(default_factory=dict)
    embedding: dict = dataclasses.field(default_factory=dict)
    subsets: dict = dataclasses.field(default_factory=dict)
    hardware: dict | None = None
    jnd: dict | None = None

    @classmethod
    def from_json(cls, value: Any, path: Path) -> RunResults:
        """Check ``value`` (a parsed ``results.json`` at ``path``) as far as its readers rely
        on it: an object with the fields of :data:`RESULTS_FIELDS`, of their types, each score row
        an object of metric -> number or null; the other fields, when there, objects.
        :class:`ResultsError` names the file and what is wrong with it."""
        if not isinstance(value, dict):
            raise ResultsError(f"{path} holds {json_type(value)}, not an object")
        missing = [name for name in RESULTS_FIELDS if name not in value]
        if missing:
            raise ResultsError(
                f"{path} lacks {', '.join(map(repr, missing))} (a training run's results.json "
                f"holds {', '.join(RESULTS_FIELDS)})"
            )
        for name, wanted in RESULTS_FIELDS.items():
            if json_type(value[name]) != wanted:
                raise ResultsError(f"{path}: {name!r} is {json_type(value[name])}, not {wanted}")
        for name in ("eval", "embedding", "subsets", "hardware", "jnd"):  # null: not recorded
            if value.get(name) is not None and not isinstance(value[name], dict):
                raise ResultsError(
                    f"{path}: {name!r} is {json_type(value[name])}, not an object or null"
                )
        for score, row in value["scores"].items():
            if not isinstance(row, dict):
                raise ResultsError(
                    f"{path}: scores[{score!r}] is {json_type(row)}, not an object of metric -> "
                    "value"
                )
            for metric, number in row.items():
                if json_type(number) not in ("a number", "null"):
                    raise ResultsError(
                        f"{path}: scores[{score!r}][{metric!r}] is {json_type(number)}, not a "
                        "number or null"
                    )
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: v for name, v in value.items() if name in fields and v is not None})

    def to_json(self) -> dict:
        """The record as ``results.json`` holds it."""
        return dataclasses.asdict(self)

    def value(self, path: tuple[str, ...]) -> float:
        """The number at ``path`` in the record, e.g. ``("scores", "loss", "auroc")`` or
        ``("accuracy",)``: a table's cell."""
        value: Any = self.to_json()
        for key in path:
            value = value[key]
        return float(value)

    def covers(self, evaluation: EvalConfig) -> bool:
        """Whether the record holds every score of ``evaluation``, evaluated under its
        settings (reject rate, the scores' settings)."""
        same = _settings(self.eval) == _settings(to_dict(evaluation))
        return bool(self.eval) and same and set(evaluation.scores) <= set(self.scores)


def _settings(evaluation: dict) -> dict:
    """The evaluation settings shared by every row of a results table (all but the names)."""
    return {k: v for k, v in evaluation.items() if k != "scores"}


def read_json(path: Path) -> Any:
    """The JSON value in the file ``path``. ``FileNotFoundError`` when there is none; a file
    that cannot be read as JSON (unreadable, empty, not UTF-8, not JSON, nested too deeply)
    is a :class:`ResultsError` naming it and why."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ResultsError(f"{path} cannot be read: {err.strerror or err}") from None
    if not data.strip():
        raise ResultsError(f"{path} is empty")
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ResultsError(f"{path} is not JSON ({err})") from None
    except RecursionError:
        raise ResultsError(f"{path} is JSON nested too deeply to read") from None


def read_results(workdir: Path) -> RunResults:
    """The :class:`RunResults` of the training run in ``workdir``: ``FileNotFoundError``
    when it has none, :class:`ResultsError` when its results.json is not one."""
    path = Path(workdir) / RESULTS
    return RunResults.from_json(read_json(path), path)


def saved_results(workdir: Path, config: ResolvedTrainConfig) -> RunResults | None:
    """The workdir's results when they are results of ``config`` (else None: none yet,
    unreadable, or of another run, which training the run in this workdir will replace)."""
    try:
        results = read_results(workdir)
    except (OSError, ResultsError):
        return None
    return results if results.config == to_dict(config) else None


def results_to_keep(
    saved: RunResults | None, evaluation: EvalConfig
) -> tuple[dict[str, dict], list[str]]:
    """What a new evaluation under ``evaluation`` does with ``saved``: ``(kept, names)``, the
    score rows it keeps and the names of every row of the new results (``saved``'s, then the
    new ones; results.json only grows). Every row is kept, unless the evaluation settings
    changed: then none, with a warning, and every row is evaluated again under the new
    settings rather than kept under a label it was not computed with (the reject rate changes
    every macro-F1)."""
    if saved is None:
        return {}, list(evaluation.scores)
    names = [*saved.scores, *(n for n in evaluation.scores if n not in saved.scores)]
    new = _settings(to_dict(evaluation))
    if _settings(saved.eval) == new:
        return dict(saved.scores), names
    warnings.warn(
        f"the evaluation settings differ from those of the scores in {RESULTS} "
        f"({config_diff(_settings(saved.eval), new)}); evaluating all of them again under the "
        f"new ones ({', '.join(names)}), so that its rows share one set of settings",
        stacklevel=3,
    )
    return {}, names


def merge_results(
    config: ResolvedTrainConfig,
    evaluation: EvalConfig,
    names: list[str],
    kept: dict,
    fresh: dict,
    saved: RunResults | None,
) -> RunResults:
    """The results of ``config``: the rows ``names``, from ``kept`` where it has them, else
    from ``fresh`` (what :func:`jacosr.evaluate.evaluate` returned for the others, under
    ``evaluation``'s settings); the rest of the record (accuracy, split, geometry) is
    ``fresh``'s, the JND ``fresh``'s or, with a kept ``jacobian`` row, ``saved``'s, and the
    hardware this process's."""
    jnd = fresh.get("jnd")
    if jnd is None and saved is not None and "jacobian" in kept:
        jnd = saved.jnd
    scores = {name: kept[name] if name in kept else fresh["scores"][name] for name in names}
    return RunResults(
        config=to_dict(config),
        accuracy=fresh["accuracy"],
        split=fresh["split"],
        eval=to_dict(dataclasses.replace(evaluation, scores=tuple(names))),
        embedding=fresh["embedding"],
        scores=scores,
        subsets=fresh["subsets"],
        hardware=hardware(),
        jnd=jnd,
    )


def write_results(opened: Workdir, results: RunResults) -> None:
    """Write ``results`` as the workdir's ``results.json`` (atomically; process 0 only)."""
    opened.write_json(RESULTS, results.to_json())


def read_outputs(workdir: Path) -> dict:
    """An experiment's own ``results.json`` in ``workdir`` as written last (``{}`` when there
    is none yet, or it cannot be read: the experiment then measures again what it would have
    reused). The experiments keep their measurements there, keyed by run, and reuse them
    while the run and the settings are unchanged (:func:`measure_runs`)."""
    try:
        value = read_json(Path(workdir) / RESULTS)
    except (OSError, ResultsError):
        return {}
    return value if isinstance(value, dict) else {}


def read_dynamics(workdir: Path) -> list[dict]:
    """The rows of ``<workdir>/dynamics.jsonl`` (a run trained with tracking), in step order."""
    path = Path(workdir) / DYNAMICS
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: was the run in {workdir} trained with tracking "
            "(--track-every, --track-steps or --track-points)?"
        )
    return [json.loads(line) for line in path.read_text().splitlines()]


def read_identity(workdir: Path) -> tuple[ResolvedTrainConfig, dict, dict | None]:
    """The training run in ``<workdir>/config.json`` (:func:`run_identity`): ``(config,
    identity, trained_on)``, ``trained_on`` None for a run older than the record.
    ``FileNotFoundError`` when there is no such file; ``ValueError`` naming it when it does
    not hold a training run's config (and how to mend it)."""
    workdir = Path(workdir)
    path = workdir / CONFIG
    if not path.exists():
        raise FileNotFoundError(f"{workdir} has no {CONFIG}; is it a jacosr workdir?")
    try:
        identity = json.loads(path.read_text())
        trained_on = identity.get(TRAINED_ON)
        config = {k: v for k, v in identity.items() if k != TRAINED_ON}
        return from_dict(ResolvedTrainConfig, config), identity, trained_on
    except (ValueError, TypeError, AttributeError) as err:
        fix = (
            "each checkpoint keeps a copy of the run's config (checkpoints/<step>/config/"
            "metadata): copy one over it"
            if (workdir / CHECKPOINTS).is_dir()
            else "is it a training run's workdir? (find_runs lists those below a folder)"
        )
        raise ValueError(
            f"{path} is not the config of a training run ({type(err).__name__}: {err}); {fix}"
        ) from None


def load_run(
    workdir: Path, step: int | None = None, *, data: bool = True
) -> tuple[ResolvedTrainConfig, OpenSetData | None, nnx.GraphDef, ModelState]:
    """A run's (resolved) config, data and model, from its workdir: ``(config, data,
    graphdef, model_state)`` (for notebooks and analyses).

    ``step``: which checkpoint (default: the newest intact one; the run keeps its last
    ``keep_checkpoints``, :meth:`jacosr.checkpoint.CheckpointStore.steps` lists them).
    ``data=False`` skips loading the data set (``data`` is then None): the network is built
    from the ``model`` item stored in the checkpoint (image shape, number of known classes),
    so a checkpoint opens without its data set (a checkpoint saved before that item existed
    needs the data set, which is then loaded anyway).

    The checkpoint is verified as by :func:`jacosr.train.fit`: without ``step`` a damaged one
    is skipped with a warning; with ``step`` (an int), a missing one is an error naming the
    steps there are, a damaged one an error naming the intact ones. A ``config.json`` that
    does not hold a training run's config is a ``ValueError`` naming it
    (:func:`read_identity`). Read-only, without taking the workdir's lock (a run may be
    training there).
    """
    workdir = Path(workdir)
    config, identity, trained_on = read_identity(workdir)
    with CheckpointStore(workdir, read_only=True) as store:
        if not store.steps():
            raise FileNotFoundError(f"no checkpoint in {store.directory}")
        item = store.model(step)
        loaded = load_open_set(config.data) if data or item is None else None
        inputs = (
            loaded if item is None else ModelInputs(tuple(item["image_shape"]), item["num_known"])
        )
        graphdef, template = init_train_state(config, inputs)
        if loaded is not None and trained_on not in (None, loaded.training_identity()):
            raise WorkdirError(
                f"{workdir} was trained on other data than its config loads now ("
                f"{config_diff(trained_on, loaded.training_identity())}): the data set was "
                "prepared again from other files, or the run was trained from Python on data "
                "of its own; load_run(..., data=False) opens the model without its data"
            )
        state, _ = store.restore(template, identity, step=step)
    return config, loaded, graphdef, state.model


def find_runs(path: Path) -> list[Path]:
    """The training runs at or below ``path`` (folders holding ``config.json`` and
    ``checkpoints/``), sorted: ``[path]`` for a training run, the runs of an experiment's
    workdir (``train/``, ``runs/<row>/seed<i>``, ``seed<i>/``) otherwise."""
    found = []
    for folder, subfolders, files in os.walk(path):
        if CONFIG in files and CHECKPOINTS in subfolders:
            found.append(Path(folder))
        subfolders[:] = sorted(d for d in subfolders if d != CHECKPOINTS)
    return sorted(found)


def collect(paths: tuple[Path, ...]) -> dict[str, RunResults]:
    """``label -> results`` of every training run found at or below ``paths`` (each once, in
    the order given; the label is the run's path). A run without results.json (unfinished,
    or trained by ``fit`` alone) or with one that cannot be read is left out with a warning
    naming it and why; the others are kept.

    Raises ``FileNotFoundError`` for a path that does not exist or holds no training run,
    and ``ValueError`` when no run found has readable results."""
    found: dict[Path, str] = {}
    for path in paths:
        if not Path(path).exists():
            raise FileNotFoundError(f"{path} does not exist; give workdirs of jacosr runs")
        runs = find_runs(path)
        if not runs:
            raise FileNotFoundError(
                f"{path} holds no training run (a folder with {CONFIG} and {CHECKPOINTS}/)"
            )
        for run in runs:
            found.setdefault(run.resolve(), str(run))
    results, missing, damaged = {}, [], 0
    for run, label in found.items():
        try:
            results[label] = read_results(run)
        except FileNotFoundError:
            missing.append(label)
        except ResultsError as err:
            damaged += 1
            warnings.warn(
                f"left out run {label}: {err}; re-running its `python -m jacosr.train` command "
                "evaluates it again and rewrites the file",
                stacklevel=2,
            )
    if missing:
        warnings.warn(
            f"left out {len(missing)} run(s) without {RESULTS} (unfinished, or trained by "
            f"fit alone; evaluate one with `python -m jacosr.train` and its flags): "
            f"{', '.join(missing)}",
            stacklevel=2,
        )
    if not results:
        raise ValueError(
            f"none of the runs in {', '.join(map(str, paths))} has a readable {RESULTS} "
            f"({len(missing)} without one, {damaged} damaged; see the warnings above)"
        )
    return results


def run_digest(results: RunResults) -> str:
    """SHA-256 of a finished run's config and split (classes and the data's SHA-256): a
    measurement of the run is reused only while this is unchanged."""
    text = json.dumps({"config": results.config, "split": results.split}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def measure_final(path: Path, steps: int, track: TrackConfig) -> dict:
    """The row :func:`jacosr.tracking.measure` gives the final model (step ``steps``) of the
    run in ``path``, on the samples and with the key a run tracked with ``track`` would use
    at that step. Read-only (:func:`load_run`)."""
    config, data, graphdef, state = load_run(path, step=steps)
    samples = track_samples(data, track.track_samples, track.track_seed)
    key = jax.random.fold_in(jax.random.key(track.track_seed), steps)
    return measure(graphdef, state, samples, config.loss, track, key)


def measure_runs(
    runs: Mapping[str, tuple[Path, RunResults]],
    track: TrackConfig,
    saved: Mapping[str, dict],
    *,
    progress: bool = True,
) -> dict[str, dict]:
    """Measure the final model of every finished run: ``name -> record``.

    ``runs``: name -> ``(path, results)``, the run's folder and its results; ``saved``:
    records of an earlier call (an experiment's results.json, :func:`read_outputs`), reused
    when they hold the same run (:func:`run_digest`) measured with the same ``track``
    settings. A record is the measured row and ``{"path", "dataset", "known_classes",
    "seed", "steps", "identity", "measured_with"}``.
    """
    settings = to_dict(track)
    records = {}
    bar = tqdm(runs.items(), desc="measuring", unit="model", disable=not progress)
    for name, (path, results) in bar:
        identity = run_digest(results)
        old = saved.get(name, {})
        if old.get("identity") == identity and old.get("measured_with") == settings:
            records[name] = old
            continue
        steps = results.config["steps"]
        records[name] = {
            "path": str(path),
            "dataset": results.split["benchmark"] or results.split["source"],
            "known_classes": results.split["known_classes"],
            "seed": results.config["seed"],
            "steps": steps,
            "identity": identity,
            "measured_with": settings,
            **measure_final(path, steps, track),
        }
    return records
