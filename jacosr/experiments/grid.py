"""The loop shared by the table experiments: a grid of runs x seeds, summarised as a table.

:func:`run_grid` trains and evaluates every config of a grid in its own sub-workdir (one tqdm
bar over the runs; a finished run with the same config and evaluation is read back, a partial
one resumes from its checkpoint). :func:`summarise` turns the per-replicate results into mean
and standard deviation per row and column; :func:`markdown_table` and
:func:`jacosr.plots.plot_summary` render the summary; :func:`write_table` writes ``table.md``,
``table.json`` and ``table.png``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from jacosr.config import to_dict
from jacosr.evaluate import EvalConfig
from jacosr.plots import plot_summary
from jacosr.train import ResolvedTrainConfig, TrainConfig, resolve, run
from jacosr.workdir import open_workdir

# A table column: its header and the path of keys to its value in a run's results.json.
Columns = Mapping[str, tuple[str, ...]]
TABLE_FILES = ("table.md", "table.json", "table.png")
"""What a table experiment writes in its workdir besides ``config.json`` and its runs."""


def seed_grid(rows: Mapping[str, TrainConfig], seeds: int) -> dict[str, TrainConfig]:
    """Every row's config at training seeds ``0..seeds-1``, named ``<row>/seed<i>``."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return {
        f"{row}/seed{s}": dataclasses.replace(config, seed=s)
        for row, config in rows.items()
        for s in range(seeds)
    }


def _finished(run_dir: Path, config: ResolvedTrainConfig, evaluation: EvalConfig) -> dict | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    same = results.get("config") == to_dict(config)
    return results if same and results.get("eval") == to_dict(evaluation) else None


def run_grid(
    configs: Mapping[str, TrainConfig],
    workdir: Path,
    evaluation: EvalConfig,
    *,
    progress: bool = True,
) -> dict[str, dict]:
    """Train and evaluate each named config in ``workdir/<name>``; return name -> results.

    Each config is resolved (:func:`jacosr.train.resolve`) once, here. A run whose
    ``results.json`` holds the same resolved config and evaluation is not touched; any other
    run is (re)started through :func:`jacosr.train.run`, which resumes from its checkpoints and
    refuses a workdir that holds a different config.
    """
    results = {}
    bar = tqdm(configs.items(), desc="runs", unit="run", disable=not progress)
    for name, given in bar:
        bar.set_postfix_str(name)
        config = resolve(given)
        run_dir = Path(workdir) / name
        results[name] = _finished(run_dir, config, evaluation) or run(
            config, run_dir, evaluation, progress=False
        )
    return results


def _lookup(results: dict, path: tuple[str, ...]) -> float:
    value = results
    for key in path:
        value = value[key]
    return float(value)


def summarise(results: Mapping[str, dict], columns: Columns) -> dict[str, dict[str, dict]]:
    """``row -> column -> {"mean", "std", "values"}`` over the replicates of each row.

    Run names are ``<row>/<replicate>`` (``<row>/seed<i>`` from :func:`seed_grid`,
    ``<benchmark>/split<i>`` in Protocol A); rows keep the order of their first run.
    ``std`` is the sample standard deviation (ddof 1; 0 for a single replicate).
    """
    grouped: dict[str, list[dict]] = {}
    for name, result in results.items():
        grouped.setdefault(name.rsplit("/", 1)[0], []).append(result)
    summary = {}
    for row, runs in grouped.items():
        summary[row] = {}
        for header, path in columns.items():
            values = np.array([_lookup(r, path) for r in runs])
            std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
            summary[row][header] = {
                "mean": float(values.mean()),
                "std": std,
                "values": values.tolist(),
            }
    return summary


def markdown_table(
    summary: Mapping[str, Mapping[str, dict]],
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
    rows: Mapping[str, TrainConfig],
    columns: Columns,
    evaluation: EvalConfig,
    *,
    title: str,
    row_header: str,
    labels: Mapping[str, Sequence[str]] | None = None,
    label_headers: Sequence[str] = (),
    overwrite: bool = False,
) -> dict:
    """The seed-replicated table experiments' run: ``rows`` x ``config.seeds`` into
    ``workdir/runs``, summarised over seeds and written; returns summary and Markdown.

    ``config`` is the experiment's config (stored in ``config.json`` and ``table.json``; its
    ``seeds`` field sets the replicates); ``title`` is prefixed to the split in the figure.
    """
    with open_workdir(workdir, to_dict(config), outputs=TABLE_FILES, overwrite=overwrite) as opened:
        workdir = opened.path
        results = run_grid(seed_grid(rows, config.seeds), workdir / "runs", evaluation)
        summary = summarise(results, columns)
        markdown = markdown_table(
            summary, row_header=row_header, labels=labels, label_headers=label_headers
        )
        split = next(iter(results.values()))["split"]
        full_title = (
            f"{title}{split['source']}: known {split['known_classes']}, {config.seeds} seeds"
        )
        meta = {"config": to_dict(config), "split": split, "evaluation": to_dict(evaluation)}
        write_table(workdir, summary, markdown, plot_summary(summary, title=full_title), meta)
        return {"summary": summary, "markdown": markdown}


def table_summary(result: dict) -> str:
    """What a table experiment's command prints (:class:`~jacosr.experiments.command.Command`'s
    ``summary``): its Markdown table."""
    return result["markdown"]


def write_table(
    workdir: Path,
    summary: Mapping[str, Mapping[str, dict]],
    markdown: str,
    figure: Figure,
    meta: dict,
) -> None:
    """Write ``table.md``, ``table.json`` (``meta`` and the summary) and ``table.png``."""
    workdir = Path(workdir)
    (workdir / "table.md").write_text(markdown)
    (workdir / "table.json").write_text(json.dumps({**meta, "rows": summary}, indent=2) + "\n")
    figure.savefig(workdir / "table.png", dpi=120)
