"""Tables of a grid's runs: the mean and spread over replicates (:func:`summarise`), as
Markdown (:func:`markdown_table`) and files (:func:`write_table`: ``table.md``, ``table.json``,
``table.png``). :func:`seed_table` is the seed-replicated table experiments' whole run: a grid
of rows x seeds (:mod:`jacosr.grids`), trained, then summarised here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jacosr.config import to_dict
from jacosr.evaluate import EvalConfig
from jacosr.grids import Grid, grid_identity, print_grid, run_grid, seed_grid
from jacosr.plots import plot_summary
from jacosr.runs import RunResults
from jacosr.workdir import Workdir, open_workdir

Columns = Mapping[str, tuple[str, ...]]
"""A table's columns: header -> the path of keys to the value in a run's results
(:meth:`jacosr.runs.RunResults.value`), e.g. ``{"AUROC": ("scores", "loss", "auroc")}``."""
Summary = dict[str, dict[str, dict]]
"""``row -> column -> {"mean", "std", "values"}``."""
TABLE_FILES = ("table.md", "table.json", "table.png")
"""What a table experiment writes in its workdir besides ``config.json`` and its runs."""


def summarise(results: Mapping[str, RunResults], columns: Columns) -> Summary:
    """``row -> column -> {"mean", "std", "values"}`` over the replicates of each row, the
    column's value of a run at its path in the run's results (:meth:`RunResults.value`).

    Run names are ``<row>/<replicate>`` (``<row>/seed<i>`` from
    :func:`jacosr.grids.seed_grid`, ``<benchmark>/split<i>`` in Protocol A); rows keep the
    order of their first run."""
    values = {
        name: {header: result.value(path) for header, path in columns.items()}
        for name, result in results.items()
    }
    return summarise_values(values)


def summarise_values(values: Mapping[str, Mapping[str, float]]) -> Summary:
    """:func:`summarise` of numbers given per run: ``run name -> column -> value``. ``std``
    is the sample standard deviation (ddof 1; 0 for a single replicate)."""
    grouped: dict[str, list[Mapping[str, float]]] = {}
    for name, row in values.items():
        grouped.setdefault(name.rsplit("/", 1)[0], []).append(row)
    summary = {}
    for row, runs in grouped.items():
        summary[row] = {}
        for header in runs[0]:
            column = np.array([r[header] for r in runs], dtype=float)
            std = float(column.std(ddof=1)) if len(column) > 1 else 0.0
            summary[row][header] = {
                "mean": float(column.mean()),
                "std": std,
                "values": column.tolist(),
            }
    return summary


def summarise_columns(summary: Summary) -> dict[str, Summary]:
    """``row -> column -> metric -> {"mean", "std", "values"}`` from a :func:`summarise` of
    runs named ``<row>/<column>/<replicate>`` (:func:`jacosr.grids.split_grid`'s
    ``<row>/<benchmark>/split<i>``, or :func:`jacosr.grids.seed_grid` of rows named
    ``<row>/<column>``), whose columns are the metrics; rows and columns keep their order."""
    table: dict[str, dict[str, dict]] = {}
    for key, cells in summary.items():
        row, column = key.rsplit("/", 1)
        table.setdefault(row, {})[column] = cells
    return table


def markdown_table(
    summary: Summary,
    *,
    row_header: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_headers: Sequence[str] = (),
) -> str:
    """A Markdown table: one line per row, ``mean ± std`` per column.

    ``labels``: extra leading cells per row (e.g. the ablation's switches), under
    ``label_headers``.
    """
    rows = list(summary)
    columns = list(summary[rows[0]])
    header = [row_header, *label_headers, *columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":--"] + [":-:"] * len(label_headers) + ["--:"] * len(columns)) + "|",
    ]
    for row in rows:
        cells = [row, *(labels[row] if labels else ())]
        cells += [f"{summary[row][c]['mean']:.4f} ± {summary[row][c]['std']:.4f}" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def seed_table(
    config,
    workdir: Path,
    rows: Grid,
    columns: Columns,
    evaluation: EvalConfig,
    *,
    title: str,
    row_header: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_headers: Sequence[str] = (),
    extent: Sequence[str] = ("seeds",),
    overwrite: bool = False,
    spread_runs: bool = False,
) -> dict:
    """The seed-replicated table experiments' run: ``rows`` x ``config.seeds`` into
    ``workdir/runs``, summarised over seeds and written; returns summary and Markdown.

    ``config`` is the experiment's config (its ``seeds`` field sets the replicates; stored in
    ``table.json``, and in ``config.json`` without ``extent``, see
    :func:`jacosr.grids.grid_identity`);
    ``title`` is prefixed to the split in the figure.
    """
    identity = grid_identity(config, extent)
    with open_workdir(workdir, identity, outputs=TABLE_FILES, overwrite=overwrite) as opened:
        workdir = opened.path
        grid = seed_grid(rows, config.seeds)
        print_grid(grid)
        results = run_grid(grid, workdir / "runs", evaluation, spread_runs=spread_runs)
        summary = summarise(results, columns)
        markdown = markdown_table(
            summary, row_header=row_header, labels=labels, label_headers=label_headers
        )
        split = next(iter(results.values())).split
        first = next(iter(rows.values())).seed
        seeds = f"seeds {first}-{first + config.seeds - 1}" if config.seeds > 1 else f"seed {first}"
        full_title = f"{title}{split['source']}: known {split['known_classes']}, {seeds}"
        meta = {"config": to_dict(config), "split": split, "evaluation": to_dict(evaluation)}
        write_table(opened, summary, markdown, plot_summary(summary, title=full_title), meta)
        return {"summary": summary, "markdown": markdown}


def table_summary(result: dict) -> str:
    """What a table experiment's command prints (:class:`~jacosr.experiments.command.Command`'s
    ``summary``): its Markdown table."""
    return result["markdown"]


def write_table(
    opened: Workdir,
    summary: Summary,
    markdown: str,
    figure: Figure,
    meta: dict,
) -> None:
    """Write ``table.md``, ``table.json`` (``meta`` and the summary) and ``table.png`` into
    the opened workdir (in process 0 only, as every :class:`~jacosr.workdir.Workdir` write)."""
    opened.write("table.md", markdown)
    opened.write_json("table.json", {**meta, "rows": summary})
    opened.save_figure("table.png", figure)
