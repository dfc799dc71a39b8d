"""The training-dynamics experiment end to end on a tiny config (Fig. 4: m-OvR, 2 seeds, 30
steps of the small MLP, 4 tracked steps on 32 + 32 samples): the workdir, the series against
the runs' own rows, resumption, a second figure reusing the runs (Fig. 5, its correlations
against NumPy); the variants of every figure (without training), the flags."""

import json
from pathlib import Path

import numpy as np
import pytest

from jacosr.data import DataConfig
from jacosr.experiments.dynamics import (
    FIGURES,
    DynamicsConfig,
    format_summary,
    main,
)
from jacosr.recipe import TrainConfig, resolve, run_name
from jacosr.runs import DYNAMICS as DYNAMICS_FILE
from jacosr.tracking import SERIES, TrackConfig

TINY_FLAGS = [
    *("--width", "32", "--embed-dim", "16", "--steps", "30", "--log-every", "10"),
    *("--checkpoint-every", "30", "--track-points", "4", "--track-samples", "32"),
    *("--seeds", "2"),
]
RUNS = ["movr+W/seed0", "movr+W/seed1"]


def _main(workdir: Path, figure: str) -> dict:
    return main([*TINY_FLAGS, "--figure", figure, "--workdir", str(workdir)])


def _stamps(workdir: Path) -> dict:
    """Modification times of everything under the runs."""
    return {p: p.stat().st_mtime_ns for p in (workdir / "runs").rglob("*")}


@pytest.fixture(scope="module")
def fig4(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("dynamics")
    return workdir, _main(workdir, "fig4")


def _rows(workdir: Path, run: str) -> list[dict]:
    lines = (workdir / "runs" / run / DYNAMICS_FILE).read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_workdir_holds_the_runs_the_figure_and_the_series(fig4):
    workdir, entry = fig4
    assert (workdir / "fig4.png").stat().st_size > 10_000
    config = json.loads((workdir / "config.json").read_text())
    assert "figure" not in config and config["seeds"] == 2  # the figures share the workdir
    results = json.loads((workdir / "results.json").read_text())
    assert results["figures"]["fig4"] == entry
    assert results["split"]["known_classes"] == [0, 1, 2, 3, 4, 5]
    for run in RUNS:
        assert (workdir / "runs" / run / "results.json").exists()
    variants = entry["variants"]
    assert {label: v["run"] for label, v in variants.items()} == {"m-OvR": "movr+W"}
    assert entry["panels"] == ["dbi", "inter_class_distance", "jnd", "auroc_loss"]
    for v in variants.values():
        rows = [_rows(workdir, run) for run in v["runs"]]
        assert v["steps"] == [0, 1, 5, 30] == [r["step"] for r in rows[0]]  # 30^(i/2)
        assert (v["estimator"], v["num_probes"]) == ("exact", None)
        for metric in SERIES:
            values = np.array([[r[metric] for r in seed] for seed in rows])  # [2 seeds, 4]
            np.testing.assert_allclose(v["mean"][metric], values.mean(0), rtol=1e-12)
            np.testing.assert_allclose(v["std"][metric], values.std(0, ddof=1), rtol=1e-12)
            assert v["final"][metric] == values[:, -1].tolist()
    assert v["std"]["jnd"][-1] > 0  # the seeds differ


def test_rerun_reads_the_runs_back(fig4, capsys):
    workdir, entry = fig4
    before = _stamps(workdir)
    assert _main(workdir, "fig4") == entry
    assert _stamps(workdir) == before  # nothing trained, measured or evaluated again
    printed = capsys.readouterr().out
    assert "m-OvR (movr+W, step 30)" in printed and "fig4.png" in printed


def test_a_second_figure_reuses_the_runs_and_correlates_pooled_steps(fig4):
    workdir, _ = fig4
    before = _stamps(workdir)
    entry = _main(workdir, "fig5")  # the runs of fig4
    assert _stamps(workdir) == before
    assert (workdir / "fig5.png").exists() and (workdir / "fig4.png").exists()
    assert set(json.loads((workdir / "results.json").read_text())["figures"]) == {"fig4", "fig5"}
    rows = [r for run in ("movr+W/seed0", "movr+W/seed1") for r in _rows(workdir, run)]
    jnd = np.array([r["jnd"] for r in rows])
    for metric in ("auroc_loss", "dbi"):
        c = entry["correlations"][f"{metric} vs jnd"]["pooled"]
        other = np.array([r[metric] for r in rows])
        assert c["points"] == 8
        assert c["pearson"] == pytest.approx(np.corrcoef(jnd, other)[0, 1], abs=1e-9)
        ranks = [np.argsort(np.argsort(a)) for a in (jnd, other)]  # no ties among floats
        assert c["spearman"] == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-9)


def test_every_figure_sets_its_techniques_explicitly():
    digits = resolve(TrainConfig())  # no augmentation, no rotation task by default
    cifar = resolve(TrainConfig(data=DataConfig(dataset="cifar10")))  # both on
    names = {
        figure: {label: run_name(c) for label, c in spec.variants(digits).items()}
        for figure, spec in FIGURES.items()
    }
    assert names["fig4"] == names["fig5"] == {"m-OvR": "movr+W"}
    assert names["fig8"] == {"SCE": "sce+W", "m-OvR": "movr+W"}
    assert list(names["fig9"].values()) == ["movr+W", "movr+W+A"]
    assert list(names["fig10"].values()) == ["movr", "movr+W"]
    assert list(names["fig11"].values()) == ["movr+W", "movr+W+S"]
    assert list(names["fig15"].values()) == ["sce+W", "sce+W+A", "nsce+W", "nsce+W+A"]
    on = {label: resolve(c) for label, c in FIGURES["fig11"].variants(digits).items()}
    assert on["with rotation task"].self_sup == 0.1
    assert on["with rotation task"].augment == on["without rotation task"].augment == "none"
    image = [run_name(c) for c in FIGURES["fig9"].variants(cifar).values()]
    assert image == ["movr+W+S", "movr+W+A+S"]  # the base's rotation task stays on
    assert resolve(FIGURES["fig9"].variants(cifar)["with augmentation"]).augment == "weak"


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"figure": "fig99"}, "--figure"),
        ({"seeds": 1}, "--seeds"),
        ({"train": TrainConfig(track=TrackConfig())}, "--track-points"),
    ],
)
def test_bad_values_are_refused_when_built(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        DynamicsConfig(**kwargs)


def test_help_lists_the_figure_and_tracking_flags(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--figure", "--seeds", "--track-points", "--track-estimator", "--backbone"):
        assert flag in text


def test_an_undefined_correlation_is_said_not_printed_as_a_number():
    entry = {
        "caption": "Fig. 5",
        "panels": [],
        "variants": {},
        "correlations": {"auroc_loss vs jnd": {"pooled": None, "per_seed": {}}},
        "png": "fig5.png",
    }
    assert format_summary(entry).splitlines()[2:] == [
        "  auroc_loss vs jnd: correlation undefined (fewer than 3 points, or a constant series)",
        "figure: fig5.png",
    ]
