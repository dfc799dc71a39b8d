"""benchmarks/gpu_cost.py: a grid's cost on one H100 from the measured rates (arithmetic, no
timing), and its command line on an experiment's own flags."""

import dataclasses
import sys
from pathlib import Path

import pytest

from jacosr.models import ModelConfig
from jacosr.recipe import TrainConfig, resolve

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
from gpu_cost import expected_gpu_time, main


def test_expected_gpu_time_from_the_measured_rates():
    vgg = resolve(TrainConfig(model=ModelConfig(backbone="vgg32"), steps=20_000, self_sup=0.0))
    grid = {"a": vgg, "b": dataclasses.replace(vgg, self_sup=0.1), "c": vgg}
    # 2 x 20k x 1.7 s/1k + 20k x 2.9 s/1k = 126 s; half the batch, half the time
    line = expected_gpu_time(grid)
    assert line.startswith("expected GPU time: 3 runs, 60,000 steps (vgg32 without rotation: ")
    assert "= 2.1 min of training on one H100" in line
    half = {k: dataclasses.replace(c, batch_size=64) for k, c in grid.items()}
    assert "= 1.1 min of training" in expected_gpu_time(half)
    assert "no H100 measurement for mlp with the rotation task" in expected_gpu_time(
        {"x": resolve(TrainConfig(self_sup=0.1))}
    )


def test_the_command_costs_an_experiments_grid(capsys):
    line = main(["losses_table", "--losses", "sce", "movr", "--seeds", "2", "--steps", "1000"])
    assert line.startswith("expected GPU time: 4 runs, 4,000 steps (mlp without rotation: ")
    assert capsys.readouterr().out.strip() == line


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "give an experiment's name and its flags"),
        (["nosuch"], "there is no experiment 'nosuch'"),
        (["interp"], "interp trains no grid of runs"),
    ],
)
def test_bad_command_lines(argv, message):
    with pytest.raises(ValueError, match=message):
        main(argv)
