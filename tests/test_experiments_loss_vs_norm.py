"""The loss-vs-norm experiment (Fig. 7) end to end on a tiny config: its workdir, its numbers
against NumPy references, resumption; and its claim on the shared digits run."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest
from helpers import refused

import jacosr.train
from jacosr.data import DataConfig, load_open_set
from jacosr.data.labelled import DataNotPreparedError
from jacosr.evaluate import predict
from jacosr.experiments import loss_vs_norm
from jacosr.experiments.loss_vs_norm import (
    COLUMNS,
    LossVsNormConfig,
    capped_test_splits,
    main,
    measure,
    per_sample,
)
from jacosr.models import embedding_fn
from jacosr.runs import load_run

SEEDS, CAP = 2, 40
TINY = ["--steps", "40", "--log-every", "20", "--checkpoint-every", "40", "--width", "32"]
TINY += ["--embed-dim", "16", "--seeds", str(SEEDS), "--max-samples", str(CAP)]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """``(workdir, results, printed)`` of one tiny run of the command."""
    workdir = tmp_path_factory.mktemp("loss_vs_norm")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        results = main([*TINY, "--workdir", str(workdir)])
    return workdir, results, printed.getvalue()


def _ranks(a: np.ndarray) -> np.ndarray:
    assert len(np.unique(a)) == len(a)  # no ties: plain ranks are Spearman's
    return np.argsort(np.argsort(a)).astype(float)


def _auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(unknown > known) + P(equal) / 2 over all pairs."""
    diff = unknown[:, None] - known[None, :]
    return float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))


def _movr_loss_at_pseudo_label(cosines: np.ndarray, scale=32.0, margin=0.5) -> np.ndarray:
    """Eq. 22-24 in NumPy, from the head's cosines: BCE of every class at ``argmax``."""
    s = np.cos(np.arccos(np.clip(cosines.astype(np.float64), -1, 1)) + margin)
    positive = np.arange(cosines.shape[1]) == cosines.argmax(1)[:, None]
    logits = scale * s
    # -log sigmoid(a) = logaddexp(0, -a); -log(1 - sigmoid(a)) = logaddexp(0, a)
    return np.where(positive, np.logaddexp(0, -logits), np.logaddexp(0, logits)).sum(1)


@pytest.mark.slow
def test_workdir_holds_every_seed_and_the_series(experiment):
    workdir, results, printed = experiment
    for name in ("config.json", *loss_vs_norm.OUTPUTS):
        assert (workdir / name).stat().st_size > 0
        assert name == "config.json" or f"wrote {workdir / name}" in printed
    assert (workdir / "loss_vs_norm.png").stat().st_size > 20_000
    for seed in range(SEEDS):
        run = workdir / "runs" / "movr" / f"seed{seed}"
        assert json.loads((run / "config.json").read_text())["seed"] == seed
        assert (run / "checkpoints").is_dir() and (run / "metrics.jsonl").exists()
    samples = np.load(workdir / "samples.npz")
    assert samples["seeds"].tolist() == list(range(SEEDS))
    for name in ("loss_known", "norm_known", "loss_unknown", "norm_unknown"):
        assert samples[name].shape == (SEEDS, CAP)  # digits: 325 known, 214 unknown, capped
        assert np.all(np.isfinite(samples[name])) and np.all(samples[name] >= 0)
    assert results["num_samples"] == {"known": CAP, "unknown": CAP}
    assert list(results["seeds"]) == [f"movr/seed{s}" for s in range(SEEDS)]
    assert list(results["summary"]) == list(COLUMNS)
    assert json.loads((workdir / "results.json").read_text()) == results
    assert "| loss | Pearson (all) |" in printed and "| movr |" in printed


