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
