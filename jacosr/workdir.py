"""Workdirs: every run writes into one, and re-running into it resumes.

A workdir is a folder that jacosr made: :func:`open_workdir` writes the marker file
``.jacosr-workdir`` when it creates the folder (or finds it empty), with the names of the
outputs the run writes there (``config.json`` always; e.g. ``metrics.jsonl``, ``results.json``,
``checkpoints`` for a training run). An output may be a folder that the user can write into
too (:class:`OutputFolder`: ``checkpoints``); the marker then says which of its entries are
jacosr's (a regular expression of their names: a checkpoint per step). A folder that is not
empty and has no marker is never written into or deleted from, whatever the flags.

While a run is open (the ``with`` block of :func:`open_workdir`) it holds an exclusive
``flock`` on the workdir's directory; a second process on the same workdir is refused. The
kernel drops the lock when the process dies, however it dies (SIGKILL included), so a crash
never leaves a workdir locked; the lock needs no file, so a read-only workdir can still be
opened (to re-evaluate a finished run).

A run with the same config reuses the workdir (training resumes). A different config is
refused unless ``overwrite``, which deletes only what jacosr wrote: the outputs named in the
markers of the workdir and of every marked workdir below it (experiments keep their runs in
``<workdir>/runs/<row>/seed<i>`` or ``<workdir>/train``; of an output folder, only the entries
its marker describes, then the folder if that empties it), and folders this leaves empty on the
way to those sub-workdirs. Files and folders the user put anywhere survive, and a sub-workdir
that another process holds makes the overwrite refuse before anything is deleted. What
survives inside an output folder or a sub-workdir (which would otherwise have gone) is named
in a warning, so that the user knows the old run's folders are not empty.

With several processes (``jax.distributed``, :mod:`jacosr.distributed`) only process 0 opens
the workdir as above (marker, lock, ``config.json``, deletions) and writes its outputs; the
others wait for its outcome (a collective) and get a :class:`Workdir` whose ``writer`` is
False, on which writing and clearing do nothing; when process 0 refuses the workdir, they stop
too, with an error that points to process 0's.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from jacosr.distributed import agree, is_writer

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MARKER = ".jacosr-workdir"
"""The file that marks a folder jacosr made; JSON ``{"written_by": "jacosr", "outputs": [...],
"folders": {output folder: the regular expression of its entries' names}}``."""
CONFIG = "config.json"
KEPT_SHOWN = 10
"""How many of the entries an overwrite kept the warning names (then how many more)."""


@dataclass(frozen=True)
class OutputFolder:
    """An output that is a folder where jacosr writes entries of known names only, and where
    the user may put files too (``checkpoints``: a folder per step).

    Attributes:
      name: the folder, in the workdir.
      entries: a regular expression that the names of jacosr's entries in it match in full;
        ``overwrite`` deletes those and keeps anything else (naming it in a warning).
    """

    name: str
    entries: str


class WorkdirError(ValueError):
    """A workdir that this run may not use (another config, not made by jacosr, in use)."""


class WorkdirBusyError(WorkdirError):
    """Another process holds the workdir's lock (a run in progress)."""


def config_diff(old: dict, new: dict, prefix: str = "") -> str:
    """Human-readable list of the (nested) keys whose values differ: ``"lr: 0.1 -> 0.05"``."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = config_diff(a, b, f"{prefix}{key}.")
            changes += [inner] if inner else []
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(changes)


def _write_atomic(path: Path, content: str | Callable[[IO[bytes]], None]) -> None:
    """Write ``content`` (text, or a function that writes a binary file, e.g. a figure's
    ``savefig``) to ``path`` through a sibling ``.tmp`` file and a rename, so that a kill
    leaves either the old file or the new one. A failed write's ``OSError`` names ``path``
    (a full disk's, raised by ``write``, names no file)."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        if isinstance(content, str):
            tmp.write_text(content)
        else:
            with open(tmp, "wb") as file:
                content(file)
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno is not None and err.filename is None:
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise


def file_stamp(path: Path) -> tuple[int, int] | None:
    """``path``'s inode and modification time, or None where it is missing: a write (atomic,
    so a new inode) changes it, so comparing stamps taken before and after a run says whether
    the run wrote the file (it may have read a finished run back, or been unable to write)."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_ino, found.st_mtime_ns


def _lock(path: Path) -> int | None:
    """An fd of directory ``path`` holding its exclusive flock, or None if another holds it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by child processes
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _busy(path: Path) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"{path} is in use by another jacosr process (it holds the workdir's lock); wait for "
        "that run to finish, or choose another --workdir"
    )


def _describe(outputs: Iterable[str | OutputFolder]) -> tuple[tuple[str, ...], dict[str, str]]:
    """``outputs`` as the marker records them: ``(names, {output folder: its entries})``."""
    outputs = tuple(outputs)
    names = tuple(o.name if isinstance(o, OutputFolder) else o for o in outputs)
    return names, {o.name: o.entries for o in outputs if isinstance(o, OutputFolder)}


def _read_marker(workdir: Path) -> tuple[list[str], dict[str, str]]:
    """The outputs named in ``workdir``'s marker (which must exist) and the entries of those
    that are output folders (a marker older than output folders has none)."""
    marker = workdir / MARKER
    try:
        content = json.loads(marker.read_text())
        outputs, folders = content["outputs"], content.get("folders", {})
        for entries in folders.values():
            re.compile(entries)
    except (ValueError, KeyError, TypeError, AttributeError, re.error) as err:
        raise WorkdirError(
            f"{marker} is damaged ({err}); jacosr cannot tell which files it wrote there. "
            "Choose another --workdir, or delete the folder yourself"
        ) from None
    names = [name for name in outputs if name and "/" not in name and name not in (".", "..")]
    return names, {name: folders[name] for name in names if name in folders}


def _write_marker(workdir: Path, outputs: Iterable[str], folders: Mapping[str, str]) -> None:
    content = {"written_by": "jacosr", "outputs": sorted(set(outputs)), "folders": dict(folders)}
    _write_atomic(workdir / MARKER, json.dumps(content, indent=2) + "\n")


def _owned(workdir: Path) -> set[str]:
    """Everything jacosr may remove from the marked ``workdir`` (the marker excepted): its
    outputs, ``config.json`` and the temporary files of their atomic writes."""
    names = {*_read_marker(workdir)[0], CONFIG}
    return names | {f"{name}.tmp" for name in names} | {MARKER + ".tmp"}


def _marked_below(root: Path) -> list[Path]:
    """The marked workdirs strictly below ``root`` (not descending into jacosr's outputs),
    deepest first."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if MARKER in filenames:
            if here != root:
                found.append(here)
            owned = _owned(here)
            dirnames[:] = [d for d in dirnames if d not in owned]
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _remove_outputs(workdir: Path, folders: Mapping[str, str], kept: list[Path]) -> None:
    """Delete what jacosr wrote in the marked ``workdir`` (:func:`_owned`; of an output folder
    named in ``folders``, only the entries whose names match its expression, then the folder
    if that empties it: what is left goes to ``kept``). A link is removed, not followed."""
    for name in _owned(workdir):
        path = workdir / name
        if name not in folders or path.is_symlink() or not path.is_dir():
            _remove(path)
            continue
        entries = re.compile(folders[name])
        for entry in sorted(path.iterdir()):
            if entries.fullmatch(entry.name):
                _remove(entry)
            else:
                kept.append(entry)
        with contextlib.suppress(OSError):
            path.rmdir()


def _clear(root: Path, folders: Mapping[str, str]) -> None:
    """Delete the outputs of the marked workdir ``root`` (keeping its marker) and of every
    marked workdir below it, after taking all their locks (refusing if any is held). Output
    folders are cleared as their markers describe them, and those of ``root`` also as
    ``folders`` (the run's own: a marker older than output folders describes none). Warns
    naming what it kept in the output folders and sub-workdirs."""
    folders = {**_read_marker(root)[1], **folders}
    below = _marked_below(root)
    held, kept = [], []
    try:
        for sub in below:
            fd = _lock(sub)
            if fd is None:
                raise WorkdirBusyError(f"cannot overwrite {root}: {_busy(sub)}")
            held.append(fd)
        for sub in below:  # deepest first: a sub-workdir kept below is named already
            _remove_outputs(sub, _read_marker(sub)[1], kept)
            _remove(sub / MARKER)
            known = [*below, *kept]  # what is there already, or a folder on the way to it
            kept += sorted(
                p for p in sub.iterdir() if not any(p == q or p in q.parents for q in known)
            )
            # Remove the folders this left empty, up to (not including) root: the sub-workdir
            # and the folders jacosr made on the way to it (runs/, runs/<row>/).
            for folder in (sub, *sub.parents):
                if folder == root or root not in folder.parents:
                    break
                with contextlib.suppress(OSError):
                    folder.rmdir()
        _remove_outputs(root, folders, kept)
    finally:
        for fd in held:
            os.close(fd)
    if kept:
        names = [str(p.relative_to(root)) for p in kept]
        more = len(names) - KEPT_SHOWN
        shown = ", ".join(names[:KEPT_SHOWN]) + (f" and {more} more" if more > 0 else "")
        warnings.warn(
            f"deleted the old run in {root} but kept what jacosr did not write there: "
            f"{shown}; move or delete it yourself if it belonged to the old run",
            stacklevel=2,
        )


@dataclass(frozen=True)
class Workdir:
    """An open workdir (see :func:`open_workdir`); its lock is held until the block ends.

    Attributes:
      path: the folder.
      config: the run's config, as in ``config.json``.
      outputs: the names this run writes in ``path`` besides ``config.json``.
      wrote_config: whether this opening wrote ``config.json`` (it was missing).
      writer: whether this process writes here (process 0; see the module docstring): the
        others' :meth:`clear`, :meth:`write` and :meth:`discard_config` do nothing.
      folders: the outputs that are :class:`OutputFolder`, with their entries' expression.
    """

    path: Path
    config: dict
    outputs: tuple[str, ...]
    wrote_config: bool
    writer: bool = True
    folders: Mapping[str, str] = field(default_factory=dict)

    def clear(self) -> None:
        """Delete what jacosr wrote here and in marked sub-workdirs (see the module docstring)
        and write ``config.json`` afresh: the run starts over."""
        if not self.writer:
            return
        _clear(self.path, self.folders)
        _write_marker(self.path, self.outputs, self.folders)
        _write_atomic(self.path / CONFIG, json.dumps(self.config, indent=2) + "\n")

    def write(self, name: str, content: str | Callable[[IO[bytes]], None]) -> None:
        """Write the output ``name`` (one of :attr:`outputs`) atomically: a failed write (disk
        full, read-only workdir) leaves the previous file as it was. ``content`` is text or a
        function that writes the file's bytes to the binary file it is given, e.g.
        ``lambda f: np.savez(f, **arrays)``."""
        if name not in self.outputs:
            raise ValueError(f"{name!r} is not one of this run's outputs {self.outputs}")
        if self.writer:
            _write_atomic(self.path / name, content)

    def write_json(self, name: str, value: Any) -> None:
        """Write ``value`` as the indented JSON output ``name``, as :meth:`write`."""
        self.write(name, json.dumps(value, indent=2) + "\n")

    def save_figure(self, name: str, figure: Figure, dpi: int = 120) -> None:
        """Save the matplotlib ``figure`` as the output ``name``, in the format its suffix
        names (``.png``), as :meth:`write`."""
        self.write(name, lambda f: figure.savefig(f, format=Path(name).suffix[1:], dpi=dpi))

    def discard_config(self) -> None:
        """Remove ``config.json`` if this opening wrote it (leave the workdir as found)."""
        if self.wrote_config and self.writer:
            (self.path / CONFIG).unlink(missing_ok=True)


@contextlib.contextmanager
def open_workdir(
    path: Path,
    config: dict,
    *,
    outputs: Iterable[str | OutputFolder],
    overwrite: bool = False,
) -> Iterator[Workdir]:
    """Open (creating it if needed) the workdir ``path`` for the run ``config``; hold its lock.

    ``outputs``: the files and folders the run writes in ``path`` besides ``config.json``
    (recorded in the marker: what ``overwrite`` may delete later; of an :class:`OutputFolder`,
    only its entries). ``config.json`` is written only when missing, so a read-only workdir of
    a finished run opens for re-evaluation.

    Raises :class:`WorkdirError` when ``path`` is a non-empty folder jacosr did not make (even
    with ``overwrite``) or holds a different config (unless ``overwrite``: then the old run's
    outputs are deleted first, see the module docstring), and :class:`WorkdirBusyError` when
    another process holds the workdir (or, with ``overwrite``, a marked sub-workdir).

    With several processes, only process 0 opens it; the others get a non-writing
    :class:`Workdir` once it has (see the module docstring).
    """
    path = Path(path)
    config = json.loads(json.dumps(config))  # as config.json holds it: tuples are lists
    outputs, folders = _describe(outputs)
    if not is_writer():
        if not agree(False):
            raise WorkdirError(
                f"process 0 could not open {path} (its error says why); this process stops too"
            )
        yield Workdir(path, config, outputs, wrote_config=False, writer=False, folders=folders)
        return
    try:
        fd, wrote_config = _open_locked(path, config, outputs, folders, overwrite)
    except BaseException:
        agree(False)
        raise
    agree(True)
    try:
        yield Workdir(path, config, outputs, wrote_config, folders=folders)
    finally:
        os.close(fd)  # releases the lock


def _open_locked(
    path: Path,
    config: dict,
    outputs: tuple[str, ...],
    folders: dict[str, str],
    overwrite: bool,
) -> tuple[int, bool]:
    """:func:`open_workdir`'s checks and writes in this process: ``(the fd holding the
    workdir's lock, whether config.json was written)``; on an error the lock is released."""
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"{path} exists and is not a folder; choose another --workdir")
    path.mkdir(parents=True, exist_ok=True)
    fd = _lock(path)
    if fd is None:
        raise _busy(path)
    try:
        if not (path / MARKER).exists():
            if any(p.name != MARKER + ".tmp" for p in path.iterdir()):
                raise WorkdirError(
                    f"{path} is not empty and jacosr did not make it (it has no {MARKER} "
                    "file), so jacosr neither writes into it nor deletes anything in it, even "
                    "with --overwrite; choose another --workdir (a new or empty folder; a "
                    "workdir of a jacosr older than the marker must be re-run into a new one)"
                )
            _write_marker(path, outputs, folders)
        config_path = path / CONFIG
        wrote_config = not config_path.exists()
        if not wrote_config:
            try:
                old = json.loads(config_path.read_text())
                differs = ""
                if old != config:
                    plain = isinstance(old, dict) and config_diff(old, config)
                    differs = plain or f"its {CONFIG} holds {str(old)[:200]}"
            except ValueError as err:
                differs = f"its {CONFIG} cannot be read: {err}"
            if differs:
                if not overwrite:
                    raise WorkdirError(
                        f"{path} holds a run with a different config ({differs}); choose "
                        "another --workdir, or pass --overwrite to delete the old run"
                    )
                _clear(path, folders)
                _write_marker(path, outputs, folders)
                wrote_config = True
        if wrote_config:
            _write_atomic(config_path, json.dumps(config, indent=2) + "\n")
        known, described = _read_marker(path)
        if not set(outputs) <= set(known) or folders.items() - described.items():
            _write_marker(path, [*known, *outputs], {**described, **folders})
    except BaseException:
        os.close(fd)
        raise
    return fd, wrote_config
