"""Fig. 6 (JND and AUROC against the number K of known classes) end to end on a tiny config:
toy2d (8 classes of equal size, so the draws of one K share compiled programs), K = 2 and 3,
2 draws, 40 steps of the small MLP. The workdir and the series; the JND against dense
Jacobians (jax.jacfwd), the AUROC against the run's own evaluation, the rank correlations by
hand; resumption; the draws; the refusals."""

import contextlib
import io
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from helpers import refused

import jacosr.train
from jacosr import runs as grid
from jacosr.data.known_sets import draw_known_sets
from jacosr.experiments.known_classes import METRICS, KnownClassesConfig, main, plot_paired_series
from jacosr.models import embedding_apply
from jacosr.runs import load_run

KS, DRAWS = [2, 3], 2
TINY = [
    *("--dataset", "toy2d", "--steps", "40", "--log-every", "20", "--checkpoint-every", "40"),
    *("--width", "32", "--embed-dim", "16", "--ks", "2", "3", "--draws", str(DRAWS)),
]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """``(workdir, results, printed)`` of one tiny run of the command."""
    workdir = tmp_path_factory.mktemp("known_classes")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = main([*TINY, "--workdir", str(workdir)])
    return workdir, results, printed.getvalue()


def _stamps(folder: Path) -> dict:
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing the mean of their positions."""
    order = np.argsort(a, kind="stable")
    ranks = np.empty(len(a))
    ranks[order] = np.arange(1, len(a) + 1)
    return np.array([ranks[a == v].mean() for v in a])


def _kendall_tau_b(x: np.ndarray, y: np.ndarray) -> float:
    """Kendall's tau-b by counting pairs: (C - D) / sqrt((n0 - n_x)(n0 - n_y))."""
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    n0 = len(i)
    return float(np.sum(sx * sy) / np.sqrt((n0 - np.sum(sx == 0)) * (n0 - np.sum(sy == 0))))


@pytest.mark.slow
def test_workdir_holds_the_runs_the_series_and_the_figure(experiment):
    workdir, results, printed = experiment
    for name in ("config.json", "results.json", "known_classes.md"):
        assert (workdir / name).stat().st_size > 0
    assert (workdir / "known_classes.png").stat().st_size > 20_000
    assert json.loads((workdir / "results.json").read_text()) == results
    config = json.loads((workdir / "config.json").read_text())
    assert "ks" not in config and "draws" not in config  # more K or draws add runs
    assert (results["dataset"], results["num_classes"]) == ("toy2d", 8)
    draws = [{int(k): v for k, v in d.items()} for d in results["draws"]]
    assert len(draws) == DRAWS
    series = results["series"]
    assert series["k"] == KS
    for metric in METRICS:
        assert np.shape(series[metric]) == (len(KS), DRAWS)  # [K, draws]
        assert np.all(np.isfinite(series[metric]))
    assert len(results["runs"]) == len(KS) * DRAWS
    for draw in draws:
        for k in KS:
            name = f"K{k}/known{'-'.join(map(str, draw[k]))}"
            run = json.loads((workdir / "runs" / name / "results.json").read_text())
            assert run["split"]["known_classes"] == draw[k]
            assert run["split"]["unknown_classes"] == [c for c in range(8) if c not in draw[k]]
            assert run["config"]["steps"] == 40 and run["config"]["data"]["val_fraction"] == 0
            record = results["runs"][name]
            assert record["known_classes"] == draw[k] and record["estimator"] == "exact"
            assert (record["num_known"], record["num_unknown"]) == (100 * k, 100 * (8 - k))
    assert list(results["summary"]) == ["K2", "K3"]
    for metric, header in METRICS.items():
        for i, k in enumerate(KS):
            cell = results["summary"][f"K{k}"][header]
            assert cell["values"] == series[metric][i]
            assert cell["mean"] == pytest.approx(np.mean(series[metric][i]))
            assert cell["std"] == pytest.approx(np.std(series[metric][i], ddof=1))
    assert "| K | JND (Eq. 20) |" in printed and "| K3 |" in printed
    assert "JND (Eq. 20) vs K over 4 runs: Spearman rho" in printed
    assert f"wrote {workdir / 'known_classes.png'}" in printed


@pytest.mark.slow
def test_rank_correlations_with_k_by_hand(experiment):
    _, results, _ = experiment
    every_k = np.repeat(KS, DRAWS).astype(float)
    for metric in ("jnd", "auroc_loss"):
        values = np.ravel(results["series"][metric])
        c = results["correlations"][metric]
        assert c["points"] == len(KS) * DRAWS
        spearman = np.corrcoef(_average_ranks(every_k), _average_ranks(values))[0, 1]
        assert c["spearman"] == pytest.approx(spearman, abs=1e-12)
        assert c["kendall"] == pytest.approx(_kendall_tau_b(every_k, values), abs=1e-12)
        assert c["pearson"] == pytest.approx(np.corrcoef(every_k, values)[0, 1], abs=1e-12)


