"""The Jacobian training terms wired into the step (jacosr.step, issue 20): with both weights 0
the step is the plain one, bit for bit; the known-class term adds its weight times the mean
estimate of ``||J||_F^2`` of the upright batch; the open-space term draws its paths from the
upright batch alone; a run with both terms on, killed and resumed, equals an uninterrupted one
bit for bit, and reports its JND. (The estimators against dense Jacobians:
test_jacobian_penalties.py; 1 vs 4 devices: test_distributed.py.)"""

import dataclasses
import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacosr import jacobian
from jacosr import step as step_programs
from jacosr.checkpoint import FAULT_ENV
from jacosr.config import to_dict
from jacosr.data import load_open_set
from jacosr.models import ModelConfig, ModelState, apply_model
from jacosr.recipe import JacobianTerms, TrainConfig, resolve
from jacosr.runs import read_results
from jacosr.step import init_train_state, make_objective, make_train_dispatch
from jacosr.train import fit

TINY = TrainConfig(
    model=ModelConfig(width=32, embed_dim=16), steps=60, log_every=20, checkpoint_every=20
)
TERMS = JacobianTerms(jacobian_reg=0.1, jacobian_reg_probes=2, open_space_reg=0.1)
FLAGS = [
    *("--width", "32", "--embed-dim", "16", "--steps", "60", "--log-every", "20"),
    *("--checkpoint-every", "20", "--jacobian-reg", "0.1", "--jacobian-reg-probes", "2"),
    *("--open-space-reg", "0.1", "--scores", "loss"),
]


@pytest.fixture(scope="module")
def data():
    return load_open_set(TINY.data)


def _leaves(tree) -> list[np.ndarray]:
    return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _after(config: TrainConfig, data, steps: int = 4) -> list[np.ndarray]:
    config = resolve(config)
    graphdef, state = init_train_state(config, data)
    dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
    state, _ = dispatch(state, data.known_train.x, data.known_train.y, steps)
    return _leaves(state)


def test_with_both_weights_zero_the_step_is_the_plain_step_bit_for_bit(data):
    zero = dataclasses.replace(
        TINY, jacobian=JacobianTerms(0.0, 4, "output", 0.0, open_space_ratio=3.0)
    )
    for a, b in zip(_after(zero, data), _after(TINY, data), strict=True):
        np.testing.assert_array_equal(a, b)
    # off, the terms are not written into config.json: older runs' identity is unchanged
    assert "jacobian" not in to_dict(resolve(TINY))
    assert to_dict(resolve(zero))["jacobian"]["jacobian_reg_probes"] == 4


def test_the_known_term_adds_its_weight_times_the_mean_estimate(data):
    config = resolve(dataclasses.replace(TINY, jacobian=TERMS, self_sup=0.0))
    plain = resolve(TINY)
    graphdef, state = init_train_state(config, data)
    x = jnp.asarray(data.known_train.x[:16])
    y = jnp.asarray(data.known_train.y[:16])
    key = jax.random.key(7)
    known = dataclasses.replace(config, jacobian=dataclasses.replace(TERMS, open_space_reg=0.0))
    with_term, _ = make_objective(graphdef, known)(*state.model, x, y, key)
    without, _ = make_objective(graphdef, plain)(*state.model, x, y, key)

    def embed(params, xs):
        out, _ = apply_model(
            graphdef, ModelState(params, state.model.batch_stats), xs, train=True,
            key=jax.random.split(key)[1],
        )  # fmt: skip
        return out.embedding

    probe_key, _ = jax.random.split(jax.random.fold_in(key, 2))
    sq, _ = jacobian.batched_sqnorms(embed, x, probe_key, params=state.model.params, num_probes=2)
    np.testing.assert_allclose(with_term, without + 0.1 * jnp.mean(sq), rtol=1e-5)


def test_the_open_space_paths_come_from_the_upright_batch_alone(data, monkeypatch):
    """With the rotation task on, the rotated copies join the forward pass but not the paths:
    the points are drawn from the 16 upright images and their labels."""
    seen = []
    draw = jacobian.open_space_points

    def recording(key, x, y, **kwargs):
        seen.append((x.shape, y.shape))
        return draw(key, x, y, **kwargs)

    monkeypatch.setattr(step_programs.jacobian, "open_space_points", recording)
    config = resolve(dataclasses.replace(TINY, jacobian=TERMS, self_sup=0.1))
    graphdef, state = init_train_state(config, data)
    x = jnp.asarray(data.known_train.x[:16])
    y = jnp.asarray(data.known_train.y[:16])
    loss, _ = make_objective(graphdef, config)(*state.model, x, y, jax.random.key(1))
    assert seen == [(x.shape, y.shape)] and np.isfinite(loss)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    workdir = tmp_path_factory.mktemp("terms-reference")
    _, model = fit(dataclasses.replace(TINY, jacobian=TERMS), data, workdir, progress=False)
    return workdir, _leaves(model)


def test_a_run_with_the_terms_killed_and_resumed_is_bit_identical(reference, data, tmp_path):
    killed = subprocess.run(
        [sys.executable, "-m", "jacosr.train", *FLAGS, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        env={**os.environ, FAULT_ENV: "after-step:40"},
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    _, model = fit(dataclasses.replace(TINY, jacobian=TERMS), data, tmp_path, progress=False)
    for a, b in zip(_leaves(model), reference[1], strict=True):
        np.testing.assert_array_equal(a, b)
    log = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    expected = [json.loads(x) for x in (reference[0] / "metrics.jsonl").read_text().splitlines()]
    assert [{**r, "seconds": 0} for r in log] == [{**r, "seconds": 0} for r in expected]


def test_the_command_line_reports_the_jnd(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "jacosr.train", *FLAGS, "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = read_results(tmp_path)
    assert list(results.scores) == ["loss", "jacobian"]  # jacobian added: it gives the JND
    jnd = results.jnd
    assert jnd["low"] <= jnd["estimate"] <= jnd["high"]
    assert "Jacobian norm difference (Eq. 20)" in done.stdout
    stored = json.loads((tmp_path / "config.json").read_text())["jacobian"]
    assert stored == to_dict(TERMS)
