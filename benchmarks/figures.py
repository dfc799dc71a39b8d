"""What the figure suite costs on a CPU: every figure command (Figs. 2-15, the heat map aside),
the Table III ablation and the Jacobian-training experiment, run one after another, each timed.

Command (from the repository root)::

    .venv/bin/python benchmarks/figures.py --suite mnist --data-dir DIR    # real digits
    .venv/bin/python benchmarks/figures.py --suite digits                  # the defaults
    .venv/bin/python benchmarks/figures.py --suite mnist --data-dir DIR --print   # the commands

``--suite digits`` runs every command at its defaults (scikit-learn's 8x8 digits, the MLP).
``--suite mnist`` runs them on a data set of real 28x28 handwritten digits prepared from MNIST
files (``python -m jacosr.data.prepare mnist5k --from mnist5k.npz --no-flip``, the default
``--dataset``; ``--no-flip`` makes the paper's augmentation translate without flipping) with
the paper's recipe for MNIST, which ``--augment auto`` and ``--self-sup`` (unset) give on a
data set other than digits: the 4 px translation, the rotation task (lambda 0.1) and weight
decay 1e-3, on LeNet; with the steps, seeds and tracked samples cut to fit a CPU (the flags of
each command, printed by ``--print``, say which). Every command writes its own workdir below
``--workdir`` (the dynamics figures share one, as they do by default), so a second run of the
suite reads every finished run back; ``--only`` picks commands.

Prints a table: per command, its wall time, its CPU time (user + system of the process and its
children) and the workdir, then the totals and the machine's load average before and after. The
numbers of each figure are in its workdir's ``results.json``; the README's claims table quotes
them.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

MNIST_STEPS = "200"
"""Training steps of every MNIST run: about 10 epochs of the 2,400 known training images of
mnist5k at batch 128, where LeNet's closed-set accuracy has settled (the README's MNIST
column)."""
MNIST_MEASURE = ["--track-samples", "200", "--track-probes", "8"]
"""How the MNIST models are measured (tracked runs, and the final models of Figs. 6 and 12):
200 known-test and 200 unknown-test samples, Hutchinson's estimator with 8 probes (exact norms
of LeNet take 128 passes per sample)."""
MNIST_TRACK = ["--track-points", "8", *MNIST_MEASURE]
"""The tracking of the MNIST runs of the dynamics figures: 8 steps."""


def suite(name: str, dataset: str, data_dir: str) -> list[tuple[str, str, list[str]]]:
    """``[(label, module, flags)]``: the commands of the suite, in the order they run."""
    if name == "digits":
        base, steps, seeds, track = [], [], [], []
        cut = {"known_classes": [], "sensitivity": [], "jnd": [], "ablation": [], "jt": []}
    else:
        base = ["--dataset", dataset, "--data-dir", data_dir, "--backbone", "lenet"]
        steps, seeds, track = ["--steps", MNIST_STEPS], ["--seeds", "2"], MNIST_TRACK
        cut = {
            "known_classes": ["--ks", "2", "4", "6", "8", "--draws", "2", *MNIST_MEASURE],
            "sensitivity": [
                *("--t-values", "8", "32", "128", "--m-values", "0", "0.5", "1"),
                *("--wd-values", "0", "0.001", "0.1", "--self-sup-values", "0", "0.1", "1"),
                *seeds,
            ],
            "jnd": ["--draws", "2", *MNIST_MEASURE],
            "ablation": seeds,
            "jt": [*seeds, "--known-weights", "0.1", "1", "--open-weights", "0.1", *track],
        }
    figures = ("fig4", "fig5", "fig8", "fig9", "fig10", "fig11", "fig15")
    return [
        ("Figs. 2-3, Eq. 20", "interp", [*base, *steps]),
        *(
            (f"Fig. {f[3:]}", "dynamics", ["--figure", f, *base, *steps, *seeds, *track])
            for f in figures
        ),
        ("Fig. 6", "known_classes", [*base, *steps, *cut["known_classes"]]),
        ("Fig. 7", "loss_vs_norm", [*base, *steps, *seeds]),
        ("Fig. 12", "jnd_auroc", [*base, *steps, *cut["jnd"]]),
        ("Fig. 13", "tsne", [*base, *steps]),
        ("Fig. 14", "sensitivity", [*base, *steps, *cut["sensitivity"]]),
        ("Table III", "ablation", [*base, *steps, *cut["ablation"]]),
        ("beyond the paper", "jacobian_training", [*base, *steps, *cut["jt"]]),
    ]


def cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished children."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", choices=("mnist", "digits"), default="mnist")
    parser.add_argument("--dataset", default="mnist5k", help="the MNIST data set's name")
    parser.add_argument("--data-dir", default=str(Path("~/.cache/jacosr").expanduser()))
    parser.add_argument("--workdir", type=Path, default=None, help="default runs/figures-<suite>")
    parser.add_argument("--only", nargs="+", default=None, help="modules or figure labels")
    parser.add_argument("--print", action="store_true", help="print the commands, run nothing")
    args = parser.parse_args()
    root = args.workdir or Path(f"runs/figures-{args.suite}")
    commands = [
        (label, module, [*flags, "--workdir", str(root / module)])
        for label, module, flags in suite(args.suite, args.dataset, args.data_dir)
        if args.only is None or module in args.only or label in args.only
    ]
    if args.print:
        for _, module, flags in commands:
            print(f"python -m jacosr.experiments.{module} {' '.join(flags)}")
        return
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    print("| figure | command | wall s | CPU s |\n|:--|:--|--:|--:|", flush=True)
    total_wall = total_cpu = 0.0
    for label, module, flags in commands:
        cpu, t0 = cpu_seconds(), time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-m", f"jacosr.experiments.{module}", *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu
        if done.returncode != 0:
            raise SystemExit(f"{module} {' '.join(flags)} failed:\n{done.stderr[-3000:]}")
        total_wall, total_cpu = total_wall + wall, total_cpu + cpu
        shown = " ".join("DIR" if f == args.data_dir else f for f in flags)
        print(f"| {label} | `{module} {shown}` | {wall:.0f} | {cpu:.0f} |", flush=True)
    print(f"| all | | {total_wall:.0f} | {total_cpu:.0f} |")
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
