"""Config dataclasses <-> JSON, and the command line generated from them (tyro).

Configs are frozen dataclasses whose defaults are the paper's. ``to_dict`` / ``from_dict``
round-trip them through JSON (``config.json`` in every workdir); ``cli`` builds the command line
from the dataclass fields, their types, defaults and docstrings.
"""

from __future__ import annotations

import dataclasses
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


def cli(cls: type[T], *, description: str | None = None, args: list[str] | None = None) -> T:
    """Parse the command line into ``cls``; nested configs' flags are flat (``--loss movr``)."""
    return tyro.cli(
        cls,
        description=description,
        args=args,
        config=(tyro.conf.OmitArgPrefixes,),
    )
