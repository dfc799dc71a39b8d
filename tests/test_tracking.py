"""jacosr.tracking and the tracked training loop: the tracked steps and the sample subsets;
one row against dense references (jacfwd Jacobians, scikit-learn's DBI, pairwise AUROC) and
against jacosr.evaluate on the suite's trained digits model; stochastic rows against the
estimator's known variance; rows are functions of (state, step), and a second state compiles
nothing; a tracked run killed by SIGKILL (JACOSR_FAULT) or cut short before its last
checkpoint resumes to exactly the rows of an uninterrupted run, whatever the dispatch.

The training tests share one uninterrupted tracked reference run (TINY: 120 steps of the small
MLP, checkpoints 40, 80, 120, tracked at 0, 5, 30, 60, 80, 90, 120 on 64 + 64 samples)."""

import dataclasses
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from sklearn.metrics import davies_bouldin_score
from test_jacobian_driver import COMPILE, LOWER, TRACE, jax_events

from jacosr.checkpoint import FAULT_ENV
from jacosr.config import cli, to_dict
from jacosr.data import DataConfig, load_open_set
from jacosr.evaluate import predict
from jacosr.losses import LossConfig
from jacosr.models import ModelConfig, OpenSetNet, embedding_fn, split_model
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import DYNAMICS as DYNAMICS_FILE
from jacosr.runs import load_run, read_dynamics
from jacosr.tracking import (
    TrackConfig,
    Tracker,
    TrackSamples,
    geometric_steps,
    measure,
    resolve_estimator,
    track_samples,
    tracked_steps,
)
from jacosr.train import At, TrainArgs, fit

TRACK = TrackConfig(track_every=30, track_steps=(5, 80), track_samples=64)
TINY = TrainConfig(
    model=ModelConfig(width=32, embed_dim=16),
    steps=120,
    log_every=20,
    checkpoint_every=40,
    track=TRACK,
)
TINY_FLAGS = [
    *("--width", "32", "--embed-dim", "16"),
    *("--steps", "120", "--log-every", "20", "--checkpoint-every", "40"),
    *("--track-every", "30", "--track-steps", "5", "80", "--track-samples", "64"),
]
TRACKED = [0, 5, 30, 60, 80, 90, 120]
ROW_KEYS = [
    "step",
    "estimator",
    "num_probes",
    "num_known",
    "num_unknown",
    "accuracy",
    "dbi",
    "inter_class_distance",
    "intra_inter_ratio",
    "norm_known",
    "norm_unknown",
    "sqnorm_known",
    "sqnorm_unknown",
    "jnd",
    "jnd_low",
    "jnd_high",
    "auroc_loss",
    "auroc_msp",
    "auroc_jacobian",
]


# The tracked steps and the samples


def test_geometric_steps_hand_computed():
    assert geometric_steps(5, 1000) == (0, 1, 10, 100, 1000)  # 1000^(i/3)
    # 5^(i/4) = 1, 1.50, 2.24, 3.34, 5 rounds to 1, 1, 2, 3, 5: repeats move up by one.
    assert geometric_steps(6, 5) == (0, 1, 2, 3, 4, 5)
    assert geometric_steps(2, 7) == (0, 7)
    for points, last in ((20, 2000), (20, 19), (11, 12), (3, 2)):
        steps = geometric_steps(points, last)
        assert len(steps) == points and steps[0] == 0 and steps[-1] == last
        assert all(a < b for a, b in itertools.pairwise(steps))
    with pytest.raises(ValueError, match="distinct steps"):
        geometric_steps(5, 3)


def test_tracked_steps_are_the_union_with_the_first_and_last_step():
    assert tracked_steps(TRACK, 120) == tuple(TRACKED)
    assert tracked_steps(TrackConfig(track_points=4), 1000) == (0, 1, 32, 1000)  # 1000^(1/2)
    assert tracked_steps(TrackConfig(track_steps=(7,)), 50) == (0, 7, 50)
    assert tracked_steps(TrackConfig(), 1000) == ()  # off by default
    assert not TrainConfig().track.enabled
    assert At(tuple(TRACKED)).after(30) == 60 and At(tuple(TRACKED)).after(120) == 120


