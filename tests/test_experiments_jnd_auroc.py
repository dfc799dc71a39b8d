"""Fig. 12 (JND against AUROC, one point per model) end to end on a tiny config: toy2d, two
Table III rows (Baseline = SCE, m-OvR) x 2 random known sets of 6 of the 8 classes, 40 steps
of the small MLP. The workdir and the records; the correlations and the table against NumPy;
resumption; --runs on those runs and on a bare copy of one (read, never written, measured as
when trained); the grid on a benchmark; the refusals; the figure."""

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import refused

import jacosr.train
from jacosr import runs as grid
from jacosr.data import DataConfig, protocol_a_classes
from jacosr.experiments.jnd_auroc import JndAurocConfig, main, plot_grouped_scatter, training_grid
from jacosr.recipe import TrainConfig

DRAWS = 2
METHODS = ["Baseline", "m-OvR"]
TINY = [
    *("--dataset", "toy2d", "--steps", "40", "--log-every", "20", "--checkpoint-every", "40"),
    *("--width", "32", "--embed-dim", "16", "--methods", *METHODS, "--draws", str(DRAWS)),
]


def _main(argv: list[str]) -> tuple[dict, str]:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = main(argv)
    return results, printed.getvalue()


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """``(workdir, results, printed)`` of one tiny run of the command."""
    workdir = tmp_path_factory.mktemp("jnd_auroc")
    return workdir, *_main([*TINY, "--workdir", str(workdir)])


def _stamps(folder: Path) -> dict:
    return {p: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.rglob("*")}


def _ranks(a: np.ndarray) -> np.ndarray:
    assert len(np.unique(a)) == len(a)  # no ties: plain ranks are Spearman's
    return np.argsort(np.argsort(a)).astype(float)


def _refuse(*args, **kwargs):
    raise AssertionError("a finished run was trained or measured again")


@pytest.mark.slow
def test_workdir_holds_every_model_and_the_figure(experiment):
    workdir, results, printed = experiment
    for name in ("config.json", "results.json", "jnd_auroc.md"):
        assert (workdir / name).stat().st_size > 0
    assert (workdir / "jnd_auroc.png").stat().st_size > 20_000
    assert json.loads((workdir / "results.json").read_text()) == results
    assert not {"methods", "draws", "runs"} & set(json.loads((workdir / "config.json").read_text()))
    records = results["runs"]
    assert len(records) == len(METHODS) * DRAWS
    known_sets = {}
    for name, record in records.items():
        method, dataset, known = name.split("/")
        assert (record["method"], record["dataset"]) == (method, dataset) == (method, "toy2d")
        assert known == "known" + "-".join(map(str, record["known_classes"]))
        assert len(record["known_classes"]) == 6 and record["estimator"] == "exact"
        assert (record["num_known"], record["num_unknown"]) == (600, 200)
        run = json.loads((workdir / "runs" / name / "results.json").read_text())
        assert run["config"]["loss"]["loss"] == {"Baseline": "sce", "m-OvR": "movr"}[method]
        assert run["config"]["weight_decay"] == 0  # Table III: no W in either row
        assert record["auroc_loss"] == pytest.approx(run["scores"]["loss"]["auroc"], abs=1e-6)
        known_sets.setdefault(method, []).append(record["known_classes"])
    assert known_sets["Baseline"] == known_sets["m-OvR"]  # the same sets for every method
    assert len({tuple(s) for s in known_sets["Baseline"]}) == DRAWS
    panel = results["panels"]["toy2d"]
    assert list(panel["methods"]) == METHODS
    assert panel["per_method"] == {m: None for m in METHODS}  # 2 models: undefined
    assert "| method (data set) | JND | AUROC (loss score) | accuracy |" in printed
    assert "| m-OvR (toy2d) |" in printed and "toy2d, JND vs AUROC over 4 models" in printed


