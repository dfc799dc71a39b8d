"""The input-plane heat map on toy2d end to end on a tiny config: its workdir, its grids against
dense Jacobians of jax.jacfwd, the open space lighting up, resumption, refusals."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest
from helpers import refused

import jacosr.train
from jacosr.experiments import heatmap
from jacosr.experiments.heatmap import HeatmapConfig, main, plane_grid
from jacosr.models import embedding_fn
from jacosr.runs import load_run
from jacosr.step import init_train_state

RES = 24
TINY = ["--steps", "100", "--log-every", "20", "--checkpoint-every", "100", "--width", "32"]
TINY += ["--embed-dim", "16", "--resolution", str(RES)]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """``(workdir, results, printed)`` of one tiny run of the command (toy2d, known 0 2 4 6)."""
    workdir = tmp_path_factory.mktemp("heatmap")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = main([*TINY, "--workdir", str(workdir)])
    return workdir, results, printed.getvalue()


@pytest.mark.slow
def test_workdir_holds_the_model_and_both_grids(experiment):
    workdir, results, printed = experiment
    for name in ("config.json", *heatmap.OUTPUTS):
        assert (workdir / name).stat().st_size > 0
        assert name == "config.json" or f"wrote {workdir / name}" in printed
    assert (workdir / "heatmap.png").stat().st_size > 30_000
    config = json.loads((workdir / "train" / "config.json").read_text())
    assert config["data"]["dataset"] == "toy2d" and config["steps"] == 100
    assert (workdir / "train" / "checkpoints").is_dir()
    saved = np.load(workdir / "heatmap.npz")
    assert saved["grid"].shape == (RES, RES, 2)
    for stage in ("before_training", "after_training"):
        grid = saved[stage]
        assert grid.shape == (RES, RES) and np.all(np.isfinite(grid)) and np.all(grid > 0)
        r = results[stage]
        assert r["median_norm"]["plane"] == pytest.approx(np.median(grid))
        assert r["norm_range_on_plane"] == pytest.approx([grid.min(), grid.max()])
    assert results["split"]["known_classes"] == [0, 2, 4, 6]
    assert results["split"]["unknown_classes"] == [1, 3, 5, 7]
    assert json.loads((workdir / "results.json").read_text()) == results
    assert "after training: median ||J|| plane" in printed


@pytest.mark.slow
def test_grids_match_dense_jacobians(experiment):
    """Grid cells against ||jax.jacfwd(f)(x)||_F at the cell's point, for the initial and the
    trained model: values and orientation (row i is height u[i])."""
    workdir, _, _ = experiment
    config, data, graphdef, trained = load_run(workdir / "train")
    _, initial = init_train_state(config, data)
    saved = np.load(workdir / "heatmap.npz")
    u = np.linspace(-1, 1, RES, dtype=np.float32)
    cells = [(0, 0), (0, RES - 1), (RES - 1, 3), (11, 17), (RES // 2, RES // 2)]
    points = np.array([[u[j], u[i]] for i, j in cells], np.float32).reshape(-1, 1, 1, 2)
    for stage, state in (("before_training", initial.model), ("after_training", trained)):
        jacobians = jax.jit(jax.vmap(jax.jacfwd(embedding_fn(graphdef, state))))(points)
        dense = np.linalg.norm(np.asarray(jacobians).reshape(len(points), -1), axis=1)
        np.testing.assert_allclose([saved[stage][c] for c in cells], dense, rtol=1e-4)


@pytest.mark.slow
def test_training_lowers_the_norm_on_the_known_classes_only(experiment):
    """The picture's claim in numbers: after training the known classes sit at lower norm than
    the unknown ones between them, which they did not before."""
    _, results, _ = experiment
    before, after = results["before_training"], results["after_training"]
    assert before["auroc_jacobian_norm"] < 0.7
    assert after["auroc_jacobian_norm"] > 0.9
    median = after["median_norm"]
    assert median["known_train"] < 0.5 * median["unknown_test"]
    assert median["known_train"] < before["median_norm"]["known_train"]


@pytest.mark.slow
def test_rerun_reads_the_model_back(experiment, monkeypatch):
    workdir, results, _ = experiment
    log = workdir / "train" / "metrics.jsonl"
    stamp = log.stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(jacosr.train, "make_train_dispatch", no_training)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*TINY, "--workdir", str(workdir)]) == results
    assert log.stat().st_mtime_ns == stamp


def test_plane_grid_by_hand():
    grid = plane_grid(3, 2.0)
    assert grid.shape == (3, 3, 2) and grid.dtype == np.float32
    np.testing.assert_array_equal(grid[0, 0], [-2, -2])
    np.testing.assert_array_equal(grid[0, 2], [2, -2])  # along a row, x_1 grows
    np.testing.assert_array_equal(grid[2, 0], [-2, 2])  # down the rows, x_2 grows
    np.testing.assert_array_equal(grid[1, 1], [0, 0])


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dataset", "digits"], "--dataset must be toy2d"),
        (["--benchmark", "mnist"], "--dataset must be toy2d"),
        (["--resolution", "1"], "--resolution must be >= 2"),
        (["--extent", "0"], "--extent must be > 0"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, capsys, flags, message):
    assert message in refused(main, flags, tmp_path / "run", capsys)


def test_the_default_is_toy2d_with_unknown_classes_between_the_known():
    data = HeatmapConfig().train.data
    assert data.dataset == "toy2d" and data.known == (0, 2, 4, 6)