@pytest.mark.parametrize(
    "kwargs, flag",
    [
        ({"track_every": -1}, "--track-every"),
        ({"track_steps": (3, -2)}, "--track-steps"),
        ({"track_points": 1}, "--track-points"),
        ({"track_samples": 1}, "--track-samples"),
        ({"track_estimator": "exactly"}, "--track-estimator"),
        ({"track_estimator": "xnystrace", "track_probes": 1}, "--track-probes"),
        ({"track_probes": 0}, "--track-probes"),
    ],
)
def test_bad_tracking_values_are_refused_when_built(kwargs, flag):
    with pytest.raises(ValueError, match=flag):
        TrackConfig(**kwargs)


def test_tracked_steps_beyond_the_run_are_refused():
    with pytest.raises(ValueError, match="--track-steps"):
        TrainConfig(steps=100, track=TrackConfig(track_steps=(101,)))
    with pytest.raises(ValueError, match="--track-points"):
        TrainConfig(steps=10, track=TrackConfig(track_points=12))


def test_tracking_flags_are_flat_and_part_of_the_run_config():
    parsed = cli(TrainArgs, args=["--track-steps", "5", "80", "--track-points", "20"])
    assert parsed.config.track == TrackConfig(track_steps=(5, 80), track_points=20)
    assert to_dict(resolve(parsed.config))["track"]["track_steps"] == [5, 80]


@pytest.fixture(scope="module")
def data():
    return load_open_set(DataConfig())


