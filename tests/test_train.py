"""Training: the acceptance run on digits, resume after SIGKILL, divergence, workdir rules, CLI."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jacosr.checkpoint import CheckpointStore
from jacosr.data import DataConfig, load_open_set
from jacosr.losses import LossConfig
from jacosr.models import ModelConfig
from jacosr.train import (
    NonFiniteLossError,
    TrainConfig,
    batch_indices,
    fit,
    init_train_state,
    load_run,
    main,
    run,
)

TINY = TrainConfig(
    model=ModelConfig(width=32, embed_dim=16),
    steps=300,
    log_every=50,
    checkpoint_every=100,
)


def _params(workdir: Path):
    return jax.tree.leaves(load_run(workdir)[3].params)


@pytest.mark.slow
def test_acceptance_digits_movr_2000_steps(tmp_path):
    config = TrainConfig(steps=2000)  # digits, known [0..5], seed 0, m-OvR: the defaults
    assert config.data.known == (0, 1, 2, 3, 4, 5) and config.loss.loss == "movr"
    results = run(config, tmp_path)
    assert results["accuracy"] >= 0.97
    assert results["auroc"]["loss"] >= 0.85
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["split"]["known_classes"] == [0, 1, 2, 3, 4, 5]
    assert saved["auroc"] == results["auroc"]
    log = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(100, 2001, 100))


def test_batches_are_a_function_of_the_step():
    key = jax.random.key(3)
    a = np.asarray(batch_indices(key, np.int32(7), 100, 32))
    b = np.asarray(batch_indices(key, np.int32(7), 100, 32))
    np.testing.assert_array_equal(a, b)
    # within one epoch the batches are disjoint
    epoch = np.concatenate([np.asarray(batch_indices(key, np.int32(s), 100, 32)) for s in range(3)])
    assert len(np.unique(epoch)) == 96


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    steps = ["--steps", "600", "--log-every", "20", "--checkpoint-every", "100"]
    small = ["--width", "32", "--embed-dim", "16"]
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "jacosr.train", *steps, *small, "--workdir", str(killed)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed / "checkpoints" / "100").exists():
        time.sleep(0.05)
    time.sleep(0.3)  # land somewhere between checkpoints
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (killed / "checkpoints" / "100").exists(), "the run never reached its first checkpoint"
    assert not (killed / "results.json").exists(), "the run finished before it was killed"
    subprocess.run(cmd, check=True, capture_output=True)
    log = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert log == list(range(20, 601, 20))  # no duplicated or missing lines after resume

    whole = tmp_path / "whole"
    main([*steps, *small, "--workdir", str(whole)])
    for a, b in zip(_params(killed), _params(whole), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rerun_resumes_without_training(tmp_path):
    data = load_open_set(TINY.data)
    fit(TINY, data, tmp_path, progress=False)
    stamp = (tmp_path / "metrics.jsonl").read_text()
    fit(TINY, data, tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == stamp


def test_different_config_is_refused_unless_overwrite(tmp_path):
    data = load_open_set(TINY.data)
    fit(TINY, data, tmp_path, progress=False)
    other = TrainConfig(**{**TINY.__dict__, "lr": 0.05})
    with pytest.raises(ValueError, match=r"different config \(lr: 0.1 -> 0.05\).*--overwrite"):
        fit(other, data, tmp_path, progress=False)
    fit(other, data, tmp_path, overwrite=True, progress=False)
    assert json.loads((tmp_path / "config.json").read_text())["lr"] == 0.05


def test_divergence_names_the_step_and_keeps_last_good_checkpoint(tmp_path):
    config = TrainConfig(
        model=ModelConfig(width=32, embed_dim=16),
        loss=LossConfig(loss="sce"),
        lr=10.0,
        weight_decay=0.0,
        steps=300,
        log_every=1,
        checkpoint_every=1,
    )
    data = load_open_set(config.data)
    with pytest.raises(NonFiniteLossError, match=r"diverged at step (\d+).*is intact") as err:
        fit(config, data, tmp_path, progress=False)
    bad_step = int(err.value.args[0].split("step ")[1].split(":")[0])
    store = CheckpointStore(tmp_path)
    last = store.latest_step()
    assert last is not None and last <= bad_step
    _, template = init_train_state(config, data)
    state, saved_config = store.restore(template)
    store.close()
    assert int(state.step) == last
    assert saved_config["lr"] == 10.0
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.model))


def test_bad_training_config_messages(tmp_path):
    data = load_open_set(DataConfig())
    with pytest.raises(ValueError, match=r"fewer than batch_size 4096; lower --batch-size"):
        fit(TrainConfig(batch_size=4096), data, tmp_path)
    with pytest.raises(ValueError, match=r"checkpoint_every \(150\) must be a multiple"):
        fit(TrainConfig(log_every=100, checkpoint_every=150), data, tmp_path)


def test_load_run_errors_on_non_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json; is it a jacosr workdir"):
        load_run(tmp_path)


def test_cli_help_documents_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "jacosr.train", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0
    for flag in (
        "--dataset",
        "--known",
        "--loss",
        "--steps",
        "--workdir",
        "--overwrite",
        "--margin-neg",
        "--backbone",
        "--weight-decay",
        "--lr",
    ):
        assert flag in out.stdout
    assert "movr" in out.stdout and "20000" in out.stdout  # defaults are shown
