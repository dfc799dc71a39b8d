"""The interpolation experiment end to end on a tiny configuration, and its paper claims."""

import json

import numpy as np
import pytest

from jacosr.data import DataConfig, load_open_set
from jacosr.experiments.interp import InterpConfig, main, sample_path_ends
from jacosr.models import ModelConfig
from jacosr.train import TrainConfig

TINY_TRAIN = TrainConfig(
    model=ModelConfig(width=64, embed_dim=32), steps=400, log_every=100, checkpoint_every=200
)


def test_path_ends_join_two_different_known_classes():
    data = load_open_set(DataConfig())
    x0, x1, classes = sample_path_ends(data, 30, seed=0)
    assert x0.shape == x1.shape == (30, 8, 8, 1)
    assert np.all(classes[:, 0] != classes[:, 1])
    lookup = {x.tobytes(): y for x, y in zip(*data.known_test, strict=True)}
    assert [lookup[x.tobytes()] for x in x0] == list(classes[:, 0])
    assert [lookup[x.tobytes()] for x in x1] == list(classes[:, 1])


@pytest.mark.slow
def test_interp_end_to_end_shows_the_papers_claim(tmp_path, capsys):
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


def test_bad_estimator_name_is_a_clear_error(tmp_path):
    from jacosr.experiments.interp import run

    with pytest.raises(ValueError, match=r"unknown estimator 'magic'; valid choices are: exact"):
        run(InterpConfig(train=TINY_TRAIN, estimator="magic"), tmp_path)
