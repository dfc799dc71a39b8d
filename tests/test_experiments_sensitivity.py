"""Fig. 14's sweeps: end to end on a tiny config (files, series shapes, aggregation against the
runs' own results, resume), the sweeps' configs, refused configs, and the figure's axes."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import TINY_GRID as TINY

from jacosr.experiments import sensitivity
from jacosr.experiments.sensitivity import plot_sweeps
from jacosr.recipe import TrainConfig

# Every sweep, with the base run (T 32, m 0.5, wd 1e-3, lambda_self 0 on digits) in all four
# and one other point: the panels of the figure from 2 distinct points x 2 seeds = 4 runs.
GRIDS = {"T": [32.0], "m": [0.5], "wd": [10.0, 1e-3], "self_sup": [0.0]}
BASE = "T32.0-m0.5-wd0.001-self0.0"
HEAVY = "T32.0-m0.5-wd10.0-self0.0"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("sensitivity")
    args = [*TINY, "--workdir", str(workdir)]
    for name, values in GRIDS.items():
        args += [f"--{name.lower().replace('_', '-')}-values", *map(str, values)]
    return workdir, args, sensitivity.main(args)


@pytest.mark.slow
def test_workdir_and_series(sweep):
    workdir, _, result = sweep
    assert {p.name for p in workdir.iterdir()} >= {*sensitivity.OUTPUTS, "config.json", "runs"}
    assert (workdir / "sensitivity.png").stat().st_size > 10_000
    runs = sorted(str(p.relative_to(workdir / "runs")) for p in workdir.glob("runs/*/seed*"))
    assert runs == [f"{BASE}/seed0", f"{BASE}/seed1", f"{HEAVY}/seed0", f"{HEAVY}/seed1"]
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["sweeps"] == result["sweeps"]
    assert list(result["sweeps"]) == list(GRIDS)
    for name, values in GRIDS.items():
        series = result["sweeps"][name]
        assert series["values"] == sorted(values)
        assert series["runs"] == [HEAVY if v == 10.0 else BASE for v in sorted(values)]
        for column, path in sensitivity.COLUMNS.items():
            cells = series["columns"][column]
            assert np.shape(cells["values"]) == (len(values), 2)
            for run, per_seed in zip(series["runs"], cells["values"], strict=True):
                for seed, value in enumerate(per_seed):
                    own = json.loads(
                        (workdir / "runs" / run / f"seed{seed}/results.json").read_text()
                    )
                    for key in path:
                        own = own[key]
                    assert value == own
            np.testing.assert_allclose(cells["mean"], np.mean(cells["values"], axis=1))
            np.testing.assert_allclose(cells["std"], np.std(cells["values"], axis=1, ddof=1))
    config = json.loads((workdir / f"runs/{HEAVY}/seed1/config.json").read_text())
    assert (config["weight_decay"], config["seed"], config["self_sup"]) == (10.0, 1, 0.0)
    assert config["loss"]["scale"] == 32.0 and config["loss"]["margin_neg"] == 0.5


@pytest.mark.slow
def test_summary_printed_and_resume_reads_back(sweep, capsys):
    workdir, args, result = sweep
    markdown = (workdir / "sensitivity.md").read_text()
    assert markdown == result["markdown"]
    assert "| wd | AUROC (loss score) | accuracy | inter-class distance |" in markdown
    wd_table = markdown.split("wd: ")[1].split("self_sup: ")[0]
    assert [line.split(" | ")[0] for line in wd_table.strip().splitlines()[4:]] == [
        "| 0.001",
        "| 10",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/seed*/*")}
    assert sensitivity.main(args) == result  # read back, not retrained or re-evaluated
    assert stamps == {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/seed*/*")}
    assert markdown in capsys.readouterr().out


@pytest.mark.slow
def test_fewer_values_summarise_a_subset(sweep):
    workdir, args, _ = sweep
    stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/seed*/*")}
    subset = sensitivity.main([*args, "--sweeps", "wd", "--wd-values", "10"])
    assert list(subset["sweeps"]) == ["wd"]
    assert subset["sweeps"]["wd"]["runs"] == [HEAVY]
    assert stamps == {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/seed*/*")}


def _swept(c):
    """The four swept values of a run."""
    return {
        "T": c.loss.scale,
        "m": (c.loss.margin_pos, c.loss.margin_neg),
        "wd": c.weight_decay,
        "self_sup": c.self_sup,
    }


def test_sweep_points_are_configs():
    points = sensitivity.sweep_points(sensitivity.SensitivityConfig())
    expected = {
        "T": [2.0, 8.0, 32.0, 128.0],
        "m": [(0.0, 0.0), (0.25, 0.25), (0.5, 0.5), (1.0, 1.0)],
        "wd": [0.0, 1e-3, 1e-2, 1e-1, 1.0, 10.0],
        "self_sup": [0.0, 0.1, 0.5, 1.0],
    }
    # The paper's T, m and weight decay; on digits no rotation task unless swept.
    base = {"T": 32.0, "m": (0.5, 0.5), "wd": 1e-3, "self_sup": 0.0}
    assert list(points) == list(expected)
    for name, runs in points.items():
        assert [_swept(c)[name] for c in runs.values()] == expected[name]
        for c in runs.values():
            others = {k: v for k, v in _swept(c).items() if k != name}
            assert others == {k: v for k, v in base.items() if k != name}
            assert (c.steps, c.augment, c.loss.loss, c.seed) == (500, "none", "movr", 0)
    names = {sensitivity.point_name(c) for runs in points.values() for c in runs.values()}
    assert len(names) == 1 + 3 + 3 + 5 + 3  # the base run is in every sweep, trained once


def test_point_name_keeps_unequal_margins_apart():
    train = TrainConfig(loss=dataclasses.replace(TrainConfig().loss, margin_neg=0.25))
    config = sensitivity.SensitivityConfig(train=train, sweeps=("T",), t_values=(2.0,))
    (run,) = sensitivity.sweep_points(config)["T"].values()
    assert sensitivity.point_name(run) == "T2.0-m0.5,0.25-wd0.001-self0.0"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sweeps": ("T", "lr")}, r"--sweeps must be names out of T, m, wd, self_sup; got 'lr'"),
        ({"sweeps": ("T", "T")}, r"--sweeps must be distinct"),
        ({"sweeps": ()}, r"--sweeps must be one or more of"),
        ({"wd_values": ()}, r"--wd-values must be one or more values for --sweeps wd"),
        ({"wd_values": (1e-3, -1.0)}, r"--wd-values: --weight-decay must be >= 0"),
        ({"m_values": (0.5, 3.5)}, r"--m-values: --margin-pos must be an angle in \[0, pi\)"),
        ({"self_sup_values": (float("inf"),)}, r"--self-sup-values: --self-sup must be >= 0"),
        ({"t_values": (0.0,)}, r"--t-values: --scale must be > 0"),
        ({"seeds": 0}, r"--seeds must be >= 1"),
        (
            {"train": TrainConfig(loss=dataclasses.replace(TrainConfig().loss, loss="sce"))},
            "--loss must be movr",
        ),
    ],
)
def test_refused_configs(changes, message):
    with pytest.raises(ValueError, match=message):
        sensitivity.SensitivityConfig(**changes)


def test_unswept_grid_is_not_checked():
    config = sensitivity.SensitivityConfig(sweeps=("T",), wd_values=())
    assert list(config.grids()) == ["T"]


def test_help_names_the_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        sensitivity.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--sweeps", "--t-values", "--m-values", "--wd-values", "--self-sup-values"):
        assert flag in out
    for flag in (
        "--seeds",
        "--steps",
        "--dataset",
        "--benchmark",
        "--protocol-split",
        "--backbone",
    ):
        assert flag in out


def test_plot_sweeps_axes():
    rng = np.random.default_rng(0)
    panels = {
        "wd": (np.array([1e-2, 0.0, 1e-3]), {"a": rng.random((3, 2)), "b": rng.random((3, 2))}),
        "m": (np.array([0.0, 0.5, 1.0]), {"a": rng.random((3, 2)), "b": rng.random((3, 2))}),
        "lambda": (np.array([0.0, 0.1, 0.5]), {"a": rng.random((3, 2)), "b": rng.random((3, 2))}),
    }
    fig = plot_sweeps(
        panels,
        log_x={"wd": True, "m": False, "lambda": True},
        marks={"wd": 1e-3, "m": 0.5, "lambda": 0.0},
        mark_label="default",
        title="t",
    )
    wd, m, lam, spare = fig.axes
    assert not spare.get_visible()
    assert (wd.get_xscale(), m.get_xscale(), lam.get_xscale()) == ("log", "linear", "log")
    # 0 on a log axis: one grid step (1e-2 / 1e-3 = 10; 0.5 / 0.1 = 5) left of the smallest
    # positive value.
    np.testing.assert_allclose(wd.get_xticks(), [1e-4, 1e-3, 1e-2])
    np.testing.assert_allclose(lam.get_xticks(), [0.02, 0.1, 0.5])
    np.testing.assert_allclose(m.get_xticks(), [0.0, 0.5, 1.0])
    assert [t.get_text() for t in wd.get_xticklabels()] == ["0", "0.001", "0.01"]
    # The mark at 0 on the lambda axis sits where the 0 point is drawn.
    marks = [line for line in lam.get_lines() if line.get_label() == "default"]
    assert [line.get_xdata()[0] for line in marks] == pytest.approx([0.02])
    # The mean line of "a" in the wd panel: solid from 1e-3 on, ordered by value.
    solid = next(line for line in wd.get_lines() if line.get_label() == "a")
    np.testing.assert_allclose(solid.get_xdata(), [1e-3, 1e-2])
    np.testing.assert_allclose(solid.get_ydata(), panels["wd"][1]["a"][[2, 0]].mean(axis=1))