def test_samples_are_a_fixed_seeded_subset(data):
    samples = track_samples(data, 50, seed=3)
    assert samples.known_x.shape == (50, 8, 8, 1) and samples.unknown_x.shape == (50, 8, 8, 1)
    assert samples.known_x.dtype == np.float32 and np.abs(samples.known_x).max() <= 1
    again = track_samples(data, 50, seed=3)
    for a, b in zip(samples, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(track_samples(data, 50, seed=4).known_x, samples.known_x)
    # Every chosen known sample is a distinct known-test image with its own label.
    flat = np.asarray(data.known_test.x).reshape(len(data.known_test.y), -1)
    match = (flat[None] == samples.known_x.reshape(50, 1, -1)).all(axis=2)
    index = [int(np.flatnonzero(row)[0]) for row in match]
    assert len(set(index)) == 50 and index == sorted(index)
    np.testing.assert_array_equal(samples.known_y, data.known_test.y[index])
    everything = track_samples(data, 10_000, seed=3)  # the cap exceeds both splits
    assert len(everything.known_y) == 325 and len(everything.unknown_x) == 214
    np.testing.assert_array_equal(everything.known_y, data.known_test.y)


def test_the_estimator_rule():
    track = TrackConfig()  # auto, 16 probes: exact when min(d, d_z) <= 64
    assert resolve_estimator(track, 64, 128) == ("exact", None)  # digits MLP
    assert resolve_estimator(track, 3072, 64) == ("exact", None)
    assert resolve_estimator(track, 3072, 128) == ("hutchinson", 16)  # VGG32 on CIFAR
    forced = TrackConfig(track_estimator="xnystrace", track_probes=8)
    assert resolve_estimator(forced, 64, 128) == ("xnystrace", 8)
    assert resolve_estimator(TrackConfig(track_estimator="exact"), 3072, 512) == ("exact", None)


# One row against references


def tiny_model(seed: int, width: int = 8):
    """``(graphdef, state)``: a small MLP with a cosine head and moved BatchNorm statistics."""
    config = ModelConfig(backbone="mlp", embed_dim=4, width=width)
    model = OpenSetNet(
        config, image_shape=(4, 4, 1), num_classes=3, head="cosine", rngs=nnx.Rngs(seed)
    )
    graphdef, state = split_model(model)
    noise = jax.random.key(seed + 100)
    state = jax.tree.map(lambda a: a * 1.3 + 0.05 * jax.random.normal(noise, a.shape), state)
    return graphdef, state


@pytest.fixture(scope="module")
def tiny_samples():
    rng = np.random.default_rng(0)
    return TrackSamples(
        rng.uniform(-1, 1, (24, 4, 4, 1)).astype(np.float32),
        np.repeat(np.arange(3), 8),
        rng.uniform(-1, 1, (16, 4, 4, 1)).astype(np.float32),
    )


def dense_jacobians(graphdef, state, xs) -> np.ndarray:
    """jacfwd's dense Jacobians ``[B, d_z, d]`` (float64 on the host)."""
    jac = jax.jit(jax.vmap(jax.jacfwd(embedding_fn(graphdef, state))))(jnp.asarray(xs))
    return np.asarray(jac, np.float64).reshape(len(xs), jac.shape[1], -1)


def pairwise_auroc(known, unknown) -> float:
    """P(unknown > known) + P(tie) / 2 over all pairs."""
    known, unknown = np.asarray(known)[:, None], np.asarray(unknown)[None, :]
    return float(np.mean((unknown > known) + 0.5 * (unknown == known)))


LOSS = LossConfig(loss="nsce", scale=2.0)  # unsaturated softmax: no float32 ties


def test_exact_row_matches_dense_references(tiny_samples):
    graphdef, state = tiny_model(0)
    row = measure(graphdef, state, tiny_samples, LOSS, TrackConfig(), jax.random.key(0))
    assert list(row) == ROW_KEYS[1:]  # the caller adds the step
    assert (row["estimator"], row["num_probes"]) == ("exact", None)
    assert (row["num_known"], row["num_unknown"]) == (24, 16)
    xs = np.concatenate(tiny_samples[::2])
    sq = np.sum(dense_jacobians(graphdef, state, xs) ** 2, axis=(1, 2))
    norms = np.sqrt(sq)
    known, unknown = norms[:24], norms[24:]
    np.testing.assert_allclose(row["sqnorm_known"], sq[:24].mean(), rtol=1e-5)
    np.testing.assert_allclose(row["sqnorm_unknown"], sq[24:].mean(), rtol=1e-5)
    np.testing.assert_allclose(row["norm_known"], known.mean(), rtol=1e-5)
    np.testing.assert_allclose(row["norm_unknown"], unknown.mean(), rtol=1e-5)
    np.testing.assert_allclose(row["jnd"], unknown.mean() - known.mean(), rtol=1e-4, atol=1e-6)
    assert row["jnd_low"] <= row["jnd"] <= row["jnd_high"]
    assert row["auroc_jacobian"] == pytest.approx(pairwise_auroc(known, unknown), abs=1e-9)

    out = predict(graphdef, state, xs)  # the network's outputs; the metrics recomputed here
    z = np.asarray(out.embedding, np.float64)
    y = tiny_samples.known_y
    assert row["dbi"] == pytest.approx(davies_bouldin_score(z[:24], y), rel=1e-6)
    means = np.stack([z[:24][y == k].mean(0) for k in range(3)])
    pairs = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)]
    assert row["inter_class_distance"] == pytest.approx(np.mean(pairs), rel=1e-6)
    spread = [np.linalg.norm(z[:24][y == k] - means[k], axis=1).mean() for k in range(3)]
    assert row["intra_inter_ratio"] == pytest.approx(np.mean(spread) / np.mean(pairs), rel=1e-6)
    pred = np.argmax(np.asarray(out.class_scores)[:24], -1)
    assert row["accuracy"] == pytest.approx(np.mean(pred == y))
    # N-SCE: softmax of T cos; the loss at the pseudo label is -log of the top probability.
    logits = LOSS.scale * np.asarray(out.class_scores, np.float64)
    top = np.max(np.exp(logits - logits.max(1, keepdims=True)), 1) / np.sum(
        np.exp(logits - logits.max(1, keepdims=True)), 1
    )
    for name, s in (("loss", -np.log(top)), ("msp", -top)):
        assert row[f"auroc_{name}"] == pytest.approx(pairwise_auroc(s[:24], s[24:]), abs=1e-6)


