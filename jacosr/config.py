"""Config dataclasses <-> JSON, and the command line generated from them (tyro).

Configs are frozen dataclasses whose defaults are the paper's. ``to_dict`` / ``from_dict``
round-trip them through JSON (``config.json`` in every workdir); ``cli`` builds the command line
from the dataclass fields, their types, defaults and docstrings.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import tyro

T = TypeVar("T")


def to_dict(config: Any) -> dict:
    """A config dataclass as a JSON-serialisable dict (tuples -> lists, paths -> str)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
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


XLA_CPU_FLAGS = ("--xla_cpu_enable_concurrency_optimized_scheduler=false",)
"""XLA flags every jacosr entry point sets (:func:`configure_xla`).

XLA CPU's concurrency-optimised scheduler (on by default in jax 0.10) deadlocks on the
XNysTrace estimator's kernel, whose batched QR and eigh run beside the network's matrix
products: at 16 probes and 256 samples of the digits MLP, 2 cores, about half of the runs hung
for good at 0% CPU; with the scheduler off, 10 runs of 10 finished, and the exact VGG32 norms
ran as fast as before (2.6-3.3 samples/s either way)."""


def configure_xla() -> None:
    """Add :data:`XLA_CPU_FLAGS` to ``XLA_FLAGS`` unless the user set those flags already.

    Entry points call this before anything starts jax's backend (which reads ``XLA_FLAGS``
    once); :func:`cli` does. Code that imports jacosr as a library sets the variable itself:
    ``XLA_FLAGS=--xla_cpu_enable_concurrency_optimized_scheduler=false`` (see the README).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    extra = [f for f in XLA_CPU_FLAGS if f.split("=")[0] not in flags]
    if extra:
        os.environ["XLA_FLAGS"] = " ".join([flags, *extra]).strip()


def cli(cls: type[T], *, description: str | None = None, args: list[str] | None = None) -> T:
    """Parse the command line into ``cls``; nested configs' flags are flat (``--loss movr``).

    Sets the entry points' XLA flags first (:func:`configure_xla`)."""
    configure_xla()
    return tyro.cli(
        cls,
        description=description,
        args=args,
        config=(tyro.conf.OmitArgPrefixes,),
    )