@pytest.mark.slow
def test_correlations_and_table_against_numpy(experiment):
    _, results, _ = experiment
    records = list(results["runs"].values())
    jnd = np.array([r["jnd"] for r in records])
    auroc = np.array([r["auroc_loss"] for r in records])
    c = results["panels"]["toy2d"]["all"]
    assert c["points"] == len(records)
    assert c["pearson"] == pytest.approx(np.corrcoef(jnd, auroc)[0, 1], abs=1e-12)
    assert c["spearman"] == pytest.approx(np.corrcoef(_ranks(jnd), _ranks(auroc))[0, 1])
    for method in METHODS:
        mine = [r for r in records if r["method"] == method]
        for key in ("jnd", "auroc_loss"):
            values = np.array([r[key] for r in mine])
            cell = f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
            row = next(line for line in results["markdown"].splitlines() if f"| {method} " in line)
            assert cell in row


@pytest.mark.slow
def test_rerun_neither_trains_nor_measures(experiment, monkeypatch):
    workdir, results, _ = experiment
    before = _stamps(workdir / "runs")
    monkeypatch.setattr(jacosr.train, "make_train_dispatch", _refuse)
    monkeypatch.setattr(grid, "measure_final", _refuse)
    again, _ = _main([*TINY, "--workdir", str(workdir)])
    assert again == results
    assert _stamps(workdir / "runs") == before


@pytest.mark.slow
def test_runs_are_measured_read_only_as_when_trained(experiment, tmp_path, monkeypatch):
    """--runs on the experiment's runs and on a bare copy of one (no experiment around it,
    so it is named by what it trains): nothing under them changes, and each model measures
    as it did in the experiment (same settings: the same samples and keys). A copy whose
    results.json is damaged is left out with a warning naming it."""
    workdir, results, _ = experiment
    name = next(n for n in results["runs"] if n.startswith("Baseline/"))
    bare, damaged = tmp_path / "bare", tmp_path / "damaged"
    shutil.copytree(workdir / "runs" / name, bare)
    shutil.copytree(workdir / "runs" / name, damaged)
    (damaged / "results.json").write_text('{"scores": []}')
    before = {**_stamps(workdir), **_stamps(bare), **_stamps(damaged)}
    runs = ["--runs", str(workdir / "runs"), str(bare), str(damaged)]
    with pytest.warns(
        UserWarning, match=rf"^left out run {damaged}: {damaged}/results.json lacks "
    ):
        measured, printed = _main([*runs, "--workdir", str(tmp_path / "m")])
    assert {**_stamps(workdir), **_stamps(bare), **_stamps(damaged)} == before
    records = measured["runs"]
    assert set(records) == {str(workdir / "runs" / n) for n in results["runs"]} | {str(bare)}
    assert records[str(bare)]["method"] == "sce"  # Baseline: SCE, no technique
    keys = ("jnd", "jnd_low", "jnd_high", "auroc_loss", "norm_known", "accuracy")
    for n, record in results["runs"].items():
        found = records[str(workdir / "runs" / n)]
        assert found["method"] == record["method"]
        assert {k: found[k] for k in keys} == {k: record[k] for k in keys}
    assert {k: records[str(bare)][k] for k in keys} == {k: results["runs"][name][k] for k in keys}
    panel = measured["panels"]["toy2d"]
    assert {m: len(v) for m, v in panel["methods"].items()} == {"Baseline": 2, "m-OvR": 2, "sce": 1}
    assert "sce: undefined" in printed
    monkeypatch.setattr(grid, "measure_final", _refuse)  # a re-run reads them back
    with pytest.warns(UserWarning, match=rf"^left out run {damaged}: "):
        again, _ = _main([*runs, "--workdir", str(tmp_path / "m")])
    assert again == measured