@pytest.mark.slow
def test_recorded_numbers_match_numpy_references(experiment):
    workdir, results, _ = experiment
    samples = np.load(workdir / "samples.npz")
    for seed in range(SEEDS):
        record = results["seeds"][f"movr/seed{seed}"]
        known = {q: samples[f"{q}_known"][seed] for q in ("loss", "norm")}
        unknown = {q: samples[f"{q}_unknown"][seed] for q in ("loss", "norm")}
        pooled = {q: np.concatenate([known[q], unknown[q]]) for q in known}
        for group, values in (("all", pooled), ("known", known), ("unknown", unknown)):
            corr = record["correlation"][group]
            n, loss = values["norm"].astype(float), values["loss"].astype(float)
            np.testing.assert_allclose(corr["pearson"], np.corrcoef(n, loss)[0, 1], rtol=1e-6)
            spearman = np.corrcoef(_ranks(n), _ranks(loss))[0, 1]
            np.testing.assert_allclose(corr["spearman"], spearman, rtol=1e-6)
        auroc = record["auroc"]
        assert auroc["loss"] == pytest.approx(_auroc(known["loss"], unknown["loss"]))
        assert auroc["jacobian_norm"] == pytest.approx(_auroc(known["norm"], unknown["norm"]))
        assert record["mean"]["unknown"]["loss"] == pytest.approx(unknown["loss"].mean())
    for header, path in COLUMNS.items():
        values = []
        for seed in range(SEEDS):
            value = results["seeds"][f"movr/seed{seed}"]
            for key in path:
                value = value[key]
            values.append(value)
        cell = results["summary"][header]
        assert cell["values"] == values
        assert cell["mean"] == pytest.approx(np.mean(values))
        assert cell["std"] == pytest.approx(np.std(values, ddof=1))


@pytest.mark.slow
def test_per_sample_loss_and_norm_against_independent_references(experiment):
    """The stored values of seed 0: the loss against Eq. 22-24 in NumPy from the head's
    cosines, the norm against the dense Jacobian of jax.jacfwd."""
    workdir, _, _ = experiment
    _, data, graphdef, state = load_run(workdir / "runs" / "movr" / "seed0")
    known, unknown = capped_test_splits(data, CAP, seed=0)
    samples = np.load(workdir / "samples.npz")
    for split, name in ((known, "known"), (unknown, "unknown")):
        x = split.x[:5]
        cosines = np.asarray(predict(graphdef, state, x).class_scores)
        reference = _movr_loss_at_pseudo_label(cosines)
        np.testing.assert_allclose(samples[f"loss_{name}"][0, :5], reference, rtol=2e-3, atol=1e-6)
        jacobians = jax.jit(jax.vmap(jax.jacfwd(embedding_fn(graphdef, state))))(x)
        dense = np.linalg.norm(np.asarray(jacobians).reshape(len(x), -1), axis=1)
        np.testing.assert_allclose(samples[f"norm_{name}"][0, :5], dense, rtol=1e-4)


