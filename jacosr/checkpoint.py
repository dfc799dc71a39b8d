"""Orbax checkpoints of a run: the state pytree, the run's identity and a checksum, verified.

Each checkpoint ``<workdir>/checkpoints/<step>`` holds three items: ``state`` (the pytree of
arrays), ``config`` (the run's identity: the dict of its config, as in ``config.json``) and
``checksum`` (SHA-256 of the state's bytes, dtypes, shapes and tree paths, taken from the
in-memory state at save time), and ``sha256.json``, the SHA-256 of every file Orbax wrote for
them. Saves are synchronous and atomic: Orbax writes into ``<step>.orbax-checkpoint-tmp`` and
renames it when complete (``sha256.json`` is written just before), so a run killed at any
moment leaves every completed checkpoint intact (a run's state is a few MB, so a synchronous
save costs milliseconds next to the training between checkpoints, and a failed save raises at
the save, with its cause, instead of in a background thread later). A run that opens a workdir
(its lock held, so no save is in progress) deletes the stray temporary folders of killed saves.

Restoring verifies a checkpoint twice: its files against ``sha256.json`` before Orbax reads them
(so damaged files are never decoded: TensorStore's failing readers print pages of tracebacks),
and the state Orbax returns against ``checksum``; every floating-point value must be finite. A
damaged checkpoint (garbage bytes, a truncated or missing file, an unreadable item) is skipped
with a :class:`DamagedCheckpointWarning` naming it and the checkpoint used instead, the newest
intact one; when none is intact, :class:`DamagedCheckpointError`. The identity stored beside
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
"""

from __future__ import annotations

import hashlib
import json
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

from jacosr.workdir import WorkdirError, config_diff

FAULT_ENV = "JACOSR_FAULT"
FAULT_POINTS = ("after-step", "during-save", "after-save")
TMP_SUFFIX = ocp.path.atomicity.TMP_DIR_SUFFIX  # ".orbax-checkpoint-tmp"
METADATA_BYTES = 1 << 20  # room for Orbax's metadata files, beside the arrays' bytes
MAKE_ROOM = (
    "make room (free disk space, or raise the file-size limit) and re-run the same command "
    "to resume"
)


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
    write :data:`FILE_DIGESTS` into it, then the ``during-save`` fault point."""

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
        self.directory = Path(workdir).absolute() / "checkpoints"
        self.read_only = read_only
        if not read_only:
            for stray in self.directory.glob(f"*{TMP_SUFFIX}*"):
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

    def save(self, step: int, state: Any, identity: dict) -> None:
        """Save ``state`` (a pytree of arrays), the run's ``identity`` (JSON) and the state's
        checksum as checkpoint ``step``.

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
                ),
            )
        except Exception as err:
            raise CheckpointError(
                f"could not write checkpoint {step} to {self.directory}: {_cause(err)}; "
                f"{self.describe_intact(state)}; {MAKE_ROOM}"
            ) from err
        fault_point("after-save", step)

    def _read(self, step: int, template: Any) -> tuple[Any, dict]:
        """Checkpoint ``step``'s (state, identity), verified; raises ``ValueError`` saying
        why it is damaged."""
        folder = self.directory / str(step)
        try:
            expected = dict(json.loads((folder / FILE_DIGESTS).read_text()))
        except (OSError, ValueError, TypeError):
            raise ValueError(f"its {FILE_DIGESTS} is missing or unreadable") from None
        found = _file_digests(folder)
        for name, digest in expected.items():
            if found.get(name) != digest:
                raise ValueError(f"{name} is {'changed' if name in found else 'missing'}")
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

    def newest_intact(self, template: Any) -> tuple[int, Any, dict, list[tuple[int, str]]]:
        """The newest checkpoint that reads back intact: ``(step, state, identity, damaged)``
        where ``damaged`` lists the newer ``(step, reason)`` that did not.

        Raises ``FileNotFoundError`` when there is no checkpoint, :class:`DamagedCheckpointError`
        when none is intact.
        """
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

    def restore(self, template: Any, identity: dict) -> tuple[Any, list[int]]:
        """The state of the newest intact checkpoint (``None`` if there is no checkpoint), and
        the newer damaged steps it skipped (a :class:`DamagedCheckpointWarning` each).

        ``template``: a pytree of the state's structure (arrays or ShapeDtypeStructs) that
        gives Orbax the shapes and dtypes. Raises :class:`jacosr.workdir.WorkdirError` when the
        checkpoint was saved by a run whose ``identity`` differs, and
        :class:`DamagedCheckpointError` when no checkpoint is intact.
        """
        identity = json.loads(json.dumps(identity))  # as stored: tuples are lists
        try:
            step, state, stored, damaged = self.newest_intact(template)
        except FileNotFoundError:
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
