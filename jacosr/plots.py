"""Matplotlib figures, one function per figure kind. Each returns a Figure; callers save it.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so nothing here
touches global matplotlib state or needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
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


def plot_path_profiles(
    ts: np.ndarray,
    profiles: Mapping[str, np.ndarray],
    levels: Mapping[str, tuple[np.ndarray, np.ndarray]],
) -> Figure:
    """Jacobian norm along interpolation paths between known classes (Fig. 3).

    ``profiles``: panel title -> ``[P, T]`` norms at ``ts`` for P paths, drawn as the mean with
    the interquartile band. ``levels``: panel title -> ``(known_norms, unknown_norms)`` of the
    test samples, drawn as horizontal reference bands (interquartile range, median line).
    """
    fig = Figure(figsize=(5 * len(profiles), 4.0), layout="constrained")
    axes = fig.subplots(1, len(profiles), squeeze=False)
    for ax, (title, norms) in zip(axes[0], profiles.items(), strict=True):
        for values, colour, label in zip(
            levels[title],
            (KNOWN_COLOUR, UNKNOWN_COLOUR),
            ("known test", "unknown test"),
            strict=True,
        ):
            lo, mid, hi = np.percentile(values, [25, 50, 75])
            ax.axhspan(lo, hi, color=colour, alpha=0.15, label=f"{label} (IQR)")
            ax.axhline(mid, color=colour, linewidth=1, linestyle="--")
        lo, hi = np.percentile(norms, [25, 75], axis=0)
        ax.fill_between(ts, lo, hi, color="black", alpha=0.2, label="paths (IQR)")
        ax.plot(ts, norms.mean(axis=0), color="black", linewidth=2, label="paths (mean)")
        ax.set_title(title)
        ax.set_xlabel(r"$t$ in $x_t = (1-t)\,x_0 + t\,x_1$ (classes $i \to j$)")
        ax.set_ylabel(r"$\|\partial f / \partial x\|_F$")
        ax.set_xlim(ts[0], ts[-1])
    # The bands span the whole axes, so one legend below the panels keeps the data visible.
    fig.legend(
        *axes[0, 0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=4,
        frameon=False,
        fontsize=8,
    )
    return fig


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
