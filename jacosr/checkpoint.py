"""Orbax checkpoints of a run: the state pytree, the run's identity, the model's inputs and a
checksum, verified.

Layout (an Orbax ``CheckpointManager`` directory; every item a plain Orbax item, so a checkpoint
restores without jacosr, see below)::

    <workdir>/checkpoints/<step>/    one checkpoint; a run keeps its last ``keep_checkpoints``
      state/        the TrainState pytree (Orbax ``StandardSave``: OCDBT + Zarr array files)
      config/       JSON: the run's identity, the resolved config as in ``config.json``
      model/        JSON: what building the network takes besides the config, so that no data
                    set is needed to restore it: ``{"image_shape": [H, W, C], "num_known": K,
                    "backbone", "embed_dim", "head", "rotation_head"}`` (checkpoints of runs
                    older than this item lack it)
      checksum/     JSON: ``{"sha256": ...}`` of the state (:func:`state_digest`)
      sha256.json   SHA-256 of every file of the items above (jacosr's verification)
      _CHECKPOINT_METADATA, commit_success.txt     Orbax's bookkeeping

The state, as plain Orbax returns it (nested dicts; ``/`` separates keys)::

    step                                      int32 []: optimisation steps taken
    model/params/<module path>/<name>/value   the network's parameters
    model/batch_stats/<module path>/<name>/value    BatchNorm running mean and var
    opt_state/1/0/trace/<module path>/<name>/value  SGD momentum, one per parameter
    opt_state/1/1/count                       int32 []: the learning-rate schedule's count

``TrainState`` and ``ModelState`` are NamedTuples, stored as dicts of their field names; the
optimiser state is optax's chain ``(add_decayed_weights: empty, (sgd trace, schedule count))``,
stored as lists (``0``, ``1``). The module path is the attribute path in the
:class:`jacosr.models.OpenSetNet` (``backbone/hidden/0``, ``head/prototypes``, ``rotation/...``):
every ``value`` level is an NNX ``Variable`` (``nnx.Param``, ``nnx.BatchStat``), which flattens
to a dict holding its array under ``value``, and a list of layers (``nnx.List``) gives keys
``0``, ``1``, ... in layer order. For the digits MLP, ``model/params/backbone/hidden/0/kernel/
value`` is ``[64, W]``: the flattened 8x8x1 image times the width. To restore with Orbax alone::

    import orbax.checkpoint as ocp

    items = dict(state=ocp.args.StandardRestore(), model=ocp.args.JsonRestore(),
                 config=ocp.args.JsonRestore())
    with ocp.CheckpointManager(Path("runs/digits-movr/checkpoints").absolute()) as manager:
        ckpt = manager.restore(manager.latest_step(), args=ocp.args.Composite(**items))
    ckpt["state"]["model"]["params"]["head"]["prototypes"]["value"]  # [K, D] array
    ckpt["model"]["image_shape"], ckpt["config"]["loss"]["loss"]      # [8, 8, 1], "movr"

With jacosr, :func:`jacosr.runs.load_run` (``step=`` any kept checkpoint, ``data=False`` to
skip the data set) builds the network from ``model`` and ``config`` and restores it verified.

Saves are synchronous and atomic: Orbax writes into ``<step>.orbax-checkpoint-tmp`` and
renames it when complete (``sha256.json`` is written just before), so a run killed at any
moment leaves every completed checkpoint intact (a run's state is a few MB, so a synchronous
save is short next to the training between checkpoints, and a failed save raises at
the save, with its cause, instead of in a background thread later). A run that opens a workdir
(its lock held, so no save is in progress) deletes the stray temporary folders of killed saves.

Restoring verifies a checkpoint twice: its files against ``sha256.json`` before Orbax reads them
(so damaged files are never decoded: TensorStore's failing readers print pages of tracebacks),
and the state Orbax returns against ``checksum``; every floating-point value must be finite. A
damaged checkpoint (garbage bytes, a truncated or missing file, an unreadable item) is skipped
with a :class:`DamagedCheckpointWarning` naming it and the checkpoint used instead, the newest
intact one; when none is intact, :class:`DamagedCheckpointError` (also when the one checkpoint
asked for by step is damaged: it is never replaced by another). The identity stored beside
the state must equal the current run's (else :class:`jacosr.workdir.WorkdirError` naming what
differs), so a checkpoint is never restored under another config.

Fault injection, for the tests of these guarantees: with ``JACOSR_FAULT=<point>:<step>`` in
the environment, the process SIGKILLs itself (no clean-up, like ``kill -9`` or a power cut) at

- ``after-step:N``: right after the metrics line of step N is written (N a multiple of
  ``log_every``), before any checkpoint of step N is saved;
- ``during-save:N``: during the save of checkpoint N, when all its data are written into
  ``N.orbax-checkpoint-tmp`` but before that folder is committed and renamed to ``N``;
- ``after-save:N``: right after checkpoint N is saved (committed; older checkpoints beyond
  ``keep`` already deleted).

Unset (always, outside tests), :func:`fault_point` does nothing.

Several processes (``jax.distributed``, :mod:`jacosr.distributed`): every process opens the
store and calls each save and restore (Orbax's saves are collective: each process writes the
shards it holds, one copy of a replicated array, and process 0 commits once all have written);
process 0 alone writes the JSON items, deletes stray temporary folders and, in the commit,
``sha256.json`` (so the digests cover every process's files). Every process verifies what it
restores. ``during-save`` fires in process 0 only (the commit is its); ``after-step`` and
``after-save`` fire in every process, which is how the tests kill a whole multi-process run at
one step.
"""

