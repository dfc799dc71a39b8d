"""Compare finished runs in one table: accuracy and every score's metrics, one row per run.

    python -m jacosr.experiments.compare                       # every run under runs/
    python -m jacosr.experiments.compare runs/a runs/b runs/losses_table --metrics auroc oscr

It reads results.json files; nothing is trained or evaluated (runtime: experiments/README.md).
Writes into ``--workdir`` (default ``runs/compare``), never into the runs it reads:
``compare.md`` (the Markdown table, also printed), ``compare.csv`` (the same cells, full
precision, for spreadsheets and pandas), ``results.json`` and ``compare.png``.

Each path given is a training run (a workdir of ``python -m jacosr.train``) or any folder that
holds some: an experiment's workdir is expanded into the training runs below it (``train/``,
``runs/<row>/seed<s>``, ``seed<s>/``; :func:`jacosr.runs.find_runs`), one row each; its own
table is not read. A run without ``results.json`` (unfinished, or trained by ``fit`` alone, as
the ``train/`` of interp) is left out with a warning, since comparing it would mean evaluating
it, and the command writes nothing into runs; so is a run whose results.json cannot be read
as one (:meth:`jacosr.runs.RunResults.from_json`: empty, not JSON, a field missing or of the
wrong kind), with a
warning naming the run, the file and what is wrong. When no run is left, it is an error.

Rows are labelled by path; the leading columns are the config fields whose values differ
between the rows (``loss.loss``, ``seed``, ...: what tells the runs apart), then the closed-set
accuracy, then one column per score and metric (``loss auroc``, ``msp auroc``, ...) over the
union of the runs' scores, in order of first appearance: a run without that score gets an
empty cell (``null`` in results.json), so runs evaluated with different ``--scores`` compare
side by side.

``compare.png``: per metric a panel, one line per run (top to bottom in table order), one
marker per score at its value, so a glance shows which run and which score separates known
from unknown best.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro
from matplotlib import colormaps
from matplotlib.figure import Figure

from jacosr.config import require, to_dict
from jacosr.evaluate import SCORE_METRICS
from jacosr.experiments.command import Command
from jacosr.runs import RESULTS, RunResults, collect
from jacosr.workdir import open_workdir

OUTPUTS = ("compare.md", "compare.csv", RESULTS, "compare.png")


@dataclass(frozen=True)
class CompareConfig:
    """The runs to compare.

    Attributes:
      runs: training runs, or folders holding some (an experiment's workdir), one row per
        training run found; default: every run under runs/.
      metrics: per-score metrics to tabulate, one column per score and metric (auroc,
        aupr_in, aupr_out, fpr95, oscr, macro_f1).
    """

    runs: tyro.conf.Positional[tuple[Path, ...]] = (Path("runs"),)
    metrics: tuple[str, ...] = ("auroc",)

    def __post_init__(self):
        valid = ", ".join(SCORE_METRICS)
        require(len(self.metrics) > 0, "--metrics", f"at least one of {valid}", self.metrics)
        for metric in self.metrics:
            require(metric in SCORE_METRICS, "--metrics", f"names out of {valid}", metric)


def _flat(config: dict, prefix: str = "") -> dict[str, object]:
    """A nested config as ``{"loss.loss": "movr", "seed": 0, ...}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat |= _flat(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def comparison(results: dict[str, RunResults], metrics: tuple[str, ...]) -> dict:
    """The table: ``{"differs": [config fields], "columns": [value columns], "rows": {label:
    {"config": {field: value}, "values": {column: float or None}}}}``.

    ``differs``: the (flattened) config fields whose values are not the same in every run;
    ``columns``: ``accuracy`` and ``"<score> <metric>"`` over the union of the scores.
    """
    configs = {label: _flat(r.config) for label, r in results.items()}
    fields = list(dict.fromkeys(f for c in configs.values() for f in c))
    differs = [f for f in fields if len({json.dumps(c.get(f)) for c in configs.values()}) > 1]
    scores = list(dict.fromkeys(s for r in results.values() for s in r.scores))
    columns = ["accuracy", *(f"{s} {m}" for s in scores for m in metrics)]
    rows = {}
    for label, r in results.items():
        values = {"accuracy": r.accuracy}
        for score in scores:
            for metric in metrics:
                values[f"{score} {metric}"] = r.scores.get(score, {}).get(metric)
        rows[label] = {"config": {f: configs[label].get(f) for f in differs}, "values": values}
    return {"differs": differs, "columns": columns, "rows": rows}


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def markdown(table: dict) -> str:
    """The table in Markdown: values to 4 decimals, a missing one as an empty cell."""
    header = ["run", *table["differs"], *table["columns"]]
    align = [":--"] + [":--"] * len(table["differs"]) + ["--:"] * len(table["columns"])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    for label, row in table["rows"].items():
        cells = [label, *(_text(row["config"][f]) for f in table["differs"])]
        cells += ["" if v is None else f"{v:.4f}" for v in row["values"].values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def csv_text(table: dict) -> str:
    """The table as CSV: the same cells at full precision, a missing value empty."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["run", *table["differs"], *table["columns"]])
    for label, row in table["rows"].items():
        config = [_text(row["config"][f]) for f in table["differs"]]
        values = ["" if v is None else repr(v) for v in row["values"].values()]
        writer.writerow([label, *config, *values])
    return out.getvalue()


def run(config: CompareConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Read the runs, write the table and figure into ``workdir``; return the table."""
    results = collect(config.runs)
    table = comparison(results, config.metrics)
    text = markdown(table)
    with open_workdir(workdir, to_dict(config), outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        opened.write("compare.md", text)
        opened.write("compare.csv", csv_text(table))
        out = {"config": to_dict(config), **table, "markdown": text}
        opened.write_json(RESULTS, out)
        panels = {
            metric: {
                label: {
                    column.rsplit(" ", 1)[0]: value
                    for column, value in row["values"].items()
                    if column.endswith(f" {metric}") and value is not None
                }
                for label, row in table["rows"].items()
            }
            for metric in config.metrics
        }
        opened.save_figure("compare.png", plot_compare(panels))
    return out


def plot_compare(panels: Mapping[str, Mapping[str, Mapping[str, float]]]) -> Figure:
    """One panel per metric: one line per run (top to bottom in the given order), one marker
    per score at its value, each score a little above or below the line so that equal values
    stay visible (the comparison of :mod:`jacosr.experiments.compare`).

    ``panels``: metric (e.g. ``"auroc"``) -> run label -> score -> value; a score a run lacks
    is left out of its line. Markers keep one colour and shape per score across panels.
    """
    metrics = list(panels)
    runs = list(panels[metrics[0]])
    scores = list(dict.fromkeys(s for panel in panels.values() for r in panel.values() for s in r))
    colours = colormaps["tab10"].colors
    markers = "oDs^vP*X<>"
    label_width = max(len(r) for r in runs)
    fig = Figure(
        figsize=(2.0 + 0.07 * label_width + 4.0 * len(metrics), 1.4 + 0.32 * len(runs)),
        layout="constrained",
    )
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    y = np.arange(len(runs))
    for ax, metric in zip(axes, metrics, strict=True):
        for i, score in enumerate(scores):
            panel = panels[metric]
            at = [(panel[r][score], k) for k, r in enumerate(runs) if score in panel[r]]
            if at:
                values, rows = zip(*at, strict=True)
                offset = (i - (len(scores) - 1) / 2) * 0.5 / len(scores)  # ties stay visible
                ax.plot(
                    values,
                    np.array(rows) + offset,
                    linestyle="none",
                    marker=markers[i % len(markers)],
                    color=colours[i % len(colours)],
                    alpha=0.8,
                    label=score,
                )
        ax.set_xlabel(metric)
        ax.grid(alpha=0.3)
    axes[0].set_yticks(y, runs)
    axes[0].set_ylim(len(runs) - 0.5, -0.5)
    handles = {}
    for ax in axes:
        handles |= dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True))
    fig.legend(
        [handles[s] for s in scores],
        scores,
        loc="outside upper center",
        ncol=min(len(scores), 8),
        frameon=False,
        fontsize=8,
    )
    return fig


COMMAND = Command(
    module=__name__,
    config=CompareConfig,
    run=run,
    workdir="runs/compare",
    description=(
        "Compare finished runs (or every run in experiments' workdirs) in one table: accuracy "
        "and each score's metrics, a missing score an empty cell."
    ),
    outputs=OUTPUTS,
    runs="its config.json (the runs compared are only read, never written)",
    summary=lambda result: result["markdown"],
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
