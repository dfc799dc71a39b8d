"""Per-sample loss against the Jacobian norm of the representation (the paper's Fig. 7).

    python -m jacosr.experiments.loss_vs_norm                 # digits, known 0..5, m-OvR, 3 seeds
    python -m jacosr.experiments.loss_vs_norm --benchmark mnist --backbone vgg32 --embed-dim 128

Runtime on 2 CPU cores: 24 s wall (23 s CPU) on a quiet machine, 41 s at load average 6.5
(25 s CPU): three 2,000-step runs of the digits MLP, then the loss and the exact ||df/dx||_F
of the 539 test images under each, imports and compilation included. Each seed's run lives in
``<workdir>/runs/<loss>/seed<i>``; re-running reads the finished runs back and only repeats
the analysis (9 s CPU, mostly imports and compilation).

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

On digits (3 seeds) the first claim holds: Spearman 0.92 ± 0.02 over all samples (0.76 within
the known, 0.69 within the unknown), known samples at low norm and loss, unknown ones at high
norm and loss. The second does not on digits: the loss and the norm separate equally well
(AUROC 0.973 ± 0.006 and 0.973 ± 0.002). With ``--loss sce`` the loss separates far better
than the norm (0.981 vs 0.723) while hardly correlating with it (Spearman 0.37 ± 0.28): there
the loss carries what the norm does not.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from flax import nnx

from jacosr import jacobian
from jacosr.config import require, to_dict
from jacosr.data import OpenSetData, Split, load_open_set, to_float
from jacosr.evaluate import predict, subset_indices
from jacosr.experiments.command import Command
from jacosr.experiments.grid import markdown_table, seed_grid, summarise
from jacosr.losses import LossConfig
from jacosr.metrics import metric_auroc, metric_correlations
from jacosr.models import ModelState, embedding_apply
from jacosr.plots import plot_loss_vs_norm
from jacosr.scores import score_loss
from jacosr.train import TrainConfig, fit
from jacosr.workdir import open_workdir

OUTPUTS = ("results.json", "samples.npz", "loss_vs_norm.png")
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


def capped_test_splits(data: OpenSetData, max_samples: int, seed: int) -> tuple[Split, Split]:
    """Known-test and unknown-test, each cut to at most ``max_samples`` samples.

    The kept samples are drawn without replacement by ``default_rng(seed)`` and keep their
    order in the split; a split no larger than ``max_samples`` is returned whole.
    """
    rng = np.random.default_rng(seed)

    def cut(split: Split) -> Split:
        if len(split.y) <= max_samples:
            return split
        keep = subset_indices(len(split.y), max_samples, rng)
        return Split(split.x[keep], split.y[keep])

    return cut(data.known_test), cut(data.unknown_test)


def per_sample(
    graphdef: nnx.GraphDef, state: ModelState, x: np.ndarray, loss: LossConfig
) -> dict[str, np.ndarray]:
    """What the analyses of one model need of each input ``x: [N, H, W, C]``.

    Returns ``{"embedding": [N, D], "loss": [N], "norm": [N]}``: the eval-mode representation
    f(x), the loss at the pseudo label (Eq. 22) and the exact ||df/dx||_F. The Jacobian
    engine takes the state as an argument, so another state of the architecture compiles
    nothing.
    """
    outputs = predict(graphdef, state, x)
    norms = jacobian.jacobian_norms(embedding_apply(graphdef), to_float(x), params=state)
    return {
        "embedding": np.asarray(outputs.embedding),
        "loss": np.asarray(score_loss(outputs, loss)),
        "norm": norms,
    }


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
        for name, train in seed_grid({loss_name: config.train}, config.seeds).items():
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
        summary = summarise(records, COLUMNS)
        split = data.describe()
        results = {
            "config": to_dict(config),
            "split": split,
            "num_samples": {"known": len(known.y), "unknown": len(unknown.y)},
            "seeds": records,
            "summary": summary[loss_name],
            "markdown": markdown_table(summary, row_header="loss"),
        }
        opened.write_json("results.json", results)
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
