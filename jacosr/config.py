"""Config dataclasses <-> JSON, and the command line generated from them (tyro).

Configs are frozen dataclasses whose defaults are the paper's; each checks its values when it is
built (:func:`require` in a ``__post_init__``), so a bad value fails before any data is loaded or
any workdir exists. ``to_dict`` / ``from_dict`` round-trip them through JSON (``config.json`` in
every workdir); ``cli`` builds the command line from the dataclass fields, their types, defaults
and docstrings; ``run_command`` turns the errors of a command into one line (see
:data:`USER_ERRORS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import inspect
import logging
import os
import re
import sys
import threading
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def require(ok: bool, flag: str, expected: str, value: Any) -> None:
    """Refuse a config value: ``ValueError("<flag> must be <expected>; got <value>")``.

    ``flag`` is the command-line flag that sets the value (``--margin-pos``), so the message
    says what to change; ``expected`` the valid range or names. Write ``ok`` so that NaN fails
    it (``0 <= x < 1``, not ``not x >= 1``)."""
    if not ok:
        raise ValueError(f"{flag} must be {expected}; got {value!r}")


OPTIONAL = "jacosr_optional"
"""Metadata key of a config field that :func:`to_dict` leaves out while it holds its default:
``field(default_factory=..., metadata={OPTIONAL: True})`` for a field added after runs were
made (e.g. the Jacobian training terms), so that ``config.json`` of a run that does not use
it is what it was before the field existed, and such a run resumes. :func:`from_dict` gives a
missing field its default."""


def _kept(config: Any, f: dataclasses.Field) -> bool:
    if not f.metadata.get(OPTIONAL):
        return True
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return getattr(config, f.name) != default


def to_dict(config: Any) -> dict:
    """A config dataclass as a JSON-serialisable dict (tuples -> lists, paths -> str), without
    the :data:`OPTIONAL` fields that hold their defaults."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if _kept(v, f)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(config)


def _coerce(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(options[0], value) if len(options) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        (item, *_) = typing.get_args(tp)
        return tuple(_coerce(item, v) for v in value)
    if tp is Path:
        return Path(value)
    return value


def from_dict(cls: type[T], data: dict) -> T:
    """Rebuild a config dataclass from :func:`to_dict` output; unknown keys are an error."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - names)
    if extra:
        raise ValueError(
            f"{cls.__name__} has no fields {extra}; valid fields are: {', '.join(sorted(names))}"
        )
    return cls(**{k: _coerce(hints[k], v) for k, v in data.items()})


XLA_CPU_FLAGS = (
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",
)
"""XLA flags every jacosr entry point sets (:func:`configure_xla`).

XLA CPU's concurrency-optimised scheduler (on by default in jax 0.10) runs independent
operations of one program side by side, independent batched LAPACK calls included. In jaxlib
0.10 each such call parks its pool thread until the rest of XLA's CPU pool has run its batch,
so two at once on two cores park the whole pool and hang for good (see
:data:`jacosr.jacobian.driver.CPU_WORKERS`). jacosr's own kernels order their LAPACK calls and
run such programs one at a time, so they no longer need this flag; it stays as a guard for a
user's ``f`` with independent linear algebra inside, and costs nothing measurable (README
"Speed").

