"""The interpolation experiment end to end on a tiny configuration (every estimator), its paper
claims, and its refusals of bad settings before anything is trained."""

import json
import re
from collections import Counter

import jax
import numpy as np
import pytest

from jacosr.data import DataConfig, load_open_set
from jacosr.experiments import interp
from jacosr.experiments.interp import InterpConfig, main, sample_path_ends
from jacosr.jacobian import ESTIMATORS
from jacosr.models import ModelConfig
from jacosr.recipe import TrainConfig

TINY_TRAIN = TrainConfig(
    model=ModelConfig(width=64, embed_dim=32), steps=400, log_every=100, checkpoint_every=200
)


@pytest.fixture
def analyses(monkeypatch) -> list[Counter]:
    """jax's monitoring events (traces, compilations) of each analysis of a model state."""
    events, analyse = [], interp.analyse

    def counted(*args, **kwargs):
        counts = Counter()
        listen = lambda event, duration_secs, **kw: counts.update([event])
        jax.monitoring.register_event_duration_secs_listener(listen)
        try:
            return analyse(*args, **kwargs)
        finally:
            jax.monitoring.unregister_event_duration_listener(listen)
            events.append(counts)

    monkeypatch.setattr(interp, "analyse", counted)
    return events


def compiled_after_the_first(analyses: list[Counter]) -> list[int]:
    """Traces and compilations of every analysis but the first: the engine's programs take the
    model state as an argument, so every later state (and run) reuses them."""
    events = (
        "/jax/core/compile/jaxpr_trace_duration",
        "/jax/core/compile/backend_compile_duration",
    )
    return [sum(a[e] for e in events) for a in analyses[1:]]


def test_path_ends_join_two_different_known_classes():
    data = load_open_set(DataConfig())
    x0, x1, classes = sample_path_ends(data, 30, seed=0)
    assert x0.shape == x1.shape == (30, 8, 8, 1)
    assert np.all(classes[:, 0] != classes[:, 1])
    lookup = {x.tobytes(): y for x, y in zip(*data.known_test, strict=True)}
    assert [lookup[x.tobytes()] for x in x0] == list(classes[:, 0])
    assert [lookup[x.tobytes()] for x in x1] == list(classes[:, 1])


@pytest.mark.slow
def test_interp_end_to_end_shows_the_papers_claim(tmp_path, capsys, analyses):
    args = [
        "--steps",
        "400",
        "--log-every",
        "100",
        "--checkpoint-every",
        "200",
        "--width",
        "64",
        "--embed-dim",
        "32",
        "--num-paths",
        "12",
        "--num-points",
        "7",
        "--num-resamples",
        "200",
        "--workdir",
        str(tmp_path),
    ]
    results = main(args)
    out = capsys.readouterr().out
    for name in ("results.json", "hist.png", "interp.png"):
        assert (tmp_path / name).stat().st_size > 0
        assert f"wrote {tmp_path / name}" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["split"]["known_classes"] == [0, 1, 2, 3, 4, 5]
    before, after = saved["before_training"], saved["after_training"]
    assert after["mean_norm_unknown"] > after["mean_norm_known"]
    jnd_before = before["jacobian_norm_difference"]["estimate"]
    jnd_after = after["jacobian_norm_difference"]
    assert jnd_after["estimate"] > jnd_before
    assert jnd_after["low"] <= jnd_after["estimate"] <= jnd_after["high"]
    assert len(after["path_profile"]["mean"]) == 7
    assert results["after_training"] == after
    # re-running reuses the trained model and reproduces the analysis
    assert main(args)["after_training"] == after
    assert compiled_after_the_first(analyses) == [0, 0, 0]


# The smallest run that still trains and analyses: 20 steps of a 16-wide MLP, 8-d embedding.
TINY_ARGS = ["--steps", "20", "--log-every", "20", "--checkpoint-every", "20", "--width", "16"]
TINY_ARGS += ["--embed-dim", "8", "--num-paths", "2", "--num-points", "3", "--num-resamples", "50"]


@pytest.mark.slow
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))  # exact: the paper's-claim test
def test_every_estimator_runs_end_to_end_with_its_default_probes(tmp_path, estimator, analyses):
    args = [*TINY_ARGS, "--estimator", estimator, "--num-probes", "4", "--workdir", str(tmp_path)]
    results = main(args)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["estimator"] == results["estimator"] == estimator
    for stage in ("before_training", "after_training"):
        r = saved[stage]
        numbers = [r["mean_norm_known"], r["mean_norm_unknown"], r["mean_path_length"]]
        assert np.all(np.isfinite(numbers)) and len(r["path_profile"]["mean"]) == 3
    assert compiled_after_the_first(analyses) == [0]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(estimator="magic"), "--estimator must be one of exact, hutchinson, xnystrace"),
        (
            dict(estimator="xnystrace", probes="rademacher"),
            "--probes must be one of gaussian, sphere with --estimator xnystrace (unset: gaussian)",
        ),
        (dict(estimator="hutchinson", probes="uniform"), "--probes must be one of rademacher"),
        (dict(estimator="xnystrace", num_probes=1), "--num-probes must be >= 2"),
        (dict(num_points=1), "--num-points must be >= 2"),
    ],
)
def test_bad_settings_are_refused_before_anything_runs(tmp_path, capsys, settings, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        InterpConfig(train=TINY_TRAIN, **settings)
    workdir = tmp_path / "run"
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    with pytest.raises(SystemExit) as exit_:
        main([*flags, "--workdir", str(workdir)])
    assert exit_.value.code == 2
    boxed = capsys.readouterr().err  # tyro's parse-error box, wrapped at the terminal width
    assert message in " ".join(boxed.replace("│", " ").split())
    assert not workdir.exists()


def test_too_many_probes_for_the_embedding_are_refused_before_training(tmp_path, monkeypatch):
    def fit(*args, **kwargs):
        raise AssertionError("training started")

    monkeypatch.setattr(interp, "fit", fit)
    config = InterpConfig(train=TINY_TRAIN, estimator="xnystrace", num_probes=33)  # d_z = 32
    with pytest.raises(ValueError, match=r"xnystrace needs num_probes <= 32 \(the output dim"):
        interp.run(config, tmp_path)
