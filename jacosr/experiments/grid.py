"""The loop shared by the table experiments: a grid of runs x seeds, summarised as a table.

:func:`run_grid` trains and evaluates every config of a grid in its own sub-workdir (one tqdm
bar over the runs; a finished run with the same config and evaluation is read back, a partial
one resumes from its checkpoint). :func:`summarise` turns the per-seed results into mean and
standard deviation per row and column; :func:`markdown_table` and :func:`plot_summary` render
the summary; :func:`write_table` writes ``table.md``, ``table.json`` and ``table.png``.
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
from jacosr.train import TrainConfig, resolve_techniques, run

# A table column: its header and the path of keys to its value in a run's results.json.
Columns = Mapping[str, tuple[str, ...]]


def seed_grid(rows: Mapping[str, TrainConfig], seeds: int) -> dict[str, TrainConfig]:
    """Every row's config at training seeds ``0..seeds-1``, named ``<row>/seed<i>``."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    return {
        f"{row}/seed{s}": dataclasses.replace(config, seed=s)
        for row, config in rows.items()
        for s in range(seeds)
    }


def _finished(run_dir: Path, config: TrainConfig, evaluation: EvalConfig) -> dict | None:
    path = run_dir / "results.json"
    if not path.exists():
        return None
    results = json.loads(path.read_text())
    same = results.get("config") == to_dict(resolve_techniques(config))
    return results if same and results.get("eval") == to_dict(evaluation) else None


def run_grid(
    configs: Mapping[str, TrainConfig],
    workdir: Path,
    evaluation: EvalConfig,
    *,
    progress: bool = True,
) -> dict[str, dict]:
    """Train and evaluate each named config in ``workdir/<name>``; return name -> results.

    A run whose ``results.json`` holds the same config and evaluation is not touched; any other
    run is (re)started through :func:`jacosr.train.run`, which resumes from its checkpoints and
    refuses a workdir that holds a different config.
    """
    results = {}
    bar = tqdm(configs.items(), desc="runs", unit="run", disable=not progress)
    for name, config in bar:
        bar.set_postfix_str(name)
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


def summarise(
    results: Mapping[str, dict], rows: Sequence[str], seeds: int, columns: Columns
) -> dict[str, dict[str, dict]]:
    """``row -> column -> {"mean", "std", "values"}`` over the seeds of :func:`seed_grid`.

    ``std`` is the sample standard deviation (ddof 1; 0 for a single seed).
    """
    summary = {}
    for row in rows:
        runs = [results[f"{row}/seed{s}"] for s in range(seeds)]
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


def plot_summary(summary: Mapping[str, Mapping[str, dict]], *, title: str) -> Figure:
    """Grouped bars: one group per row, one bar per column (mean ± std), seeds as dots."""
    rows = list(summary)
    columns = list(summary[rows[0]])
    width = 0.8 / len(columns)
    fig = Figure(
        figsize=(min(12.0, max(6.0, 0.35 * len(rows) * len(columns))), 4.5), layout="tight"
    )
    ax = fig.subplots()
    x = np.arange(len(rows))
    lowest = 1.0
    for i, column in enumerate(columns):
        mean = np.array([summary[r][column]["mean"] for r in rows])
        std = np.array([summary[r][column]["std"] for r in rows])
        pos = x + (i - (len(columns) - 1) / 2) * width
        ax.bar(pos, mean, width, yerr=std, capsize=2, label=column, alpha=0.8)
        for p, r in zip(pos, rows, strict=True):
            values = summary[r][column]["values"]
            ax.plot([p] * len(values), values, "k.", markersize=3)
            lowest = min(lowest, *values)
    ax.set_xticks(x, rows, rotation=20, ha="right")
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.set_ylabel("mean ± std over seeds (dots: seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        frameon=False, fontsize=8, ncol=len(columns), loc="lower center", bbox_to_anchor=(0.5, 1.06)
    )
    return fig


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