The second hands convolutions to XLA's Eigen kernels instead of YNNPACK's. YNNPACK splits a
convolution only over tiles of output channels, so every layer with at most 64 of them (LeNet,
the first stages of VGG32, WRN-16-4 and ResNet-18, and their input gradients) runs on a single
core, and XLA runs one operation at a time; Eigen's convolutions split over the batch and the
image too and use every core, for no more CPU time in total. :mod:`jacosr.models.conv` writes
its derivatives in the forms that are fast there. Measured in ``benchmarks/train.py`` and
``benchmarks/jacobian.py`` (README "Speed")."""


def configure_xla() -> None:
    """Add :data:`XLA_CPU_FLAGS` to ``XLA_FLAGS`` unless the user set those flags already.

    Entry points call this before anything starts jax's backend (which reads ``XLA_FLAGS``
    once); :func:`cli` does. Code that imports jacosr as a library sets the variable itself,
    ``XLA_FLAGS="--xla_cpu_enable_concurrency_optimized_scheduler=false
    --xla_cpu_experimental_ynn_fusion_type=-individual_convolution"`` (see the README), or
    calls this function before its first jax computation.
    """
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


DEBUG_FLAG = "--debug"
DEBUG_ENV = "JACOSR_DEBUG"
EXIT_ERROR = 2
"""Exit status of a command that stopped on one of :data:`USER_ERRORS` (as for tyro's own
command-line errors). An unexpected exception keeps Python's traceback and status 1."""
EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, the shell's convention)."""
INTERRUPTED = "interrupted; re-run the same command to resume"
MAKE_ROOM = (
    "make room (free disk space, or raise the file-size limit) and re-run the same command "
    "to resume"
)
"""The fix for a full disk or a file over the size limit (runs checkpoint, and re-running
resumes)."""
NO_ROOM = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
"""The ``errno`` of a write that found no room: disk full, file-size limit, quota."""

USER_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    OSError,
    FloatingPointError,
    ImportError,
)
"""What a command reports as one line ``error: <message>``: a refused value or input
(``ValueError``), a missing, unreadable or unwritable file or a full disk (``OSError``, which
includes ``FileNotFoundError``, ``PermissionError`` and :class:`jacosr.data.DataNotPreparedError`),
a diverged run (``FloatingPointError``, e.g. :class:`jacosr.train.NonFiniteLossError`) and a
missing optional package (``ImportError``, e.g. TensorFlow to build TFDS data). Anything else is
a bug and keeps its traceback."""

DEBUG_NOTE = (
    f"On an error the command prints one line, 'error: <what went wrong>', and exits with status "
    f"{EXIT_ERROR} ({EXIT_INTERRUPTED} when interrupted); add {DEBUG_FLAG} (or set "
    f"{DEBUG_ENV}=1) to get the full traceback instead."
)
"""Appended to every command's ``--help`` description by :func:`cli`."""


def _description(cls: type, description: str | None) -> str:
    if description is None:
        # What tyro shows by default: the docstring above its "Attributes:" section.
        doc = inspect.getdoc(cls) or ""
        description = doc.split("\nAttributes:")[0].strip()
    return f"{description}\n\n{DEBUG_NOTE}" if description else DEBUG_NOTE


def _prog(cls: type) -> str | None:
    """``python -m <module>`` of the command that defines ``cls`` (also when it runs as
    ``__main__``), so usage lines and tyro's errors show a command that can be run."""
    module = cls.__module__
    if module == "__main__":
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else None
    return f"python -m {module}" if module else None


def cli(cls: type[T], *, description: str | None = None, args: Sequence[str] | None = None) -> T:
    """Parse the command line into ``cls``; nested configs' flags are flat (``--loss movr``).

    ``description`` (default: the docstring of ``cls`` above "Attributes:") heads ``--help``,
    followed by :data:`DEBUG_NOTE`. A value a config refuses in its ``__post_init__`` is
    reported by tyro as a parse error (status 2). Sets the entry points' XLA flags first
    (:func:`configure_xla`)."""
    configure_xla()
    return tyro.cli(
        cls,
        prog=_prog(cls),
        description=_description(cls, description),
        args=args,
        config=(tyro.conf.OmitArgPrefixes,),
    )


def _one_line(err: BaseException) -> str:
    if isinstance(err, OSError) and err.errno in NO_ROOM:
        where = f"could not write {err.filename}: " if err.filename else ""
        return f"{where}{err.strerror}; {MAKE_ROOM}"
    message = re.sub(r"\s*\n\s*", " ", str(err)).strip()
    return message or type(err).__name__