@pytest.mark.slow
def test_jnd_against_dense_jacobians_and_auroc_against_the_evaluation(experiment):
    """Seed-independent references: ||df/dx||_F from jax.jacfwd on every test sample, and the
    AUROC of the loss score that jacosr.evaluate wrote into the run's results.json."""
    workdir, results, _ = experiment
    first = {
        f"K{k}/known{'-'.join(map(str, classes))}" for k, classes in results["draws"][0].items()
    }
    for name in sorted(first):  # one run per K
        record = results["runs"][name]
        _, data, graphdef, state = load_run(workdir / "runs" / name)
        jacobians = jax.jit(jax.vmap(jax.jacfwd(embedding_apply(graphdef), 1), (None, 0)))
        known, unknown = (
            np.linalg.norm(np.asarray(jacobians(state, x)).reshape(len(x), -1), axis=1)
            for x in (data.known_test.x, data.unknown_test.x)
        )
        assert record["norm_known"] == pytest.approx(known.mean(), rel=1e-4)
        assert record["norm_unknown"] == pytest.approx(unknown.mean(), rel=1e-4)
        assert record["jnd"] == pytest.approx(unknown.mean() - known.mean(), rel=1e-3)
        assert record["jnd_low"] <= record["jnd"] <= record["jnd_high"]
        run = json.loads((workdir / "runs" / name / "results.json").read_text())
        assert record["auroc_loss"] == pytest.approx(run["scores"]["loss"]["auroc"], abs=1e-6)
        assert record["accuracy"] == pytest.approx(run["accuracy"], abs=1e-9)


@pytest.mark.slow
def test_rerun_neither_trains_nor_measures(experiment, monkeypatch):
    workdir, results, _ = experiment
    before = _stamps(workdir / "runs")

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained or measured again")

    monkeypatch.setattr(jacosr.train, "make_train_dispatch", refuse)
    monkeypatch.setattr(grid, "measure_final", refuse)
    with contextlib.redirect_stdout(io.StringIO()):
        again = main([*TINY, "--workdir", str(experiment[0])])
    assert again == results
    assert _stamps(workdir / "runs") == before


def test_draws_are_nested_distinct_seeded_and_extend():
    draws = draw_known_sets(10, [2, 5, 8], draws=4, seed=7)
    assert draws == draw_known_sets(10, [2, 5, 8], draws=4, seed=7)
    assert draws[:3] == draw_known_sets(10, [2, 5, 8], draws=3, seed=7)  # more draws extend
    assert draws != draw_known_sets(10, [2, 5, 8], draws=4, seed=8)
    for draw in draws:
        assert set(draw[2]) < set(draw[5]) < set(draw[8]) <= set(range(10))
        assert all(list(draw[k]) == sorted(draw[k]) and len(draw[k]) == k for k in draw)
    for k in (2, 5, 8):
        assert len({draw[k] for draw in draws}) == 4
    # 3 classes: the 3 sets of 2 are all there are, and 3 draws take each once
    assert sorted(d[2] for d in draw_known_sets(3, [2], draws=3, seed=0)) == [
        (0, 1),
        (0, 2),
        (1, 2),
    ]
    with pytest.raises(ValueError, match="only 3 distinct sets of 2 of 3 classes"):
        draw_known_sets(3, [2], draws=4, seed=0)
    with pytest.raises(ValueError, match="cannot draw 8 known classes of 8"):
        draw_known_sets(8, [2, 8], draws=1, seed=0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ks", "3"], "--ks must be at least 2 distinct numbers of known classes"),
        (["--ks", "1", "3"], "--ks must be numbers >= 2"),
        (["--draws", "0"], "--draws must be >= 1"),
        (["--known", "0", "1"], "--known must be left out (the draws choose the known"),
        (["--unknown", "7"], "--unknown must be left out"),
    ],
)
def test_bad_settings_are_refused_before_any_workdir(argv, message, tmp_path, capsys):
    assert message in refused(main, argv, tmp_path / "w", capsys)


def test_a_k_beyond_the_data_set_fails_before_the_workdir(tmp_path):
    with pytest.raises(ValueError, match="--ks, --draws: cannot draw 8 known classes of 8"):
        main(["--dataset", "toy2d", "--ks", "2", "8", "--workdir", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()
    assert KnownClassesConfig().ks == (2, 3, 4, 5, 6, 7, 8)  # digits' 10 classes: fine


def test_plot_paired_series_draws_a_panel_per_metric():
    xs = np.array([4, 2, 3])  # drawn in order of x
    values = np.arange(6.0).reshape(3, 2)
    fig = plot_paired_series(
        xs,
        {"a": {"one": values}, "b": {"x": values, "y": -values}},
        xlabel="K",
        notes={"a": "note"},
        replicates="draws",
        title="t",
    )
    axes = fig.axes
    assert [ax.get_ylabel() for ax in axes] == ["a", "b"]
    assert [ax.get_title() for ax in axes] == ["note", ""]
    assert list(axes[0].get_xticks()) == [2, 3, 4]
    mean = next(line for line in axes[0].lines if line.get_label() == "one")
    np.testing.assert_allclose(mean.get_xydata(), [[2, 2.5], [3, 4.5], [4, 0.5]])
    assert axes[1].get_legend() is not None and axes[0].get_legend() is None
