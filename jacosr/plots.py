"""The figures more than one experiment draws (the norm histograms, the tables' bar charts)
and the colours they share; a figure of one experiment lives in that experiment's module.
Each function returns a Figure; callers save it.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so nothing here
touches global matplotlib state or needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

KNOWN_COLOUR = "tab:blue"
UNKNOWN_COLOUR = "tab:red"


def plot_norm_histograms(norms: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Histograms of per-sample Jacobian norms of known and unknown test samples (Fig. 2).

    ``norms``: panel title -> ``(known_norms [N_k], unknown_norms [N_u])``, e.g. before and
    after training. Each panel has its own x-range (norms change scale during training).
    """
    fig = Figure(figsize=(5 * len(norms), 3.6), layout="tight")
    axes = fig.subplots(1, len(norms), squeeze=False)
    for ax, (title, (known, unknown)) in zip(axes[0], norms.items(), strict=True):
        bins = np.histogram_bin_edges(np.concatenate([known, unknown]), bins=40)
        for values, colour, label in (
            (known, KNOWN_COLOUR, "known"),
            (unknown, UNKNOWN_COLOUR, "unknown"),
        ):
            ax.hist(
                values,
                bins=bins,
                density=True,
                alpha=0.55,
                color=colour,
                label=f"{label} (mean {np.mean(values):.3g})",
            )
            ax.axvline(np.mean(values), color=colour, linestyle="--", linewidth=1)
        ax.set_title(title)
        ax.set_xlabel(r"$\|\partial f / \partial x\|_F$")
        ax.set_ylabel("density")
        ax.legend(frameon=False)
    return fig


def _grouped_bars(ax, summary: Mapping[str, Mapping[str, dict]], *, horizontal: bool) -> float:
    """Draw ``summary`` (row -> column -> ``{"mean", "std", "values"}``) on ``ax`` as grouped
    bars: one group per row at 0, 1, ..., one bar per column (mean ± std), the replicates as
    dots; bars along x when ``horizontal``. Returns the lowest replicate (at most 1), for the
    value axis's limit."""
    rows = list(summary)
    columns = list(summary[rows[0]])
    width = 0.8 / len(columns)
    lowest = 1.0
    for i, column in enumerate(columns):
        mean = np.array([summary[r][column]["mean"] for r in rows])
        std = np.array([summary[r][column]["std"] for r in rows])
        pos = np.arange(len(rows)) + (i - (len(columns) - 1) / 2) * width
        if horizontal:
            ax.barh(pos, mean, width, xerr=std, capsize=2, label=column, alpha=0.8)
        else:
            ax.bar(pos, mean, width, yerr=std, capsize=2, label=column, alpha=0.8)
        for p, r in zip(pos, rows, strict=True):
            values = summary[r][column]["values"]
            at = [p] * len(values)
            ax.plot(*((values, at) if horizontal else (at, values)), "k.", markersize=3)
            lowest = min(lowest, *values)
    return lowest


def plot_summary(summary: Mapping[str, Mapping[str, dict]], *, title: str) -> Figure:
    """Grouped bars: one group per row, one bar per column (mean ± std), seeds as dots."""
    rows = list(summary)
    columns = list(summary[rows[0]])
    fig = Figure(
        figsize=(min(12.0, max(6.0, 0.35 * len(rows) * len(columns))), 4.5), layout="tight"
    )
    ax = fig.subplots()
    lowest = _grouped_bars(ax, summary, horizontal=False)
    ax.set_xticks(np.arange(len(rows)), rows, rotation=20, ha="right")
    ax.set_ylim(max(0.0, lowest - 0.05), 1.005)
    ax.set_ylabel("mean ± std over seeds (dots: seeds)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        frameon=False, fontsize=8, ncol=len(columns), loc="lower center", bbox_to_anchor=(0.5, 1.06)
    )
    return fig


def class_colours(num_classes: int) -> list:
    """A distinct colour per known class (tab10 up to 10 classes, tab20 up to 20, then cycled)."""
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(num_classes)]


