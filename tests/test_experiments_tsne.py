"""The t-SNE experiment (Fig. 13) end to end on a tiny config: its workdir, its numbers against
NumPy, resumption with the same maps; t-SNE and the min-max scaling on hand-made data."""

import contextlib
import io
import json

import numpy as np
import pytest

import jacosr.train
from jacosr.experiments import tsne
from jacosr.experiments.tsne import TsneConfig, main, min_max, tsne_map

CAP = 30
TINY = ["--steps", "40", "--log-every", "20", "--checkpoint-every", "40", "--width", "32"]
TINY += ["--embed-dim", "16", "--max-samples", str(CAP), "--perplexity", "10"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """``(workdir, results, printed)`` of one tiny run of the command (SCE and m-OvR)."""
    workdir = tmp_path_factory.mktemp("tsne")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = main([*TINY, "--workdir", str(workdir)])
    return workdir, results, printed.getvalue()


@pytest.mark.slow
def test_workdir_holds_both_models_and_their_maps(experiment):
    workdir, results, printed = experiment
    for name in ("config.json", *tsne.OUTPUTS):
        assert (workdir / name).stat().st_size > 0
        assert name == "config.json" or f"wrote {workdir / name}" in printed
    assert (workdir / "tsne.png").stat().st_size > 30_000
    for loss in ("sce", "movr"):
        config = json.loads((workdir / "runs" / loss / "config.json").read_text())
        assert config["loss"]["loss"] == loss and (workdir / "runs" / loss / "checkpoints").is_dir()
        assert f"{loss}: mean normalised ||J|| known" in printed
    saved = np.load(workdir / "tsne.npz")
    labels = saved["labels"]
    # digits: 325 known-test and 214 unknown-test samples, each capped
    assert labels.shape == (2 * CAP,) and np.sum(labels == -1) == CAP
    assert set(labels[labels >= 0].tolist()) <= set(range(6))
    for loss in ("sce", "movr"):
        assert saved[f"map_{loss}"].shape == (2 * CAP, 2)
        assert saved[f"norm_{loss}"].shape == (2 * CAP,)
        assert np.all(np.isfinite(saved[f"map_{loss}"])) and np.all(saved[f"norm_{loss}"] > 0)
    assert results["num_samples"] == {"known": CAP, "unknown": CAP}
    assert list(results["losses"]) == ["sce", "movr"]
    assert json.loads((workdir / "results.json").read_text()) == results


@pytest.mark.slow
def test_recorded_numbers_match_numpy(experiment):
    workdir, results, _ = experiment
    saved = np.load(workdir / "tsne.npz")
    unknown = saved["labels"] < 0
    for loss, row in results["losses"].items():
        norms = saved[f"norm_{loss}"].astype(float)
        scaled = (norms - norms.min()) / (norms.max() - norms.min())
        mean = row["mean_normalised_norm"]
        assert mean["known"] == pytest.approx(scaled[~unknown].mean(), rel=1e-5)
        assert mean["unknown"] == pytest.approx(scaled[unknown].mean(), rel=1e-5)
        diff = norms[unknown][:, None] - norms[~unknown][None, :]
        assert row["auroc_jacobian_norm"] == pytest.approx(
            np.mean(diff > 0) + np.mean(diff == 0) / 2
        )
        jnd = row["jacobian_norm_difference"]
        expected = norms[unknown].mean() - norms[~unknown].mean()
        assert jnd["estimate"] == pytest.approx(expected, rel=1e-5)
        assert jnd["low"] <= jnd["estimate"] <= jnd["high"]


@pytest.mark.slow
def test_rerun_reads_the_models_back_and_redraws_the_same_maps(experiment, monkeypatch):
    workdir, results, _ = experiment
    before = dict(np.load(workdir / "tsne.npz"))

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(jacosr.train, "make_train_dispatch", no_training)
    with contextlib.redirect_stdout(io.StringIO()):
        assert main([*TINY, "--workdir", str(workdir)]) == results
    after = np.load(workdir / "tsne.npz")
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value)


def test_tsne_keeps_two_far_clusters_apart():
    """Two Gaussian clusters in 10-D, 20 apart with unit spread: in the map every point's
    nearest neighbour is of its own cluster."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 10))
    x[20:, 0] += 20.0
    xy = tsne_map(x.astype(np.float32), perplexity=5, seed=0)
    assert xy.shape == (40, 2) and xy.dtype == np.float32
    d = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.diag(np.full(40, np.inf))
    cluster = np.arange(40) >= 20
    assert np.array_equal(cluster[d.argmin(1)], cluster)
    np.testing.assert_array_equal(tsne_map(x.astype(np.float32), perplexity=5, seed=0), xy)


def test_min_max_by_hand():
    np.testing.assert_allclose(min_max(np.array([3.0, 5.0, 4.0, 7.0])), [0.0, 0.5, 0.25, 1.0])
    np.testing.assert_array_equal(min_max(np.full(3, 2.5)), np.zeros(3))


def test_too_large_a_perplexity_is_refused_before_the_workdir_is_written(tmp_path):
    with pytest.raises(ValueError, match=r"--perplexity must be below the number of points"):
        main(["--max-samples", "5", "--perplexity", "10", "--workdir", str(tmp_path / "run")])
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(losses=("sce", "nope")), "unknown loss 'nope'"),
        (dict(losses=()), "--losses must be at least one loss name"),
        (dict(perplexity=0.0), "--perplexity must be > 0"),
        (dict(max_samples=1), "--max-samples must be >= 2"),
    ],
)
def test_bad_settings_are_refused_when_built(settings, message):
    with pytest.raises(ValueError, match=message):
        TsneConfig(**settings)
