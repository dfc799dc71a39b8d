"""What a grid of training runs costs on one NVIDIA H100, from the throughput that
``benchmarks/gpu.sh`` measured (the table below, copied from its output; README, "Speed").

Command (from the repository root): the experiment's name, then its own flags::

    python benchmarks/gpu_cost.py ablation --benchmarks cifar10 svhn --backbone wrn16_4 \
        --embed-dim 256 --steps 20000
    bash experiments/table1_vgg32_weak.sh      # the presets print it before they train

prints one line, e.g. ``expected GPU time: 150 runs, 3,400,000 steps (...) = 1.9 h of
training on one H100``. The grid is the experiment's own (``COMMAND.grid`` of
:mod:`jacosr.experiments.command`), built from the flags as the command builds it; nothing is
trained or written. Re-measure the table with ``bash benchmarks/gpu.sh`` on another GPU.
"""

from __future__ import annotations

import importlib

from jacosr.config import cli, run_command
from jacosr.grids import Grid

H100_SECONDS_PER_1K_STEPS: dict[str, tuple[float, float | None]] = {
    "mlp": (0.1, None),
    "lenet": (0.2, None),
    "vgg32": (1.7, 2.9),
    "wrn16_4": (3.4, 6.0),
    "resnet18": (4.7, 8.0),
}
"""Training seconds per 1,000 steps at batch 128 on one NVIDIA H100, measured with
``benchmarks/gpu.sh`` (README, "Speed"): (the plain dispatch, the paper's recipe: weak
augmentation and the rotation task, 256 images through the network per step). None: not
measured."""


def expected_gpu_time(configs: Grid) -> str:
    """One line: what training the grid ``configs`` costs on one H100, from
    :data:`H100_SECONDS_PER_1K_STEPS`.

    A run with the rotation task is costed at the paper-recipe rate, any other at the plain
    rate (augmentation is cheap on the GPU: colour jitter is not counted), scaled by
    batch_size / 128. Evaluation and data loading are not included. The rates were measured
    on 32x32 images; TinyImageNet's 64x64 ones cost up to 4x more, which the line says.
    """
    steps: dict[tuple[str, bool], int] = {}
    larger = any(c.data.dataset == "tinyimagenet" for c in configs.values())
    seconds: dict[tuple[str, bool], float] = {}
    for config in configs.values():
        key = (config.model.backbone, config.self_sup > 0)
        rate = H100_SECONDS_PER_1K_STEPS.get(key[0], (None, None))[key[1]]
        steps[key] = steps.get(key, 0) + config.steps
        if rate is not None:
            scaled = config.steps / 1000 * rate * config.batch_size / 128
            seconds[key] = seconds.get(key, 0.0) + scaled
    head = f"expected GPU time: {len(configs)} runs, {sum(steps.values()):,} steps"
    parts, missing = [], []
    for (backbone, rotation), n in steps.items():
        with_ = "with" if rotation else "without"
        if (backbone, rotation) not in seconds:
            missing.append(f"{backbone} {with_} the rotation task")
            continue
        rate = H100_SECONDS_PER_1K_STEPS[backbone][rotation]
        parts.append(f"{backbone} {with_} rotation: {n:,} x {rate} s/1k")
    if missing:
        return f"{head}; no H100 measurement for {', '.join(missing)}"
    minutes = sum(seconds.values()) / 60
    when = f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.1f} h"
    caveat = ", up to 4x that for TinyImageNet's 64x64 images" if larger else ""
    return (
        f"{head} ({'; '.join(parts)}) = {when} of training on one H100 (measured with "
        f"benchmarks/gpu.sh on 32x32 images at batch 128{caveat}; evaluation not included)"
    )


def main(argv: list[str]) -> str:
    """``argv``: an experiment's name (``jacosr.experiments.<name>``) and its flags."""
    if not argv or argv[0].startswith("-"):
        raise ValueError(
            "give an experiment's name and its flags, e.g. `python benchmarks/gpu_cost.py "
            "ablation --benchmarks cifar10`"
        )
    name, *flags = argv
    try:
        command = importlib.import_module(f"jacosr.experiments.{name}").COMMAND
    except ModuleNotFoundError:
        raise ValueError(f"there is no experiment {name!r} (jacosr.experiments.{name})") from None
    if command.grid is None:
        raise ValueError(f"{name} trains no grid of runs; its cost is one run's")
    parsed = cli(command.arguments, args=flags)
    line = expected_gpu_time(command.grid(parsed.config))
    print(line)
    return line


if __name__ == "__main__":
    run_command(main)
