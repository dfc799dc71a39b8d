"""The command line of every experiment: one skeleton around ``run(config, workdir)``.

An experiment module defines its config (a frozen dataclass with the paper's defaults and a
docstring whose "Attributes:" document its fields) and ``run(config, workdir, *,
overwrite=False) -> results``. One :class:`Command` adds the rest::

    COMMAND = Command(
        module=__name__,
        config=LossesTableConfig,
        run=run,
        workdir="runs/losses_table",
        description="Accuracy and AUROC (loss score, MSP) of every loss, mean ± std over seeds.",
        outputs=TABLE_FILES,
        runs="the runs (runs/)",
        summary=table_summary,
        grid=lambda config: seed_grid(rows(config), config.seeds),
    )


    def main(args: list[str] | None = None) -> dict:
        return COMMAND.main(args)


    if __name__ == "__main__":
        run_command(main)

``COMMAND.main`` parses the command line into the config (its fields, and those of the
configs inside it, as flat flags: ``--steps``, ``--loss``, ...) plus ``--workdir``,
``--overwrite``, the flags of several processes (``--distributed``,
``--coordinator-address``, ``--num-processes``, ``--process-id``; see
:mod:`jacosr.distributed`) and, for an experiment that trains a grid of runs (``grid``),
``--spread-runs``; checks that the data sets it names exist (before anything is written),
runs the experiment, prints its summary and the files it wrote (process 0 only), and returns
the results (the tests call ``main`` in-process).

The arguments' dataclass is generated, and tyro reads help text from docstrings: ``--help``
opens with ``description``; ``--workdir``'s help names ``outputs`` and ``runs``; every
config field keeps the help of its config's "Attributes:" (the config's own group is headed
by the first paragraph of its docstring).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from jacosr.config import cli
from jacosr.data import check_available
from jacosr.distributed import DistributedConfig, initialize, is_writer
from jacosr.grids import Grid
from jacosr.runs import describe_hardware, hardware
from jacosr.workdir import file_stamp

C = TypeVar("C")

OVERWRITE_HELP = (
    "when workdir holds a run of a different config, delete that run and start this one "
    "instead of refusing. Deletes only what jacosr wrote there and in the runs below it, "
    "never other files, and nothing while another jacosr process uses workdir or one of "
    "those runs."
)
SPREAD_RUNS_HELP = (
    "train the experiment's runs side by side, one per local device (e.g. one per GPU), "
    "instead of one after another, each data parallel over every device: the better use of "
    "several GPUs for many small runs. One process only (ignored under --distributed)."
)
DISTRIBUTED_HELP = (
    "several processes (hosts, or one per GPU), see jacosr.distributed: every process runs the "
    "same command, each run is data parallel over all their devices, process 0 writes."
)


class RunExperiment(Protocol[C]):
    """An experiment's ``run``: write its outputs into ``workdir`` (created, or resumed when it
    holds the same config; see :func:`jacosr.workdir.open_workdir`) and return its results.
    An experiment that trains a grid also takes ``spread_runs`` (:func:`jacosr.grids.
    run_grid`)."""

    def __call__(self, config: C, workdir: Path, *, overwrite: bool = False, **grid) -> dict: ...


@dataclass(frozen=True)
class Command(Generic[C]):
    """The command ``python -m <module>`` of one experiment.

    Attributes:
      module: the experiment's module, ``__name__`` (its ``python -m`` name; ``__main__``
        when it runs as a command).
      config: the experiment's config dataclass; built without arguments, it holds the
        command's defaults.
      run: the experiment (:class:`RunExperiment`).
      workdir: the default ``--workdir``.
      description: what the command does, in a line: the top of ``--help``.
      outputs: the files ``run`` writes in the workdir, printed after the run.
      runs: what else the workdir holds, e.g. ``"the runs (runs/)"``, for ``--workdir``'s
        help.
      summary: the text printed after the run, from its results.
      grid: for an experiment that trains a grid of runs, the grid its config describes
        (run name -> resolved training config): the command then has ``--spread-runs``, and
        ``benchmarks/gpu_cost.py`` costs the grid on a GPU. None for the others.
    """

    module: str
    config: type[C]
    run: RunExperiment[C]
    workdir: str
    description: str
    outputs: tuple[str, ...]
    runs: str
    summary: Callable[[dict], str]
    grid: Callable[[C], Grid] | None = None

    @functools.cached_property
    def arguments(self) -> type:
        """The dataclass tyro parses: ``config``, ``workdir``, ``overwrite``, ``distributed``
        and, with a ``grid``, ``spread_runs``."""
        outputs = ", ".join(self.outputs)
        spread = f"  spread_runs: {SPREAD_RUNS_HELP}\n" if self.grid else ""
        doc = (
            f"{self.description}\n\n"
            "Attributes:\n"
            f"  workdir: where {outputs} and {self.runs} go; re-running the same command "
            "resumes.\n"
            f"  overwrite: {OVERWRITE_HELP}\n"
            f"{spread}"
            f"  distributed: {DISTRIBUTED_HELP}\n"
        )
        name = self.config.__name__.removesuffix("Config") + "Args"
        fields: list[tuple[str, Any, Any]] = [
            ("config", self.config, field(default_factory=self.config)),
            ("workdir", Path, field(default=Path(self.workdir))),
            ("overwrite", bool, field(default=False)),
            *([("spread_runs", bool, field(default=False))] if self.grid else []),
            ("distributed", DistributedConfig, field(default_factory=DistributedConfig)),
        ]
        namespace = {"__doc__": doc, "__module__": self.module}
        return dataclasses.make_dataclass(name, fields, frozen=True, namespace=namespace)

    def main(self, args: Sequence[str] | None = None) -> dict:
        """Parse ``args`` (default: the command line), run, print the summary and the files
        written; return the results."""
        parsed = cli(self.arguments, args=args)
        initialize(parsed.distributed)
        check_available(parsed.config)
        if is_writer():
            print(f"on {describe_hardware(hardware())}")
        grid = {"spread_runs": parsed.spread_runs} if self.grid else {}
        paths = [parsed.workdir / name for name in self.outputs]
        before = [file_stamp(path) for path in paths]
        results = self.run(parsed.config, parsed.workdir, overwrite=parsed.overwrite, **grid)
        if is_writer():
            print(self.summary(results))
            for path, stamp in zip(paths, before, strict=True):
                if file_stamp(path) != stamp:  # not where it could not write (it warned)
                    print(f"wrote {path}")
        return results