def plot_row_bars(
    summary: Mapping[str, Mapping[str, dict]], *, title: str, metric: str, replicates: str
) -> Figure:
    """Horizontal grouped bars, one group per row of a table (top to bottom in table order),
    one bar per column (mean ± std), the replicates as dots: Table I's methods and Table III's
    ablation rows, one bar per benchmark.

    ``summary``: row label (e.g. ``"a: N+W+A+S"``) -> column (benchmark) -> ``{"mean", "std",
    "values"}`` of ``metric`` (e.g. ``"AUROC"``, in [0, 1]); ``replicates``: what the dots are
    (``"splits"``, ``"seeds"``).
    """
    rows = list(summary)
    columns = list(summary[rows[0]])
    size = max(3.0, 1.2 + 0.3 * len(rows) * max(1.0, len(columns) / 2))
    fig = Figure(figsize=(8.0 + (1.5 if len(columns) > 1 else 0.0), size), layout="tight")
    ax = fig.subplots()
    lowest = _grouped_bars(ax, summary, horizontal=True)
    ax.set_yticks(np.arange(len(rows)), rows)
    ax.invert_yaxis()
    ax.set_xlim(max(0.0, lowest - 0.05), 1.005)
    ax.set_xlabel(f"{metric}, mean ± std over {replicates} (dots: {replicates})")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    if len(columns) > 1:
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


LOG_SPAN = 30


"""A panel of :func:`plot_dynamics` whose positive curves span more than this factor gets a
logarithmic y-axis."""


def _symlog_steps(ax, last: int) -> None:
    """A step axis from 0 to ``last``, linear up to 1 and logarithmic after: step 0 (the
    initial model) is on it, and the early steps, where training changes most, are spread
    out. Ticks at 0 and the powers of ten."""
    ax.set_xscale("symlog", linthresh=1.0, linscale=0.5)
    ax.set_xlim(0, last * 1.15)
    ax.set_xticks(*step_ticks(last))
    ax.minorticks_off()
    ax.set_xlabel("training step")


def step_ticks(last: int) -> tuple[list[int], list[str]]:
    """Ticks 0, 1, 10, 100, ... up to ``last``, and their labels."""
    ticks = [0, *(10**e for e in range(len(str(max(1, last)))))]
    return ticks, [f"{t:,}" for t in ticks]


def plot_dynamics(
    curves: Mapping[str, Mapping], panels: Mapping[str, str], *, title: str
) -> Figure:
    """Metrics against the training step: one panel per metric, one curve per variant, the
    mean over seeds with a ± 1 std band (Figs. 4, 8-11, 15).

    ``curves``: variant label -> ``{"steps": [T], "mean": {metric: [T]}, "std": {metric:
    [T]}}`` (:func:`jacosr.tracking.series_over_seeds`); ``panels``:
    metric -> its axis label, in panel order. A variant keeps its colour in every panel; a
    panel whose positive means span more than :data:`LOG_SPAN` gets a log y-axis.
    """
    fig = Figure(figsize=(3.9 * len(panels), 3.7), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = colormaps["tab10"].colors
    for ax, (metric, label) in zip(axes, panels.items(), strict=True):
        for i, (variant, curve) in enumerate(curves.items()):
            steps = np.asarray(curve["steps"])
            mean = np.asarray(curve["mean"][metric])
            std = np.asarray(curve["std"][metric])
            colour = colours[i % len(colours)]
            ax.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
            ax.plot(steps, mean, ".-", color=colour, markersize=3, label=variant)
        _symlog_steps(ax, max(max(curve["steps"]) for curve in curves.values()))
        means = np.concatenate([np.asarray(c["mean"][metric]) for c in curves.values()])
        if means.min() > 0 and means.max() > LOG_SPAN * means.min():
            ax.set_yscale("log")  # e.g. unnormalised next to unit-normalised embeddings
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=len(curves),
        frameon=False,
    )
    fig.suptitle(title)
    return fig