def test_on_a_benchmark_the_known_sets_are_its_standard_splits():
    config = JndAurocConfig(
        train=TrainConfig(data=DataConfig(benchmark="cifar10")), methods=("g", "Ours"), draws=2
    )
    grid = training_grid(config)
    assert list(grid) == [
        "g/cifar10/split0",
        "Ours/cifar10/split0",
        "g/cifar10/split1",
        "Ours/cifar10/split1",
    ]
    for name, run in grid.items():
        split = int(name[-1])
        assert tuple(run.data.known) == protocol_a_classes("cifar10", split)[0]
        assert run.weight_decay == 1e-3 and run.loss.loss == "movr"
        assert run.self_sup == (0.1 if name.startswith("Ours") else 0.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--methods", "x"], "--methods must be names out of Baseline, m-OvR, a,"),
        (["--methods", "g", "g"], "--methods must be distinct"),
        (["--draws", "0"], "--draws must be >= 1"),
        (["--benchmark", "cifar10", "--draws", "6"], "--draws must be at most 5 on a --benchmark"),
    ],
)
def test_bad_settings_are_refused_before_any_workdir(argv, message, tmp_path, capsys):
    assert message in refused(main, argv, tmp_path / "w", capsys)


def test_too_many_known_classes_and_missing_runs_fail_before_the_workdir(tmp_path):
    with pytest.raises(ValueError, match="--known, --draws: cannot draw 8 known classes of 8"):
        main(["--dataset", "toy2d", "--known", *"01234567", "--workdir", str(tmp_path / "w")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        main(["--runs", str(tmp_path / "none"), "--workdir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


def test_runs_whose_results_json_is_damaged_are_named(tmp_path):
    """Binary, a list, or a list as scores: each run named with its file, and with none left,
    one error before the workdir."""
    contents = {"binary": b"\x89PNG\r\n", "list": b"[]", "scores": b'{"scores": [1]}'}
    for name, content in contents.items():
        (tmp_path / "runs" / name / "checkpoints").mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
        (tmp_path / "runs" / name / "results.json").write_bytes(content)
    with (
        pytest.warns(UserWarning) as warned,
        pytest.raises(
            ValueError,
            match=r"^none of the runs in .*runs has a readable results.json \(0 without one, 3 "
            r"damaged; see the warnings above\)$",
        ),
    ):
        main(["--runs", str(tmp_path / "runs"), "--workdir", str(tmp_path / "w")])
    wrong = [
        "is not UTF-8 text (invalid start byte at byte 0)",
        "holds an array, not an object",
        "lacks 'config', 'accuracy', 'split' (a training run's results.json holds config, "
        "accuracy, split, scores)",
    ]
    runs = [tmp_path / "runs" / name for name in contents]  # found in sorted order
    assert [str(w.message).split("; re-running")[0] for w in warned] == [
        f"left out run {run}: {run / 'results.json'} {what}"
        for run, what in zip(runs, wrong, strict=True)
    ]
    assert not (tmp_path / "w").exists()


def test_plot_grouped_scatter_keeps_a_colour_per_group():
    x = np.array([0.1, 0.2, 0.3])
    panels = {
        "A": {f"m{i}": (x + i, x) for i in range(12)},
        "B": {"m3": (x, x), "m0": (x, x)},
    }
    fig = plot_grouped_scatter(
        panels, xlabel="JND", ylabel="AUROC", notes={"A": "n1", "B": "n2"}, title="t"
    )
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["A\nn1", "B\nn2"]
    assert [ax.get_xlabel() for ax in axes] == ["JND", "JND"]
    colours = {
        line.get_label(): line.get_color() for line in axes[0].lines if line.get_label()[0] == "m"
    }
    assert len(set(map(str, colours.values()))) == 12  # more than tab10's ten
    again = {
        line.get_label(): line.get_color() for line in axes[1].lines if line.get_label()[0] == "m"
    }
    assert again == {"m3": colours["m3"], "m0": colours["m0"]}
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [f"m{i}" for i in range(12)]