@pytest.mark.slow
def test_rerun_reads_the_runs_back(experiment, monkeypatch):
    workdir, results, _ = experiment
    logs = sorted(workdir.glob("runs/movr/seed*/metrics.jsonl"))
    stamps = [p.stat().st_mtime_ns for p in logs]

    def no_training(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(jacosr.train, "make_train_dispatch", no_training)
    with contextlib.redirect_stdout(io.StringIO()):
        again = main([*TINY, "--workdir", str(workdir)])
    assert again == results
    assert [p.stat().st_mtime_ns for p in logs] == stamps


def test_capped_splits_are_seeded_ordered_subsets():
    data = load_open_set(DataConfig())
    known, unknown = capped_test_splits(data, 50, seed=3)
    again = capped_test_splits(data, 50, seed=3)
    for cut, full, repeat in (
        (known, data.known_test, again[0]),
        (unknown, data.unknown_test, again[1]),
    ):
        assert cut.x.shape == (50, 8, 8, 1)
        rows = {x.tobytes(): i for i, x in enumerate(full.x)}
        index = [rows[x.tobytes()] for x in cut.x]  # every kept sample is one of the split
        assert len(set(index)) == 50 and index == sorted(index)
        np.testing.assert_array_equal(cut.y, full.y[index])
        np.testing.assert_array_equal(cut.x, repeat.x)
    whole, _ = capped_test_splits(data, 10_000, seed=0)
    assert whole is data.known_test


def test_measure_on_hand_made_samples():
    """Losses that are the norms squared: rank correlation 1, AUROC by hand."""
    known = {"norm": np.array([1.0, 2.0, 3.0]), "loss": np.array([1.0, 4.0, 9.0])}
    unknown = {"norm": np.array([2.5, 4.0, 5.0]), "loss": np.array([6.25, 16.0, 25.0])}
    record = measure(known, unknown)
    for group in ("all", "known", "unknown"):
        assert record["correlation"][group]["spearman"] == pytest.approx(1.0)
        assert record["correlation"][group]["kendall"] == pytest.approx(1.0)
    # norm 2.5 beats 1 and 2 of the known, 4 and 5 beat all three: 8 of 9 pairs
    assert record["auroc"]["loss"] == record["auroc"]["jacobian_norm"] == pytest.approx(8 / 9)
    # loss = norm^2 on 2.5, 4, 5: Pearson of (2.5, 4, 5) and (6.25, 16, 25), by hand
    n, s = np.array([2.5, 4.0, 5.0]), np.array([6.25, 16.0, 25.0])
    r = ((n - n.mean()) @ (s - s.mean())) / np.sqrt(
        ((n - n.mean()) ** 2).sum() * ((s - s.mean()) ** 2).sum()
    )
    assert record["correlation"]["unknown"]["pearson"] == pytest.approx(r)
    assert record["mean"]["known"] == {"loss": pytest.approx(14 / 3), "jacobian_norm": 2.0}


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--seeds", "0", "--seeds must be >= 1"),
        ("--max-samples", "2", "--max-samples must be >= 3"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, capsys, flag, value, message):
    assert message in refused(main, [flag, value], tmp_path / "run", capsys)
    with pytest.raises(ValueError, match=message):
        LossVsNormConfig(**{flag[2:].replace("-", "_"): int(value)})


@pytest.mark.slow
def test_on_digits_the_loss_tracks_the_norm(digits_run):
    """The paper's Fig. 7 on the shared digits m-OvR run (2,000 steps): the loss rises with
    the norm, over all samples and within each group, and both separate known from unknown."""
    config, data, graphdef, state = load_run(digits_run[0])
    values = [
        per_sample(graphdef, state, s.x, config.loss) for s in capped_test_splits(data, 2000, 0)
    ]
    record = measure(*values)
    assert record["correlation"]["all"]["spearman"] > 0.8
    assert record["correlation"]["known"]["spearman"] > 0.3
    assert record["correlation"]["unknown"]["spearman"] > 0.3
    assert min(record["auroc"].values()) > 0.9
    assert record["mean"]["unknown"]["loss"] > 10 * record["mean"]["known"]["loss"]


def test_missing_data_fails_before_the_workdir_exists(tmp_path):
    with pytest.raises(DataNotPreparedError, match="lsun_crop is not prepared"):
        main(
            [
                "--dataset",
                "lsun_crop",
                "--data-dir",
                str(tmp_path),
                "--workdir",
                str(tmp_path / "w"),
            ]
        )
    assert not (tmp_path / "w").exists()


def test_a_constant_group_has_nan_correlations():
    """A constant loss has no correlation with the norm: NaN, as scipy gives, never a number."""
    known = {"norm": np.array([1.0, 2.0, 3.0]), "loss": np.array([5.0, 5.0, 5.0])}
    unknown = {"norm": np.array([4.0, 5.0, 6.0]), "loss": np.array([6.0, 7.0, 9.0])}
    record = measure(known, unknown)
    assert np.isnan(record["correlation"]["known"]["pearson"])
    assert np.isnan(record["correlation"]["known"]["spearman"])
    assert record["correlation"]["unknown"]["spearman"] == pytest.approx(1.0)
