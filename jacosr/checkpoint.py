"""Orbax checkpoints of a run: the state pytree with its config stored beside it.

Every save is atomic (Orbax writes to a temporary directory and renames it), so a run killed
at any moment leaves the last completed checkpoint intact; re-running resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointStore:
    """``<workdir>/checkpoints``: keeps the last ``keep`` steps of a state pytree + config."""

    def __init__(self, workdir: Path, *, keep: int = 3):
        self.directory = Path(workdir).absolute() / "checkpoints"
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, config: dict) -> None:
        """Save ``state`` (any pytree of arrays) and the JSON ``config`` at ``step``."""
        self._manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), config=ocp.args.JsonSave(config)
            ),
        )

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict]:
        """Restore ``(state, config)`` at ``step`` (default: the latest).

        ``abstract_state`` is a pytree of the same structure (arrays or ShapeDtypeStructs,
        e.g. from ``jax.eval_shape``) that tells Orbax the target shapes and dtypes.
        """
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), config=ocp.args.JsonRestore()
            ),
        )
        return restored["state"], restored["config"]

    def close(self) -> None:
        """Wait for pending asynchronous saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()
