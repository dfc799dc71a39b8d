"""Training: the acceptance run on digits, resume after SIGKILL, divergence, workdir rules, CLI,
every loss and technique through the CLI, the rotation task and on-device augmentation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacosr.checkpoint import CheckpointStore
from jacosr.data import DataConfig, LabelledSource, load_open_set, open_set_split
from jacosr.losses import LOSSES, LossConfig, loss_rotation, per_sample_loss
from jacosr.models import ModelConfig, apply_model
from jacosr.train import (
    NonFiniteLossError,
    TrainConfig,
    batch_indices,
    fit,
    init_train_state,
    load_run,
    main,
    make_objective,
    make_train_dispatch,
    resolve_techniques,
    rotated_copies,
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
    assert results["scores"]["loss"]["auroc"] >= 0.85
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["split"]["known_classes"] == [0, 1, 2, 3, 4, 5]
    assert saved["scores"] == results["scores"]
    assert saved["config"]["augment"] == "none" and saved["config"]["self_sup"] == 0.0
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
        "--augment",
        "--self-sup",
        "--scores",
        "--reject-rate",
        "--temperature",
        "--weight-pl",
    ):
        assert flag in out.stdout
    assert "movr" in out.stdout and "20000" in out.stdout  # defaults are shown


CLI_TINY = [
    "--steps",
    "60",
    "--log-every",
    "20",
    "--checkpoint-every",
    "60",
    "--width",
    "32",
    "--embed-dim",
    "16",
]


@pytest.mark.slow
@pytest.mark.parametrize(
    "loss, techniques",
    [(name, []) for name in sorted(LOSSES)]
    + [
        ("movr", ["--self-sup", "0.1", "--augment", "weak"]),
        ("rpl", ["--self-sup", "0.1", "--augment", "strong"]),
    ],
)
def test_cli_trains_each_loss_and_lowers_it(loss, techniques, tmp_path, capsys):
    results = main(["--loss", loss, *techniques, *CLI_TINY, "--workdir", str(tmp_path)])
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [20, 40, 60]
    assert log[-1]["loss"] < log[0]["loss"]  # mean loss of steps 41-60 below steps 1-20
    assert results["config"]["loss"]["loss"] == loss
    if "--augment" not in techniques:  # 60 steps on 8x8 digits shifted by 4 px learn little
        assert results["accuracy"] > 0.5  # 6 known classes: chance is 1/6
    out = capsys.readouterr().out
    assert "closed-set accuracy" in out and "auroc" in out and "openmax" in out


def test_rotated_copies_match_numpy_rot90():
    x = jax.random.normal(jax.random.key(0), (12, 5, 5, 2))
    turned, turns = rotated_copies(jax.random.key(1), x)
    turns = np.asarray(turns)
    assert set(turns) <= {0, 1, 2, 3} and len(set(turns)) > 1
    for b in range(12):
        np.testing.assert_array_equal(turned[b], np.rot90(np.asarray(x[b]), turns[b], axes=(0, 1)))


def test_techniques_default_per_data_set():
    digits = resolve_techniques(TrainConfig())
    assert (digits.augment, digits.self_sup) == ("none", 0.0)
    cifar = resolve_techniques(TrainConfig(data=DataConfig(benchmark="cifar10")))
    assert (cifar.augment, cifar.self_sup) == ("weak", 0.1)
    chosen = resolve_techniques(TrainConfig(augment="strong", self_sup=0.3))
    assert (chosen.augment, chosen.self_sup) == ("strong", 0.3)
    assert resolve_techniques(chosen) == chosen
    with pytest.raises(ValueError, match=r"unknown augmentation 'heavy'; valid .*weak"):
        resolve_techniques(TrainConfig(augment="heavy"))
    with pytest.raises(ValueError, match=r"self_sup must be >= 0"):
        resolve_techniques(TrainConfig(self_sup=-1.0))


def test_rotation_task_needs_square_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 8, 6, 1)).astype(np.float32)
    y = np.repeat(np.arange(3), 100)
    data = open_set_split(LabelledSource("rect", x, y, x, y, 3), (0, 1))
    with pytest.raises(ValueError, match=r"square images, got 8x6; pass --self-sup 0"):
        fit(TrainConfig(self_sup=0.1, batch_size=32), data, tmp_path)


def test_objective_puts_rotated_copies_through_the_rotation_head_only():
    config = TrainConfig(model=ModelConfig(width=32, embed_dim=16), self_sup=0.25)
    data = load_open_set(config.data)
    graphdef, state = init_train_state(config, data)
    x = jnp.asarray(data.known_train.x[:16])
    y = jnp.asarray(data.known_train.y[:16])
    key = jax.random.key(5)
    loss, (_, accuracy) = make_objective(graphdef, config)(*state.model, x, y, key)

    rot_key, _ = jax.random.split(key)
    x_rot, turns = rotated_copies(rot_key, x)
    out, _ = apply_model(graphdef, state.model, jnp.concatenate([x, x_rot]), train=True)
    upright = jax.tree.map(lambda a: a[:16], out)
    expected = jnp.mean(per_sample_loss(config.loss, upright, y)) + 0.25 * jnp.mean(
        loss_rotation(out.rotation_logits[16:], turns)
    )
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    np.testing.assert_allclose(accuracy, jnp.mean(jnp.argmax(upright.logits, -1) == y))


def test_augmentation_runs_inside_the_step_and_is_keyed():
    base = TrainConfig(model=ModelConfig(width=32, embed_dim=16), steps=5)
    data = load_open_set(base.data)

    def params_after(augment, repeats=1):
        config = TrainConfig(**{**base.__dict__, "augment": augment})
        graphdef, _ = init_train_state(config, data)
        dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
        finals = []
        for _ in range(repeats):
            state = init_train_state(config, data)[1]
            state, _ = dispatch(state, data.known_train.x, data.known_train.y, 3)
            finals.append(np.concatenate([np.ravel(a) for a in jax.tree.leaves(state.model)]))
        return finals

    (none,), (weak, again) = params_after("none"), params_after("weak", repeats=2)
    assert not np.allclose(none, weak)
    np.testing.assert_array_equal(weak, again)  # same keys, same batches, same augmentation