def print_error(message: str) -> None:
    """Print the one line ``error: <message>`` of a command that stops (on stderr)."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def _show_warning_in_one_line(message, category, filename, lineno, file=None, line=None):
    print(f"warning: {_one_line(message)}", file=file or sys.stderr)


def _not_from_orbax(record: logging.LogRecord) -> bool:
    return f"{os.sep}orbax{os.sep}" not in record.pathname


def _none(record: logging.LogRecord) -> bool:
    return False


@contextlib.contextmanager
def _background_reports_dropped() -> Iterator[None]:
    """Within the block, drop what Orbax's save machinery reports from its threads and event
    loops when a save fails (a full disk) or is interrupted: its absl log records
    (``_SignalingThread.run() raised an exception`` and a traceback), asyncio's ``Task
    exception was never retrieved``, and the exceptions Python ignores in TensorStore's
    callbacks into an event loop Orbax has closed (``sys.unraisablehook``). The save raises
    the cause itself, which the command's one line gives; these repeat it as pages of
    tracebacks. jacosr runs no event loop of its own."""
    absl, aio = logging.getLogger("absl"), logging.getLogger("asyncio")
    hook = sys.unraisablehook
    absl.addFilter(_not_from_orbax)
    aio.addFilter(_none)
    sys.unraisablehook = lambda unraisable: None
    try:
        yield
    finally:
        sys.unraisablehook = hook
        aio.removeFilter(_none)
        absl.removeFilter(_not_from_orbax)


def _let_background_end(before: set[threading.Thread]) -> None:
    """Wait for Orbax's threads started since ``before`` that are still running (its writers
    after Ctrl-C during a save; Python would wait for them at exit anyway), then collect what
    the failed command left (asyncio tasks report their errors when collected): inside
    :func:`_background_reports_dropped`, so that what they report is dropped. Other threads
    are not waited for (an idle worker of a thread pool ends only when Python exits). A
    second Ctrl-C stops the wait."""

    def orbax_threads() -> list[threading.Thread]:
        found = threading.enumerate()  # running or starting
        return [t for t in found if t not in before and type(t).__module__.startswith("orbax.")]

    with contextlib.suppress(KeyboardInterrupt):
        while pending := orbax_threads():  # one may start another
            for thread in pending:
                with contextlib.suppress(RuntimeError):  # still starting: the next round
                    thread.join()
    gc.collect()


def run_command(main: Callable[[list[str]], object], argv: Sequence[str] | None = None) -> None:
    """Run a command's ``main(argv)`` the way the command line should see it.

    Every ``python -m jacosr...`` entry point is ``if __name__ == "__main__":
    run_command(main)``, so ``main`` itself stays an ordinary function that returns its results
    and raises (tests call it in-process). Here, at the command-line boundary:

    - ``--debug`` is removed from ``argv`` (default ``sys.argv[1:]``) before ``main`` parses it;
      with it, or with ``JACOSR_DEBUG`` set to anything but ``""`` or ``0``, every exception
      propagates with its full traceback;
    - otherwise one of :data:`USER_ERRORS` prints ``error: <message>`` (one line) on stderr and
      exits with :data:`EXIT_ERROR`; Ctrl-C prints ``error: interrupted; re-run the same
      command to resume`` and exits with :data:`EXIT_INTERRUPTED` (runs checkpoint, and
      re-running resumes);
    - any other exception is a bug: it keeps its traceback (status 1);
    - without ``--debug``, a warning (a damaged checkpoint skipped, results that could not be
      written) is one line too, ``warning: <message>``, instead of Python's two-line format
      that quotes the library's source line;
    - a full disk or a file over the size limit (``OSError`` with an ``errno`` of
      :data:`NO_ROOM`) names the file, when the error knows it, and says to make room and
      re-run to resume;
    - without ``--debug``, what Orbax's threads report when a save fails or is interrupted is
      dropped (see :func:`_background_reports_dropped`), also while the threads it left end.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [a for a in argv if a != DEBUG_FLAG]
    before = set(threading.enumerate())
    with contextlib.nullcontext() if debug else _background_reports_dropped():
        try:
            with warnings.catch_warnings():
                if not debug:
                    warnings.showwarning = _show_warning_in_one_line
                main(argv)
            return
        except KeyboardInterrupt:
            if debug:
                raise
            status, message = EXIT_INTERRUPTED, INTERRUPTED
        except USER_ERRORS as err:
            if debug:
                raise
            status, message = EXIT_ERROR, _one_line(err)
        print_error(message)
        _let_background_end(before)  # after the except block: the error and its frames go
    raise SystemExit(status)
