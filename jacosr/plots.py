"""Matplotlib figures, one function per figure kind. Each returns a Figure; callers save it.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot, so nothing here
touches global matplotlib state or needs a display.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import LogNorm, SymLogNorm
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


def _log_floor(values: np.ndarray) -> np.ndarray:
    """``values`` for a log axis: zeros and negatives raised to the smallest positive value."""
    positive = values[values > 0]
    return np.maximum(values, positive.min() if positive.size else 1.0)


def plot_loss_vs_norm(
    norms: tuple[np.ndarray, np.ndarray],
    losses: tuple[np.ndarray, np.ndarray],
    *,
    title: str,
    note: str = "",
) -> Figure:
    """Per-sample loss against ||df/dx||_F, known and unknown coloured (Fig. 7).

    ``norms``, ``losses``: ``(known [N_k], unknown [N_u])`` each. Both axes are logarithmic
    (losses span orders of magnitude; a loss of exactly 0 is drawn at the smallest positive
    one); the margins hold each group's histogram of the quantity on that axis, so one sees
    which of the two separates known from unknown. ``note``: text under the axes (the
    numbers), kept off the data whatever the correlation.
    """
    lines = note.count("\n") + 1 if note else 0
    fig = Figure(figsize=(7.5, 6.5 + 0.16 * lines), layout="constrained")
    heights = (1, 4, 0.2 * lines) if note else (1, 4)
    grid = fig.add_gridspec(len(heights), 2, width_ratios=(4, 1), height_ratios=heights)
    ax = fig.add_subplot(grid[1, 0])
    top = fig.add_subplot(grid[0, 0], sharex=ax)
    right = fig.add_subplot(grid[1, 1], sharey=ax)
    all_norms = _log_floor(np.concatenate(norms))
    all_losses = _log_floor(np.concatenate(losses))
    norm_bins = np.geomspace(all_norms.min(), all_norms.max(), 41)
    loss_bins = np.geomspace(all_losses.min(), all_losses.max(), 41)
    split = len(norms[0])
    groups = (
        (slice(None, split), KNOWN_COLOUR, "known"),
        (slice(split, None), UNKNOWN_COLOUR, "unknown"),
    )
    for part, colour, label in groups:
        x, y = all_norms[part], all_losses[part]
        ax.scatter(x, y, s=8, alpha=0.5, color=colour, label=f"{label} ({len(x)})", linewidths=0)
        top.hist(x, bins=norm_bins, weights=np.full(x.size, 1 / x.size), alpha=0.55, color=colour)
        right.hist(
            y,
            bins=loss_bins,
            weights=np.full(y.size, 1 / y.size),
            alpha=0.55,
            color=colour,
            orientation="horizontal",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(r"$\|\partial f / \partial x\|_F$")
    ax.set_ylabel("loss at the pseudo label (Eq. 22)")
    corner = fig.add_subplot(grid[0, 1])  # the empty corner between the margins
    corner.axis("off")
    corner.legend(*ax.get_legend_handles_labels(), loc="center", frameon=False, markerscale=2)
    if note:
        text = fig.add_subplot(grid[2, :])
        text.axis("off")
        text.text(0.0, 1.0, note, va="top", ha="left", fontsize=8, family="monospace")
    top.set_ylabel("fraction")
    top.tick_params(labelbottom=False)
    right.set_xlabel("fraction")
    right.tick_params(labelleft=False)
    top.set_title(title)
    return fig


def _class_colours(num_classes: int) -> list:
    """A distinct colour per known class (tab10 up to 10 classes, tab20 up to 20, then cycled)."""
    cmap = colormaps["tab10" if num_classes <= 10 else "tab20"]
    return [cmap(k % cmap.N) for k in range(num_classes)]


def plot_tsne(
    maps: Mapping[str, np.ndarray],
    norms: Mapping[str, np.ndarray],
    labels: np.ndarray,
    *,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """2-D maps of the representation, by class and by Jacobian norm (Fig. 13).

    ``maps``: row title (e.g. the loss) -> ``[N, 2]`` t-SNE coordinates of the same N samples;
    ``norms``: row title -> ``[N]`` min-max normalised ||df/dx||_F in [0, 1]; ``labels``:
    ``[N]`` known label 0..K-1, or -1 for an unknown sample; ``class_names``: K legend names.
    Left column: known classes coloured, unknown black; right column: coloured by the norm.
    """
    colours = _class_colours(len(class_names))
    known = labels >= 0
    fig = Figure(figsize=(10.5, 4.6 * len(maps)), layout="constrained")
    axes = fig.subplots(len(maps), 2, squeeze=False)
    for (left, right), (name, xy) in zip(axes, maps.items(), strict=True):
        for k, (colour, class_name) in enumerate(zip(colours, class_names, strict=True)):
            points = xy[labels == k]
            left.scatter(*points.T, s=6, color=colour, label=class_name, linewidths=0)
        left.scatter(*xy[~known].T, s=6, color="black", label="unknown", linewidths=0)
        left.set_title(f"{name}: classes")
        left.legend(
            loc="center left",
            bbox_to_anchor=(1.0, 0.5),
            frameon=False,
            fontsize=8,
            markerscale=2,
            title="class",
            title_fontsize=8,
        )
        dots = right.scatter(*xy.T, s=6, c=norms[name], cmap="turbo", vmin=0, vmax=1, linewidths=0)
        right.set_title(f"{name}: " + r"$\|\partial f / \partial x\|_F$ (min-max normalised)")
        fig.colorbar(dots, ax=right, shrink=0.9)
        for ax in (left, right):
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_aspect("equal", adjustable="datalim")
    fig.suptitle(title)
    return fig


def _sweep_positions(values: np.ndarray, log: bool) -> np.ndarray:
    """Where a sweep's values go on its x-axis: themselves, except 0 on a log axis, which goes
    one grid step (the ratio of the two smallest positive values; 10 when there is one) left
    of the smallest positive value."""
    if not log or np.all(values > 0):
        return values
    positive = np.sort(values[values > 0])
    step = positive[1] / positive[0] if len(positive) > 1 else 10.0
    return np.where(values > 0, values, positive[0] / step)


def plot_sweeps(
    panels: Mapping[str, tuple[np.ndarray, Mapping[str, np.ndarray]]],
    *,
    log_x: Mapping[str, bool],
    marks: Mapping[str, float],
    mark_label: str,
    title: str,
) -> Figure:
    """Metrics against one hyper-parameter per panel (Fig. 14): the mean over seeds as a line,
    ± 1 standard deviation (ddof 1) as a band, each seed as a dot.

    ``panels``: x-axis label -> ``(values [P], series)`` with ``series``: metric name ->
    ``[P, S]`` per-seed values at each of the P settings (S seeds); every panel has the same
    metrics. ``log_x``: x-axis label -> whether the axis is logarithmic; there a value 0 is
    drawn one grid step left of the smallest positive value, labelled "0", joined by a dotted
    line across an axis break (//). ``marks``: x-axis label -> a value marked by a vertical
    line, ``mark_label`` in the legend (the paper's default). Panels fill a grid two wide.
    """
    ncols = min(2, len(panels))
    nrows = -(-len(panels) // ncols)
    fig = Figure(figsize=(max(6.4, 5.2 * ncols), 3.3 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    for ax, (label, (values, series)) in zip(axes, panels.items(), strict=False):
        values = np.asarray(values, dtype=float)
        order = np.argsort(values)
        log = log_x[label] and np.any(values > 0)
        pos = _sweep_positions(values[order], log)
        # On a log axis the segment from 0 to the smallest positive value spans no real
        # interval: draw it dotted, across a break mark.
        cut = 1 if log and values[order][0] == 0 else 0
        for i, (name, per_seed) in enumerate(series.items()):
            colour = f"C{i}"
            per_seed = np.asarray(per_seed, dtype=float)[order]
            mean = per_seed.mean(axis=1)
            std = per_seed.std(axis=1, ddof=1) if per_seed.shape[1] > 1 else np.zeros_like(mean)
            ax.fill_between(pos, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
            ax.plot(pos[cut:], mean[cut:], "o-", color=colour, markersize=4, label=name)
            if cut:
                ax.plot(pos[:2], mean[:2], ":", color=colour)
                ax.plot(pos[:1], mean[:1], "o", color=colour, markersize=4)
            seeds = np.broadcast_to(pos[:, None], per_seed.shape)
            ax.plot(seeds.ravel(), per_seed.ravel(), ".", color=colour, alpha=0.45, markersize=3)
        mark = marks[label]
        at = mark if mark > 0 or not log else _sweep_positions(np.append(values, 0.0), log)[-1]
        ax.axvline(at, color="grey", linestyle="--", linewidth=1, label=mark_label)
        if log:
            ax.set_xscale("log")
            ax.minorticks_off()
        if cut:
            ax.annotate(
                "//",
                xy=(np.sqrt(pos[0] * pos[1]), 0),
                xycoords=("data", "axes fraction"),
                ha="center",
                va="center",
                bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5},
            )
        ax.set_xticks(pos, [f"{v:g}" for v in values[order]], fontsize=8)
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    # Empty artists: legend entries for the bands and the dots of every metric.
    axes[0].fill_between([], [], color="grey", alpha=0.3, linewidth=0, label="± 1 std (seeds)")
    axes[0].plot([], [], ".", color="grey", label="one seed")
    handles, labels = axes[0].get_legend_handles_labels()
    columns = len(labels) if ncols > 1 else -(-len(labels) // 2)
    fig.legend(handles, labels, loc="outside lower center", ncol=columns, frameon=False)
    fig.suptitle(title, wrap=True)
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
    ax.set_xticks(*_step_ticks(last))
    ax.minorticks_off()
    ax.set_xlabel("training step")


def _step_ticks(last: int) -> tuple[list[int], list[str]]:
    """Ticks 0, 1, 10, 100, ... up to ``last``, and their labels."""
    ticks = [0, *(10**e for e in range(len(str(max(1, last)))))]
    return ticks, [f"{t:,}" for t in ticks]


def _emptiest_corner(x: np.ndarray, y: np.ndarray) -> tuple[float, float, str, str]:
    """``(x, y, ha, va)`` in axes fraction of the corner of the ``x, y`` scatter with the
    fewest points (for a text box that hides none)."""
    fx = (x - x.min()) / max(np.ptp(x), 1e-12)
    fy = (y - y.min()) / max(np.ptp(y), 1e-12)
    corners = {
        (0.97, 0.03, "right", "bottom"): np.sum((fx > 0.55) & (fy < 0.45)),
        (0.97, 0.97, "right", "top"): np.sum((fx > 0.55) & (fy > 0.55)),
        (0.03, 0.03, "left", "bottom"): np.sum((fx < 0.45) & (fy < 0.45)),
        (0.03, 0.97, "left", "top"): np.sum((fx < 0.45) & (fy > 0.55)),
    }
    return min(corners, key=corners.get)


def plot_dynamics(
    curves: Mapping[str, Mapping], panels: Mapping[str, str], *, title: str
) -> Figure:
    """Metrics against the training step: one panel per metric, one curve per variant, the
    mean over seeds with a ± 1 std band (Figs. 4, 8-11, 15).

    ``curves``: variant label -> ``{"steps": [T], "mean": {metric: [T]}, "std": {metric:
    [T]}}`` (the per-variant series of :mod:`jacosr.experiments.dynamics`); ``panels``:
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


def plot_metric_pairs(
    points: Mapping[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    steps: np.ndarray,
    groups: np.ndarray,
    labels: Mapping[str, str],
    notes: Sequence[str],
    *,
    title: str,
) -> Figure:
    """One metric against another over the tracked steps of runs (Fig. 5): one panel per
    ``(x, y)`` pair of ``pairs``.

    ``points``: metric -> ``[P]`` values, one per tracked step of a run; ``steps: [P]`` the
    step of each point (its colour, on the step axis of :func:`plot_dynamics`); ``groups:
    [P]`` int, the run of each point (its marker; a run's points are joined in step order);
    ``labels``: metric -> axis label; ``notes``: per panel, text in its corner (e.g. the
    correlations).
    """
    fig = Figure(figsize=(4.6 * len(pairs) + 0.8, 4.2), layout="constrained")
    axes = fig.subplots(1, len(pairs), squeeze=False)[0]
    last = max(1, int(np.max(steps)))
    norm = SymLogNorm(linthresh=1.0, linscale=0.5, vmin=0, vmax=last)
    markers = "os^Dv<>p"
    for ax, (x, y), note in zip(axes, pairs, notes, strict=True):
        for g in np.unique(groups):
            at = groups == g
            ax.plot(points[x][at], points[y][at], "-", color="grey", alpha=0.4, linewidth=0.8)
            scatter = ax.scatter(
                points[x][at],
                points[y][at],
                c=steps[at],
                cmap="viridis",
                norm=norm,
                marker=markers[int(g) % len(markers)],
                s=22,
                edgecolors="black",
                linewidths=0.3,
                label=f"seed {int(g)}",
            )
        ax.set_xlabel(labels[x])
        ax.set_ylabel(labels[y])
        ax.grid(alpha=0.3)
        tx, ty, ha, va = _emptiest_corner(points[x], points[y])
        ax.text(
            tx,
            ty,
            note,
            transform=ax.transAxes,
            ha=ha,
            va=va,
            fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "grey", "alpha": 0.8},
        )
        ax.legend(frameon=False, fontsize=8, loc="best")
    bar = fig.colorbar(scatter, ax=list(axes), label="training step")
    ticks, tick_labels = _step_ticks(last)
    bar.set_ticks(ticks, labels=tick_labels)
    bar.minorticks_off()
    fig.suptitle(title)
    return fig


def plot_input_plane_norms(
    grids: Mapping[str, np.ndarray],
    extent: float,
    known: tuple[np.ndarray, np.ndarray],
    unknown: np.ndarray | None,
    *,
    class_names: Sequence[str],
    title: str,
) -> Figure:
    """||df/dx||_F over a 2-D input plane as heat maps on one logarithmic colour scale.

    ``grids``: panel title (e.g. before / after training) -> ``[R, R]`` norms at the points
    ``(u[j], u[i])`` of ``u = linspace(-extent, extent, R)`` (row i is height u[i]);
    ``known``: ``(points [N, 2], labels [N] in 0..K-1)`` drawn by class; ``unknown``:
    ``[M, 2]`` points drawn as white crosses, or None. The scale is logarithmic because the
    unit normalisation makes the norm blow up where the network's z vanishes, which a linear
    scale shows and nothing else; it is shared, so the panels compare directly.
    """
    values = np.concatenate([g.ravel() for g in grids.values()])
    values = values[np.isfinite(values) & (values > 0)]
    scale = LogNorm(values.min(), values.max())
    colours = _class_colours(len(class_names))
    points, labels = known
    fig = Figure(figsize=(5.2 * len(grids) + 1.6, 5.4), layout="constrained")
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for ax, (name, grid) in zip(axes, grids.items(), strict=True):
        image = ax.imshow(
            grid,
            origin="lower",
            extent=(-extent, extent, -extent, extent),
            norm=scale,
            cmap="magma",
            interpolation="nearest",
        )
        for k, (colour, class_name) in enumerate(zip(colours, class_names, strict=True)):
            ax.scatter(
                *points[labels == k].T,
                s=3,
                color=colour,
                alpha=0.7,
                linewidths=0,
                label=f"known {class_name}",
            )
        if unknown is not None:
            ax.scatter(
                *unknown.T,
                s=5,
                marker="x",
                color="white",
                alpha=0.6,
                linewidths=0.5,
                label="unknown",
            )
        ax.set_title(name)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
        ax.set_aspect("equal")
    fig.colorbar(image, ax=axes, label=r"$\|\partial f / \partial x\|_F$ (log scale)", shrink=0.85)
    fig.legend(
        *axes[0].get_legend_handles_labels(),
        loc="outside lower center",
        ncol=len(class_names) + 1,
        frameon=False,
        fontsize=8,
        markerscale=3,
    )
    fig.suptitle(title, fontsize=10)
    return fig


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


def plot_grouped_scatter(
    panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
    *,
    xlabel: str,
    ylabel: str,
    notes: Mapping[str, str],
    title: str,
) -> Figure:
    """One scatter per panel, one colour and marker per group (Fig. 12: a panel per data set,
    a group per method, a point per trained model): every point a marker, each group's mean a
    cross with ± 1 std (ddof 1) error bars in both coordinates (none for a group of one point).

    ``panels``: panel title -> group label -> ``(x [N], y [N])``; a group keeps its colour in
    every panel. ``notes``: panel title -> a line under the title (e.g. the correlations),
    where it hides no point. One legend of the groups below the panels.
    """
    groups = list(dict.fromkeys(g for panel in panels.values() for g in panel))
    colour = dict(zip(groups, _class_colours(len(groups)), strict=True))
    markers = "osD^v<>p"  # with tab20's paired hues, the shape tells neighbours apart
    marker = {g: markers[i % len(markers)] for i, g in enumerate(groups)}
    fig = Figure(figsize=(1.0 + 4.8 * len(panels), 4.8), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    handles = {}
    for ax, (name, panel) in zip(axes, panels.items(), strict=True):
        for group, (x, y) in panel.items():
            x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
            (handles[group],) = ax.plot(
                x,
                y,
                marker[group],
                linestyle="none",
                color=colour[group],
                alpha=0.7,
                markersize=6,
                markeredgecolor="black",
                markeredgewidth=0.4,
                label=group,
            )
            spread = len(x) > 1
            ax.errorbar(
                x.mean(),
                y.mean(),
                xerr=x.std(ddof=1) if spread else None,
                yerr=y.std(ddof=1) if spread else None,
                fmt="X",
                color=colour[group],
                markersize=10,
                markeredgecolor="black",
                markeredgewidth=0.6,
                capsize=3,
                linewidth=1.2,
            )
        ax.set_title(f"{name}\n{notes[name]}", fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.legend(
        [handles[g] for g in groups],
        groups,
        loc="outside lower center",
        ncol=min(len(groups), (2 if len(groups) <= 6 else 3) * len(panels)),
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(title, wrap=True, fontsize=10)
    return fig


def plot_paired_series(
    xs: np.ndarray,
    panels: Mapping[str, Mapping[str, np.ndarray]],
    *,
    xlabel: str,
    notes: Mapping[str, str],
    replicates: str,
    title: str,
) -> Figure:
    """Metrics against a count, one panel per y-axis label (Fig. 6: the JND, the AUROC and the
    mean norms against the number K of known classes): per series the mean over replicates as
    a line with a ± 1 std (ddof 1) band, and each replicate's values as a thin line (a
    replicate is paired across x, e.g. one draw's nested known sets).

    ``xs: [P]`` the x values, each one a tick; ``panels``: y label -> series label -> ``[P,
    S]`` values of S replicates (a panel of several series gets a legend of them);
    ``notes``: y label -> the panel's title (e.g. a correlation; none when missing);
    ``replicates``: what a replicate is, for the legend below the panels (e.g. "draws").
    """
    xs = np.asarray(xs)
    order = np.argsort(xs)
    xs = xs[order]
    fig = Figure(figsize=(0.6 + 4.4 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, series) in zip(axes, panels.items(), strict=True):
        for i, (name, values) in enumerate(series.items()):
            values = np.asarray(values, dtype=float)[order]
            colour = f"C{i}"
            mean = values.mean(axis=1)
            std = values.std(axis=1, ddof=1) if values.shape[1] > 1 else np.zeros_like(mean)
            ax.fill_between(xs, mean - std, mean + std, color=colour, alpha=0.2, linewidth=0)
            ax.plot(xs, values, "-", color=colour, alpha=0.35, linewidth=0.8)
            ax.plot(xs, values, ".", color=colour, alpha=0.6, markersize=4)
            ax.plot(xs, mean, "o-", color=colour, markersize=5, linewidth=2, label=name)
        if len(series) > 1:
            ax.legend(frameon=False, fontsize=8, loc="best")
        if label in notes:
            ax.set_title(notes[label], fontsize=9)
        ax.set_xticks(xs)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    # Empty artists: the legend of what the lines, bands and thin lines are.
    key = axes[0]
    legend = [
        key.plot([], [], "o-", color="grey", linewidth=2, markersize=5)[0],
        key.fill_between([], [], color="grey", alpha=0.3, linewidth=0),
        key.plot([], [], ".-", color="grey", alpha=0.5, linewidth=0.8)[0],
    ]
    fig.legend(
        legend,
        [f"mean over {replicates}", f"± 1 std over {replicates}", f"one of the {replicates}"],
        loc="outside lower center",
        ncol=3,
        frameon=False,
        fontsize=9,
    )
    fig.suptitle(title, wrap=True, fontsize=10)
    return fig