from __future__ import annotations

import hashlib
import json
import numbers
import os
import re
import shutil
import signal
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from jacosr.config import MAKE_ROOM
from jacosr.distributed import is_writer
from jacosr.workdir import OutputFolder, WorkdirError, config_diff

FAULT_ENV = "JACOSR_FAULT"
FAULT_POINTS = ("after-step", "during-save", "after-save")
TMP_SUFFIX = ocp.path.atomicity.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
CHECKPOINTS = OutputFolder("checkpoints", rf"\d+({re.escape(TMP_SUFFIX)}(-\d+)?)?")
"""``<workdir>/checkpoints``, a run's output folder: what the store writes there are the step
folders and the temporary folders of saves (``<step>.orbax-checkpoint-tmp``; older Orbax
versions add ``-<timestamp>``); Orbax writes nothing else there with this store's options, so
anything else is the user's (kept by ``--overwrite``)."""
METADATA_BYTES = 1 << 20  # room for Orbax's metadata files, beside the arrays' bytes


def fault_point(point: str, step: int) -> None:
    """SIGKILL this process if ``JACOSR_FAULT`` is ``<point>:<step>`` (see the module docstring)."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return
    name, _, at = spec.partition(":")
    if name not in FAULT_POINTS or not at.isdigit():
        raise ValueError(
            f"{FAULT_ENV}={spec!r}: expected <point>:<step> with point one of "
            f"{', '.join(FAULT_POINTS)}"
        )
    if name == point and int(at) == step:
        os.kill(os.getpid(), signal.SIGKILL)


FILE_DIGESTS = "sha256.json"
# Written by Orbax's commit itself, after FILE_DIGESTS; read only by Orbax's bookkeeping.
_COMMIT_FILES = frozenset({FILE_DIGESTS, "commit_success.txt", "_CHECKPOINT_METADATA"})


def _file_digests(folder: Path) -> dict[str, str]:
    """``relative path -> SHA-256`` of the files of a checkpoint folder (commit files aside)."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and str(path.relative_to(folder)) not in _COMMIT_FILES
    }


class _VerifiedTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):
    """Orbax's atomic-rename protocol; before a step's folder is renamed (its items complete),
    write :data:`FILE_DIGESTS` into it, then the ``during-save`` fault point. Orbax finalizes in
    its primary process (process 0) only, after every process has written its files."""

    async def finalize(self, *args, **kwargs):
        final = self.get_final()
        if final.name.isdigit():  # the step's folder, not one of its items
            folder = Path(str(self.get()))
            digests = json.dumps(_file_digests(folder), indent=1)
            (folder / FILE_DIGESTS).write_text(digests + "\n")
            fault_point("during-save", int(final.name))
        return await super().finalize(*args, **kwargs)


