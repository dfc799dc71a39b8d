"""jacosr.recipe: the paper's techniques are one rule, the same in the ablation (Table III's A,
W, S rows), the dynamics figures (Figs. 9-11) and the sensitivity sweeps, on every data set:
digits and MNIST shift without flipping, image data sets flip, a data set of your own follows
what `prepare --no-flip` recorded."""

import numpy as np
import pytest

from jacosr.data import DataConfig, paper_augmentation
from jacosr.data.prepare import main as prepare_main
from jacosr.experiments import ablation, dynamics, sensitivity
from jacosr.recipe import (
    ROWS,
    Switches,
    TrainConfig,
    ablation_config,
    paper_techniques,
    resolve,
    run_name,
    switch_techniques,
)
from jacosr.tracking import TrackConfig


@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    """Two tiny data sets of one's own, from the same .npz: one prepared with --no-flip."""
    root = tmp_path_factory.mktemp("own")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (40, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(4), 10)
    np.savez(root / "arrays.npz", train_x=x, train_y=y, test_x=x[:8], test_y=y[:8])
    for name, flags in (("letters", ["--no-flip"]), ("textures", [])):
        prepare_main([name, "--from", str(root / "arrays.npz"), "--data-dir", str(root), *flags])
    return root


DATA = {
    "digits": lambda root: DataConfig(),
    "mnist": lambda root: DataConfig(benchmark="mnist"),
    "cifar10": lambda root: DataConfig(benchmark="cifar10"),
    "own, --no-flip": lambda root: DataConfig(dataset="letters", data_dir=root),
    "own": lambda root: DataConfig(dataset="textures", data_dir=root),
}
PAPERS = {
    "digits": "translate",
    "mnist": "translate",
    "cifar10": "weak",
    "own, --no-flip": "translate",
    "own": "weak",
}


@pytest.mark.parametrize("name", list(DATA))
def test_the_ablation_and_the_figures_turn_on_the_same_augmentation(name, own_data):
    data = DATA[name](own_data)
    base = resolve(TrainConfig(data=data))
    expected = PAPERS[name]
    assert paper_techniques(base.data).augment == expected
    rows = {row.label: ablation_config(row.switches, base) for row in ROWS}
    with_a = {label for label, row in zip(rows, ROWS, strict=True) if row.switches.a}
    assert {rows[label].augment for label in with_a} == {expected}
    assert {c.augment for label, c in rows.items() if label not in with_a} == {"none"}
    fig9 = dynamics.FIGURES["fig9"].variants(base)
    assert fig9["with augmentation"].augment == expected
    assert fig9["without augmentation"].augment == "none"
    fig15 = dynamics.FIGURES["fig15"].variants(base)
    assert fig15["SCE + augmentation"].augment == expected
    # the grids the commands train hold the same configs
    grid = ablation.ablation_grid(ablation.AblationConfig(train=TrainConfig(data=data), seeds=1))
    assert {c.augment for n, c in grid.items() if n.split("/")[0] in with_a} == {expected}
    tracked = TrainConfig(data=data, steps=100, track=TrackConfig(track_points=3))
    figure = dynamics.DynamicsConfig(figure="fig9", seeds=2, train=tracked)
    assert {c.augment for c in dynamics.dynamics_grid(figure).values()} == {"none", expected}


def test_auto_is_the_papers_augmentation_where_the_techniques_are_on(own_data):
    """Image data sets get the paper's augmentation by default, flipped or not as their data
    say; digits and toy2d get none (too small), whatever the ablation turns on."""
    assert resolve(TrainConfig(data=DataConfig(benchmark="mnist"))).augment == "translate"
    assert resolve(TrainConfig(data=DATA["own, --no-flip"](own_data))).augment == "translate"
    assert resolve(TrainConfig(data=DATA["own"](own_data))).augment == "weak"
    assert resolve(TrainConfig()).augment == "none"
    assert paper_augmentation("svhn_cropped") == "weak"  # house numbers flip, as ARPL's


def test_on_is_the_bases_own_value_else_the_papers():
    base = resolve(TrainConfig(data=DataConfig(benchmark="cifar10"), augment="strong"))
    on = switch_techniques(base, augment=True, rotation=True, weight_decay=True)
    assert (on.augment, on.self_sup, on.weight_decay) == ("strong", 0.1, 1e-3)
    given = resolve(TrainConfig(weight_decay=5e-4, self_sup=0.5))  # digits: A and S off
    on = switch_techniques(given, augment=True, rotation=True, weight_decay=True)
    assert (on.augment, on.self_sup, on.weight_decay) == ("translate", 0.5, 5e-4)
    off = switch_techniques(on, augment=False, rotation=False, weight_decay=False)
    assert (off.augment, off.self_sup, off.weight_decay) == ("none", 0.0, 0.0)
    assert switch_techniques(on) == on  # nothing given, nothing switched


def test_a_runs_name_says_what_it_trains():
    digits = resolve(TrainConfig())
    assert run_name(digits) == "movr+W"
    on = switch_techniques(digits, augment=True, rotation=True)
    assert run_name(on) == "movr+W+A+S"  # A: the paper's augmentation for digits (translate)
    assert run_name(switch_techniques(on, weight_decay=False)) == "movr+A+S"
    weak = resolve(TrainConfig(augment="weak"))  # not the paper's for digits: named
    assert run_name(weak) == "movr+W+A-weak"


def test_the_sensitivity_marks_are_the_papers_values():
    marks = {name: sweep.paper_default for name, sweep in sensitivity.SWEEPS.items()}
    papers = paper_techniques(DataConfig())
    assert marks == {"T": 32.0, "m": 0.5, "wd": papers.weight_decay, "self_sup": papers.self_sup}


def test_the_margin_needs_normalised_ovr():
    with pytest.raises(ValueError, match=r"margin m is defined for normalised OvR only"):
        ablation_config(Switches(ovr=True, m=True), resolve(TrainConfig()))
