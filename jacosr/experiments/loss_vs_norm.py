"""Per-sample loss against the Jacobian norm of the representation (the paper's Fig. 7).

    python -m jacosr.experiments.loss_vs_norm                 # digits, known 0..5, m-OvR, 3 seeds
    python -m jacosr.experiments.loss_vs_norm --benchmark mnist --backbone vgg32 --embed-dim 128

The default trains three 2,000-step runs of the digits MLP, then computes the loss and the
exact ||df/dx||_F of the 539 test images under each (runtime: experiments/README.md). Each
seed's run lives in ``<workdir>/runs/<loss>/seed<i>``; re-running reads the finished runs back
and only repeats the analysis.

For every test sample (known-test and unknown-test, at most ``--max-samples`` of each, the
same seeded subset for every seed) it computes the loss at the pseudo label (Eq. 22,
:func:`jacosr.scores.score_loss`, the paper's unknown score) and the exact ||df/dx||_F
(:mod:`jacosr.jacobian`), then the Pearson and Spearman correlations of the two over all
samples, over the known and over the unknown ones, and how well each of the two separates
known from unknown (AUROC, unknown positive). ``results.json`` holds every seed and the mean
± std over seeds; ``samples.npz`` the per-sample values (``loss_known [S, N_k]``,
``norm_known``, ``loss_unknown [S, N_u]``, ``norm_unknown``, ``seeds [S]``).

What ``loss_vs_norm.png`` shows: seed 0's samples as a scatter of loss against ||J|| (both on
log axes), known blue, unknown red, with each quantity's distribution per group in the
margins. The paper's Fig. 7 (its caption names no data set) and Sec. V-A claim two things:
the loss correlates positively with the Jacobian norm, and known and unknown are better
separated by the loss than by the norm, which is why the loss is the unknown score. Pearson
measures a linear relation of the raw values, which a few large losses dominate; Spearman, the
rank correlation, is what the log-log picture shows.

What the default measures on digits, claim by claim, is in the README ("The paper's theory
on digits", the Fig. 7 row).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from jacosr.config import require, to_dict
from jacosr.data import load_open_set
from jacosr.evaluate import capped_test_splits, per_sample
from jacosr.experiments.command import Command
from jacosr.grids import seed_grid
from jacosr.metrics import metric_auroc, metric_correlations
from jacosr.plots import KNOWN_COLOUR, UNKNOWN_COLOUR
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import RESULTS
from jacosr.tables import markdown_table, summarise_values
from jacosr.train import fit
from jacosr.workdir import open_workdir

OUTPUTS = (RESULTS, "samples.npz", "loss_vs_norm.png")
GROUPS = ("all", "known", "unknown")
# The summary table's columns: header -> the path of keys in one seed's record.
COLUMNS = {
    **{
        f"{kind.capitalize()} ({group})": ("correlation", group, kind)
        for kind in ("pearson", "spearman")
        for group in GROUPS
    },
    "AUROC (loss)": ("auroc", "loss"),
    "AUROC (‖J‖)": ("auroc", "jacobian_norm"),
}


@dataclass(frozen=True)
class LossVsNormConfig:
    """The loss-against-Jacobian-norm experiment.

    Attributes:
      train: the model (default: digits, known classes 0..5, m-OvR, 2000 steps); trained
        once per seed (its --seed is replaced by each of 0..seeds-1).
      seeds: the model is trained with seeds 0..seeds-1; correlations and AUROCs are reported
        as mean ± std over them, the figure shows seed 0.
      max_samples: at most this many known-test and this many unknown-test samples are
        analysed (a seeded subset, the same for every seed); digits has 325 and 214.
      analysis_seed: seed of that subset.

    Refused when built (``ValueError`` naming the flag): fewer than 1 seed or 3 samples (a
    correlation needs three points to mean anything).
    """

    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=2000))
    seeds: int = 3
    max_samples: int = 2000
    analysis_seed: int = 0

    def __post_init__(self):
        require(self.seeds >= 1, "--seeds", ">= 1", self.seeds)
        require(self.max_samples >= 3, "--max-samples", ">= 3", self.max_samples)


UNDEFINED = {"pearson": float("nan"), "spearman": float("nan")}
"""A group's correlations where none is defined (a constant loss or norm): NaN, which the
summary over seeds then carries."""


def measure(known: dict[str, np.ndarray], unknown: dict[str, np.ndarray]) -> dict:
    """One model's record: correlations over all, known and unknown samples; the AUROC of the
    loss and of the norm as unknown scores; the mean loss and norm of each group."""
    pooled = {k: np.concatenate([known[k], unknown[k]]) for k in ("loss", "norm")}
    groups = {"all": pooled, "known": known, "unknown": unknown}
    return {
        "correlation": {
            g: metric_correlations(s["norm"], s["loss"]) or UNDEFINED for g, s in groups.items()
        },
        "auroc": {
            "loss": metric_auroc(known["loss"], unknown["loss"]),
            "jacobian_norm": metric_auroc(known["norm"], unknown["norm"]),
        },
        "mean": {
            group: {"loss": float(s["loss"].mean()), "jacobian_norm": float(s["norm"].mean())}
            for group, s in (("known", known), ("unknown", unknown))
        },
    }


def run(config: LossVsNormConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train (or reuse) the model for every seed, analyse each, write the workdir."""
    data = load_open_set(config.train.data)  # missing data fails before the workdir exists
    known, unknown = capped_test_splits(data, config.max_samples, config.analysis_seed)
    with open_workdir(workdir, to_dict(config), outputs=OUTPUTS, overwrite=overwrite) as opened:
        workdir = opened.path
        loss_name = config.train.loss.loss
        records, samples = {}, []
        for name, train in seed_grid({loss_name: resolve(config.train)}, config.seeds).items():
            graphdef, state = fit(train, data, workdir / "runs" / name)
            values = [per_sample(graphdef, state, s.x, config.train.loss) for s in (known, unknown)]
            records[name] = {"seed": train.seed, **measure(*values)}
            samples.append(values)

        arrays = {
            f"{quantity}_{group}": np.stack([s[i][quantity] for s in samples])
            for i, group in enumerate(("known", "unknown"))
            for quantity in ("loss", "norm")
        }
        opened.write(
            "samples.npz",
            lambda f: np.savez(f, seeds=np.arange(config.seeds), **arrays),
        )
        summary = summarise_values(
            {name: {h: _at(r, path) for h, path in COLUMNS.items()} for name, r in records.items()}
        )
        split = data.describe()
        results = {
            "config": to_dict(config),
            "split": split,
            "num_samples": {"known": len(known.y), "unknown": len(unknown.y)},
            "seeds": records,
            "summary": summary[loss_name],
            "markdown": markdown_table(summary, row_header="loss"),
        }
        opened.write_json(RESULTS, results)
        first = records[f"{loss_name}/seed0"]
        figure = plot_loss_vs_norm(
            (arrays["norm_known"][0], arrays["norm_unknown"][0]),
            (arrays["loss_known"][0], arrays["loss_unknown"][0]),
            title=f"{split['source']}: known {split['known_classes']}, {loss_name}, "
            f"seed 0 of {config.seeds}",
            note=_note(first, summary[loss_name], config.seeds),
        )
        opened.save_figure("loss_vs_norm.png", figure)
        return results