def test_stochastic_row_is_unbiased_within_the_estimators_variance(tiny_samples):
    graphdef, state = tiny_model(1)
    track = TrackConfig(track_estimator="hutchinson", track_probes=8)
    row = measure(graphdef, state, tiny_samples, LOSS, track, jax.random.key(5))
    assert (row["estimator"], row["num_probes"]) == ("hutchinson", 8)
    jac = dense_jacobians(graphdef, state, np.concatenate(tiny_samples[::2]))
    a = jac @ jac.transpose(0, 2, 1)  # J J^T, [B, d_z, d_z]; output-side Rademacher probes:
    var = 2 * (np.sum(a**2, axis=(1, 2)) - np.sum(np.diagonal(a, axis1=1, axis2=2) ** 2, 1)) / 8
    sq = np.trace(a, axis1=1, axis2=2)
    for part, name in ((slice(0, 24), "known"), (slice(24, None), "unknown")):
        sigma = np.sqrt(var[part].sum()) / len(sq[part])
        assert abs(row[f"sqnorm_{name}"] - sq[part].mean()) <= 5 * sigma + 1e-6
        # The root of each estimate is biased low: the mean norm is at most the RMS norm.
        assert row[f"norm_{name}"] <= np.sqrt(row[f"sqnorm_{name}"]) + 1e-9
    again = measure(graphdef, state, tiny_samples, LOSS, track, jax.random.key(5))
    assert again == row  # a function of the key
    other = measure(graphdef, state, tiny_samples, LOSS, track, jax.random.key(6))
    assert other["sqnorm_known"] != row["sqnorm_known"]


def test_a_second_state_compiles_nothing(tiny_samples, tmp_path):
    graphdef, first = tiny_model(2, width=5)  # an architecture of its own: its first state
    _, second = tiny_model(3, width=5)  # compiles, the second must not
    for estimator in ("exact", "hutchinson"):
        track = TrackConfig(track_estimator=estimator, track_probes=4)
        with (tmp_path / f"{estimator}.jsonl").open("w") as file:
            tracker = Tracker(graphdef, tiny_samples, LOSS, track, file)
            with jax_events() as counts:
                first_row = tracker.write(0, first)
            assert counts[LOWER] > 0, estimator
            with jax_events() as counts:
                second_row = tracker.write(10, second)
            assert counts[TRACE] == counts[LOWER] == counts[COMPILE] == 0, (estimator, counts)
        assert first_row["norm_known"] != second_row["norm_known"]
        lines = (tmp_path / f"{estimator}.jsonl").read_text().splitlines()
        assert [json.loads(line) for line in lines] == [first_row, second_row]


@pytest.mark.slow
def test_a_trained_models_row_agrees_with_evaluate(digits_run):
    """The suite's 2000-step digits run, all 539 test images: the row's geometry and AUROC
    equal jacosr.evaluate's results (computed there on their own path)."""
    workdir, results = digits_run
    assert not (workdir / DYNAMICS_FILE).exists()  # an untracked run writes no rows
    config, data, graphdef, state = load_run(workdir)
    samples = track_samples(data, 10_000, seed=0)
    row = measure(graphdef, state, samples, config.loss, TrackConfig(), jax.random.key(0))
    for name, value in results.embedding.items():
        assert row[name] == pytest.approx(value, rel=1e-6)
    for name in ("loss", "msp"):
        assert row[f"auroc_{name}"] == pytest.approx(results.scores[name]["auroc"], abs=1e-9)
    assert row["accuracy"] == pytest.approx(results.accuracy)
    assert row["jnd"] > 0.2 and row["auroc_jacobian"] > 0.9  # the paper's Sec. IV, on digits


# The tracked training loop


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """``(workdir, rows)`` of TINY trained without interruption."""
    workdir = tmp_path_factory.mktemp("reference")
    fit(TINY, data, workdir, progress=False)
    return workdir, read_dynamics(workdir)


