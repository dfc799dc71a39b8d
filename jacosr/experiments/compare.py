"""Compare finished runs in one table: accuracy and every score's metrics, one row per run.

    python -m jacosr.experiments.compare                       # every run under runs/
    python -m jacosr.experiments.compare runs/a runs/b runs/losses_table --metrics auroc oscr

Runtime on 2 CPU cores: about 3 s, mostly imports (the default on 24 runs: 3.2 s wall, 3.1 s
of CPU, load average 3.7); it reads results.json files, nothing is trained or evaluated.
Writes into ``--workdir`` (default ``runs/compare``), never into the runs it reads:
``compare.md`` (the Markdown table, also printed), ``compare.csv`` (the same cells, full
precision, for spreadsheets and pandas), ``results.json`` and ``compare.png``.

Each path given is a training run (a workdir of ``python -m jacosr.train``) or any folder that
holds some: an experiment's workdir is expanded into the training runs below it (``train/``,
``runs/<row>/seed<s>``, ``seed<s>/``; :func:`jacosr.train.find_runs`), one row each; its own
table is not read. A run without ``results.json`` (unfinished, or trained by ``fit`` alone, as
the ``train/`` of interp) is left out with a warning, since comparing it would mean evaluating
it, and the command writes nothing into runs; so is a run whose results.json cannot be read
as one (:func:`read_results`: empty, not JSON, a field missing or of the wrong kind), with a
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
import warnings
from dataclasses import dataclass
from pathlib import Path

import tyro

from jacosr.config import require, to_dict
from jacosr.evaluate import SCORE_METRICS
from jacosr.experiments.command import Command
from jacosr.plots import plot_compare
from jacosr.train import RESULTS, find_runs
from jacosr.workdir import open_workdir

OUTPUTS = ("compare.md", "compare.csv", "results.json", "compare.png")


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


RESULTS_FIELDS = {
    "config": "an object",
    "accuracy": "a number",
    "split": "an object",
    "scores": "an object",
}
"""The fields of a training run's ``results.json`` that its readers use (the resolved config,
the closed-set accuracy, the data evaluated on, score -> {metric: number or null}), each with
its JSON type as :func:`read_results` names it."""


def read_results(path: Path) -> dict:
    """A training run's ``results.json`` at ``path``, checked as far as its readers rely on it:
    a JSON object holding the fields of :data:`RESULTS_FIELDS`, of their types, each score row
    an object of metric -> number or null.

    Raises ``FileNotFoundError`` when there is no such file, and ``ValueError`` naming the file
    and what is wrong otherwise: unreadable, empty, not UTF-8 text, not JSON, not an object, a
    field missing or of another type (a damaged file, or the results of something else)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"{path} cannot be read: {err.strerror or err}") from None
    if not data.strip():
        raise ValueError(f"{path} is empty")
    try:
        results = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not JSON ({err})") from None
    except RecursionError:
        raise ValueError(f"{path} is JSON nested too deeply to read") from None
    if not isinstance(results, dict):
        raise ValueError(f"{path} holds {_json_type(results)}, not an object")
    missing = [field for field in RESULTS_FIELDS if field not in results]
    if missing:
        raise ValueError(
            f"{path} lacks {', '.join(map(repr, missing))} (a training run's results.json holds "
            f"{', '.join(RESULTS_FIELDS)})"
        )
    for field, wanted in RESULTS_FIELDS.items():
        if _json_type(results[field]) != wanted:
            raise ValueError(f"{path}: {field!r} is {_json_type(results[field])}, not {wanted}")
    for score, row in results["scores"].items():
        if not isinstance(row, dict):
            raise ValueError(
                f"{path}: scores[{score!r}] is {_json_type(row)}, not an object of metric -> value"
            )
        for metric, value in row.items():
            if _json_type(value) not in ("a number", "null"):
                raise ValueError(
                    f"{path}: scores[{score!r}][{metric!r}] is {_json_type(value)}, not a number "
                    "or null"
                )
    return results


def _json_type(value: object) -> str:
    """The JSON type of a value ``json.loads`` gave, with its article, for messages."""
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    return "null" if value is None else names.get(type(value), "a number")


def collect(paths: tuple[Path, ...]) -> dict[str, dict]:
    """``label -> results.json`` of every training run found at or below ``paths`` (each
    once, in the order given), leaving out with a warning those without results.json, and
    with a warning each those whose results.json :func:`read_results` refuses.

    Raises ``FileNotFoundError`` for a path that does not exist or holds no training run,
    and ``ValueError`` when no run found has results that can be read."""
    found: dict[Path, str] = {}
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; give workdirs of jacosr runs")
        runs = find_runs(path)
        if not runs:
            raise FileNotFoundError(
                f"{path} holds no training run (a folder with config.json and checkpoints/)"
            )
        for run in runs:
            found.setdefault(run.resolve(), str(run))
    results, missing, damaged = {}, [], 0
    for run, label in found.items():
        try:
            results[label] = read_results(run / RESULTS)
        except FileNotFoundError:
            missing.append(label)
        except ValueError as err:
            damaged += 1
            warnings.warn(
                f"left out run {label}: {err}; re-running its `python -m jacosr.train` command "
                "evaluates it again and rewrites the file",
                stacklevel=2,
            )
    if missing:
        warnings.warn(
            f"left out {len(missing)} run(s) without results.json (unfinished, or trained by "
            f"fit alone; evaluate one with `python -m jacosr.train` and its flags): "
            f"{', '.join(missing)}",
            stacklevel=2,
        )
    if not results:
        raise ValueError(
            f"none of the runs in {', '.join(map(str, paths))} has a readable results.json "
            f"({len(missing)} without one, {damaged} damaged; see the warnings above)"
        )
    return results


def comparison(results: dict[str, dict], metrics: tuple[str, ...]) -> dict:
    """The table: ``{"differs": [config fields], "columns": [value columns], "rows": {label:
    {"config": {field: value}, "values": {column: float or None}}}}``.

    ``differs``: the (flattened) config fields whose values are not the same in every run;
    ``columns``: ``accuracy`` and ``"<score> <metric>"`` over the union of the scores.
    """
    configs = {label: _flat(r["config"]) for label, r in results.items()}
    fields = list(dict.fromkeys(f for c in configs.values() for f in c))
    differs = [f for f in fields if len({json.dumps(c.get(f)) for c in configs.values()}) > 1]
    scores = list(dict.fromkeys(s for r in results.values() for s in r["scores"]))
    columns = ["accuracy", *(f"{s} {m}" for s in scores for m in metrics)]
    rows = {}
    for label, r in results.items():
        values = {"accuracy": r["accuracy"]}
        for score in scores:
            for metric in metrics:
                values[f"{score} {metric}"] = r["scores"].get(score, {}).get(metric)
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
        opened.write_json("results.json", out)
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