def _at(record: dict, path: tuple[str, ...]) -> float:
    """The number at ``path`` in a seed's record (a column of the summary)."""
    for key in path:
        record = record[key]
    return float(record)


def _note(first: dict, summary: dict, seeds: int) -> str:
    """The figure's text box: seed 0's numbers, and their mean ± std over the seeds."""

    def line(label: str, header: str, value: float) -> str:
        cell = summary[header]
        return f"{label:<18}{value:.3f}  ({cell['mean']:.3f} ± {cell['std']:.3f})"

    corr = first["correlation"]
    return "\n".join(
        [
            f"{'':<18}seed 0  (mean ± std over {seeds} seeds)",
            line("Spearman, all", "Spearman (all)", corr["all"]["spearman"]),
            line("Spearman, known", "Spearman (known)", corr["known"]["spearman"]),
            line("Spearman, unknown", "Spearman (unknown)", corr["unknown"]["spearman"]),
            line("Pearson, all", "Pearson (all)", corr["all"]["pearson"]),
            line("AUROC of loss", "AUROC (loss)", first["auroc"]["loss"]),
            line("AUROC of ‖J‖", "AUROC (‖J‖)", first["auroc"]["jacobian_norm"]),
        ]
    )


def format_summary(results: dict) -> str:
    """The mean ± std table over seeds."""
    n = results["num_samples"]
    return f"{n['known']} known and {n['unknown']} unknown test samples\n{results['markdown']}"


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


COMMAND = Command(
    module=__name__,
    config=LossVsNormConfig,
    run=run,
    workdir="runs/loss_vs_norm",
    description=(
        "Per-sample loss (Eq. 22) against the exact Jacobian norm, known and unknown: "
        "correlations and AUROCs over seeds (Fig. 7)."
    ),
    outputs=OUTPUTS,
    runs="the trained models (runs/)",
    summary=format_summary,
)


def main(args: list[str] | None = None) -> dict:
    return COMMAND.main(args)


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