def test_tracked_run_writes_one_row_per_tracked_step(reference, data):
    workdir, rows = reference
    assert [r["step"] for r in rows] == TRACKED
    assert all(list(r) == ROW_KEYS for r in rows)
    assert {(r["estimator"], r["num_known"], r["num_unknown"]) for r in rows} == {("exact", 64, 64)}
    assert rows[-1]["accuracy"] > rows[0]["accuracy"] and rows[-1]["jnd"] > rows[0]["jnd"]
    # The last row is the trained model's (as restored from the last checkpoint).
    config, _, graphdef, state = load_run(workdir)
    samples = track_samples(data, 64, seed=0)
    key = jax.random.fold_in(jax.random.key(0), 120)
    assert {"step": 120, **measure(graphdef, state, samples, config.loss, TRACK, key)} == rows[-1]


def test_sigkill_during_a_save_then_resume_gives_the_same_rows(reference, data, tmp_path):
    # Checkpoint 80's data are written but not committed: rows 60 and 80, written after
    # checkpoint 40, are on disk and must go; the run resumes from 40.
    killed = subprocess.run(
        [sys.executable, "-m", "jacosr.train", *TINY_FLAGS, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, FAULT_ENV: "during-save:80"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert [r["step"] for r in read_dynamics(tmp_path)] == [0, 5, 30, 60, 80]
    fit(TINY, data, tmp_path, progress=False)
    assert read_dynamics(tmp_path) == reference[1]  # bit for bit, no duplicate or gap


def test_rows_after_the_last_checkpoint_and_a_partial_line_are_measured_again(
    reference, data, tmp_path
):
    # As if killed while writing after row 120, before checkpoint 120 was committed.
    run = Path(shutil.copytree(reference[0], tmp_path / "run"))
    shutil.rmtree(run / "checkpoints" / "120")
    with (run / DYNAMICS_FILE).open("a") as file:
        file.write('{"step": 150, "estim')
    fit(TINY, data, run, progress=False)
    assert read_dynamics(run) == reference[1]


def test_rows_do_not_depend_on_the_dispatch_and_a_finished_run_is_only_read(
    reference, data, tmp_path
):
    # Every interval between stops is a multiple of 5: one 5-step scan serves them all,
    # where the reference ran loops of 5 to 30 steps in its second program.
    config = dataclasses.replace(TINY, dispatch_steps=5)
    fit(config, data, tmp_path, progress=False)
    rows, expected = read_dynamics(tmp_path), reference[1]
    assert [r["step"] for r in rows] == TRACKED
    for row, ref in zip(rows, expected, strict=True):
        assert row.keys() == ref.keys()
        for key, value in ref.items():
            if isinstance(value, float):
                np.testing.assert_allclose(row[key], value, rtol=1e-5, atol=1e-7, err_msg=key)
            else:
                assert row[key] == value
    before = (tmp_path / DYNAMICS_FILE).stat().st_mtime_ns
    fit(config, data, tmp_path, progress=False)
    assert (tmp_path / DYNAMICS_FILE).stat().st_mtime_ns == before


def test_an_infinite_value_makes_its_steps_mean_infinite_and_std_undefined(recwarn):
    """A collapsed embedding's DBI is inf (jacosr.geometry): series over seeds keep it, with
    no warning, rather than fail or drop the seed."""
    from jacosr.tracking import SERIES, series_over_seeds

    def row(step, dbi):
        return (
            {"step": step, "estimator": "exact", "num_probes": None}
            | dict.fromkeys(SERIES, 0.5)
            | {"dbi": dbi}
        )

    series = series_over_seeds(
        {"a/seed0": [row(0, 1.0), row(5, np.inf)], "a/seed1": [row(0, 3.0), row(5, 2.0)]}
    )
    assert series["mean"]["dbi"] == [2.0, np.inf]
    assert series["std"]["dbi"][0] == pytest.approx(np.sqrt(2)) and np.isnan(
        series["std"]["dbi"][1]
    )
    assert series["final"]["dbi"] == [np.inf, 2.0]
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
