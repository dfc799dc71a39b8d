"""Workdirs: every run writes into one, and re-running into it resumes.

A workdir holds ``config.json``; a second run with the same config reuses what is there, a run
with a different config is refused unless ``overwrite``, which deletes the old run first.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path


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


def prepare_workdir(workdir: Path, config: dict, *, overwrite: bool = False) -> Path:
    """Create ``workdir`` with ``config.json``, or check that it already holds ``config``.

    Raises ``ValueError`` naming the differing keys when the workdir holds another config,
    unless ``overwrite``, which deletes the old run.
    """
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != config:
            if not overwrite:
                raise ValueError(
                    f"{workdir} holds a run with a different config ({config_diff(old, config)}); "
                    "choose another --workdir, or pass --overwrite to delete the old run"
                )
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    return workdir