class CheckpointError(OSError):
    """A checkpoint could not be written or read back intact."""


class DamagedCheckpointError(CheckpointError):
    """A workdir has checkpoints, but none of them is intact."""


class DamagedCheckpointWarning(UserWarning):
    """A damaged checkpoint was skipped in favour of an older, intact one."""


def state_digest(state: Any) -> str:
    """SHA-256 of a pytree of arrays: tree paths, dtypes, shapes and bytes, in tree order."""
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(state):
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f"{jax.tree_util.keystr(path)}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _cause(err: BaseException) -> str:
    """What went wrong under ``err``, in a few words: the innermost OS error (``No space left
    on device (path)``), also when TensorStore reports it as text; else the first line."""
    seen, found = err, None
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            found = seen
        seen = seen.__cause__ or seen.__context__
    if found is not None:
        return f"{found.strerror} ({found.filename})" if found.filename else found.strerror
    text = str(err).strip()
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        path = re.search(r'local file "([^"]+)"', text)
        return os.strerror(int(code.group(1))) + (f" ({path.group(1)})" if path else "")
    first = text.splitlines()[0] if text else type(err).__name__
    return first if len(first) <= 300 else first[:300] + "..."


class CheckpointStore:
    """``<workdir>/checkpoints``: the last ``keep`` checkpoints of a run (see the module
    docstring). ``read_only`` opens it for restoring only (nothing is created or deleted),
    so a read-only workdir can be re-evaluated."""

    def __init__(self, workdir: Path, *, keep: int = 3, read_only: bool = False):
        if keep < 1:
            raise ValueError(
                f"keep must be >= 1 (a run resumes from its last checkpoint); got {keep}"
            )
        self.directory = Path(workdir).absolute() / CHECKPOINTS.name
        self.read_only = read_only
        if not read_only and is_writer():
            for stray in self.directory.glob(f"*{TMP_SUFFIX}*"):
                if re.fullmatch(CHECKPOINTS.entries, stray.name):
                    shutil.rmtree(stray)
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                preservation_policy=ocp.checkpoint_managers.LatestN(keep),
                # Not Orbax's read_only option, which logs warnings on every open: a store
                # opened read-only here creates nothing and never saves or deletes.
                create=not read_only,
                enable_async_checkpointing=False,
                temporary_path_class=_VerifiedTemporaryPath,
            ),
        )

    def __enter__(self) -> CheckpointStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def steps(self) -> list[int]:
        """The steps of the saved checkpoints (intact or not), oldest first."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, identity: dict, *, model: dict | None = None) -> None:
        """Save ``state`` (a pytree of arrays), the run's ``identity`` (JSON), the ``model``
        item (JSON: what building the network takes besides the config, see the module
        docstring; left out when None) and the state's checksum as checkpoint ``step``.

        Raises :class:`CheckpointError` saying what failed (e.g. no space left on device) and
        which older checkpoint is intact; the partial checkpoint is never used.
        """
        if self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only")
        checksum = {"sha256": state_digest(state)}
        # A full disk is refused before Orbax starts writing: its failing writer threads
        # print pages of tracebacks around the one error that matters.
        needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state)) + METADATA_BYTES
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory}: No space left on "
                f"device ({free / 1e6:.1f} MB free, about {needed / 1e6:.1f} MB needed); "
                f"{self.describe_intact(state)}; {MAKE_ROOM}"
            )
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state),
                    config=ocp.args.JsonSave(identity),
                    checksum=ocp.args.JsonSave(checksum),
                    **({} if model is None else {"model": ocp.args.JsonSave(model)}),
                ),
            )
        except Exception as err:
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory}: {_cause(err)}; "
                f"{self.describe_intact(state)}; {MAKE_ROOM}"
            ) from err
        fault_point("after-save", step)

    def _verify_files(self, step: int) -> None:
        """Checkpoint ``step``'s files against its ``sha256.json``; raises ``ValueError``
        saying why it is damaged."""
        folder = self.directory / str(step)
        try:
            expected = dict(json.loads((folder / FILE_DIGESTS).read_text()))
        except (OSError, ValueError, TypeError):
            raise ValueError(f"its {FILE_DIGESTS} is missing or unreadable") from None
        found = _file_digests(folder)
        for name, digest in expected.items():
            if found.get(name) != digest:
                raise ValueError(f"{name} is {'changed' if name in found else 'missing'}")

    def _read(self, step: int, template: Any) -> tuple[Any, dict]:
        """Checkpoint ``step``'s (state, identity), verified; raises ``ValueError`` saying
        why it is damaged."""
        self._verify_files(step)
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract),
                    config=ocp.args.JsonRestore(),
                    checksum=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:  # Orbax and TensorStore raise many types on bad data
            raise ValueError(f"unreadable: {_cause(err)}") from err
        state, checksum = restored["state"], restored["checksum"]
        if not isinstance(checksum, dict) or "sha256" not in checksum:
            raise ValueError("it has no checksum")
        if jax.tree.structure(state) != jax.tree.structure(template):
            raise ValueError("its state has another structure")
        for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(abstract), strict=True):
            if leaf.shape != want.shape or leaf.dtype != want.dtype:
                raise ValueError(f"an array has shape {leaf.shape} {leaf.dtype}, not {want}")
        if state_digest(state) != checksum["sha256"]:
            raise ValueError("its data do not match the checksum saved with them")
        leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
        if not all(np.isfinite(x).all() for x in leaves if np.issubdtype(x.dtype, np.inexact)):
            raise ValueError("it holds values that are not finite")
        return state, restored["config"]

    def _existing(self, step: int) -> int:
        """``step`` if it is one of the saved checkpoints, else ``FileNotFoundError`` naming
        them (``TypeError`` when ``step`` is not an integer: ``"160"`` is no step)."""
        steps = self.steps()
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(
                f"step must be an int, one of the steps of the checkpoints in {self.directory} "
                f"({steps or 'none'}); got {step!r}"
            )
        if step not in steps:
            raise FileNotFoundError(
                f"no checkpoint {step} in {self.directory}; its checkpoints are at steps "
                f"{steps or 'none'}"
            )
        return step

    def _files_intact(self, step: int) -> bool:
        try:
            self._verify_files(step)
        except ValueError:
            return False
        return True

    def _damaged(self, step: int, why: str) -> DamagedCheckpointError:
        """The error for checkpoint ``step``, asked for by step and damaged (``why``): it is
        never replaced by another, so the message lists those whose files are intact."""
        intact = [other for other in self.steps() if other != step and self._files_intact(other)]
        choose = f"its intact checkpoints are at steps {intact}" if intact else "none is intact"
        return DamagedCheckpointError(
            f"checkpoint {step} in {self.directory} is damaged ({why}); {choose}"
        )

    def model(self, step: int | None = None) -> dict | None:
        """The ``model`` item of checkpoint ``step`` (default: of the newest checkpoint whose
        files are intact; a run's checkpoints share it), verified against ``sha256.json``;
        None for checkpoints saved without one. Reads no array.

        Raises ``FileNotFoundError`` when there is no such checkpoint, and
        :class:`DamagedCheckpointError` when the files of checkpoint ``step`` (or of every
        checkpoint) are damaged.
        """
        steps = reversed(self.steps()) if step is None else [self._existing(step)]
        damaged = []
        for candidate in steps:
            try:
                self._verify_files(candidate)
            except ValueError as err:
                damaged.append((candidate, str(err)))
                continue
            if not (self.directory / str(candidate) / "model").is_dir():
                return None
            args = ocp.args.Composite(model=ocp.args.JsonRestore())
            try:
                return self._manager.restore(candidate, args=args)["model"]
            except Exception as err:  # Orbax raises many types on bad data
                damaged.append((candidate, f"unreadable: {_cause(err)}"))
        if step is not None:
            raise self._damaged(step, damaged[0][1])
        if not damaged:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        reasons = "; ".join(f"checkpoint {s}: {why}" for s, why in damaged)
        raise DamagedCheckpointError(f"no intact checkpoint in {self.directory} ({reasons})")

    def newest_intact(
        self, template: Any, *, step: int | None = None
    ) -> tuple[int, Any, dict, list[tuple[int, str]]]:
        """The newest checkpoint that reads back intact: ``(step, state, identity, damaged)``
        where ``damaged`` lists the newer ``(step, reason)`` that did not. With ``step``, only
        that checkpoint is read (``damaged`` is empty).

        Raises ``FileNotFoundError`` when there is no checkpoint (or none at ``step``),
        :class:`DamagedCheckpointError` when none is intact (or checkpoint ``step`` is not).
        """
        if step is not None:
            try:
                state, identity = self._read(self._existing(step), template)
            except ValueError as err:
                raise self._damaged(step, str(err)) from None
            return step, state, identity, []
        damaged = []
        for step in reversed(self.steps()):
            try:
                state, identity = self._read(step, template)
            except ValueError as err:
                damaged.append((step, str(err)))
                continue
            return step, state, identity, damaged
        if not damaged:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        reasons = "; ".join(f"checkpoint {s}: {why}" for s, why in damaged)
        raise DamagedCheckpointError(
            f"no intact checkpoint in {self.directory} ({reasons}); pass --overwrite to delete "
            "the run and train it again, or choose another --workdir"
        )

    def describe_intact(self, template: Any) -> str:
        """``"the last intact checkpoint (step N) in <dir> is intact"``-style clause for error
        messages, verified by reading it back."""
        try:
            step = self.newest_intact(template)[0]
        except (FileNotFoundError, DamagedCheckpointError):
            return "no intact checkpoint had been saved yet"
        return f"the last good checkpoint (step {step}) in {self.directory} is intact (verified)"

    def restore(
        self, template: Any, identity: dict, *, step: int | None = None
    ) -> tuple[Any, list[int]]:
        """The state of the newest intact checkpoint (``None`` if there is no checkpoint), and
        the newer damaged steps it skipped (a :class:`DamagedCheckpointWarning` each); with
        ``step``, the state of that checkpoint (never another).

        ``template``: a pytree of the state's structure (arrays or ShapeDtypeStructs) that
        gives Orbax the shapes and dtypes. Raises :class:`jacosr.workdir.WorkdirError` when the
        checkpoint was saved by a run whose ``identity`` differs, and
        :class:`DamagedCheckpointError` when no checkpoint is intact (or checkpoint ``step``
        is damaged); ``FileNotFoundError`` when there is no checkpoint ``step``.
        """
        identity = json.loads(json.dumps(identity))  # as stored: tuples are lists
        try:
            step, state, stored, damaged = self.newest_intact(template, step=step)
        except FileNotFoundError:
            if step is not None:
                raise
            return None, []
        for bad, why in damaged:
            warnings.warn(
                f"checkpoint {bad} in {self.directory} is damaged ({why}); using checkpoint "
                f"{step}, the newest intact one",
                DamagedCheckpointWarning,
                stacklevel=2,
            )
        if stored != identity:
            differs = isinstance(stored, dict) and config_diff(stored, identity)
            raise WorkdirError(
                f"checkpoint {step} in {self.directory} was saved by a run with another config "
                f"({differs or str(stored)[:200]}); choose another --workdir, or pass "
                "--overwrite to delete the old run"
            )
        return state, [bad for bad, _ in damaged]

    def delete(self, steps: list[int]) -> None:
        """Delete checkpoints (damaged ones, before training saves those steps again)."""
        if steps and self.read_only:
            raise RuntimeError(f"{self.directory} was opened read-only")
        for step in steps:
            self._manager.delete(step)

    def close(self) -> None:
        """Release the manager (saves are synchronous: nothing is pending)."""
        self._manager.close()
