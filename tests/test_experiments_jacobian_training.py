"""The Jacobian-training experiment end to end on a tiny config (the small MLP, 30 steps, 3
tracked steps on 32 + 32 samples, 2 seeds, one weight per term): the variants and their
configs, the series against the runs' own rows, the table, the figures, a re-run that trains
nothing, and the refused settings."""

import json

import numpy as np
import pytest
from helpers import refused

import jacosr.train
from jacosr.experiments.jacobian_training import main
from jacosr.runs import read_dynamics, read_results

TINY_FLAGS = [
    *("--width", "32", "--embed-dim", "16", "--steps", "30", "--log-every", "10"),
    *("--checkpoint-every", "30", "--track-points", "3", "--track-samples", "32"),
    *("--seeds", "2", "--known-weights", "0.1", "--open-weights", "0.1"),
]
VARIANTS = ["paper", "known0.1", "open0.1"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("jacobian-training")
    return workdir, main([*TINY_FLAGS, "--workdir", str(workdir)])


@pytest.mark.slow
def test_workdir_holds_every_variant_its_series_and_the_figures(experiment):
    workdir, results = experiment
    assert list(results["variants"]) == VARIANTS
    terms = {name: v["jacobian"] for name, v in results["variants"].items()}
    assert (terms["paper"]["jacobian_reg"], terms["paper"]["open_space_reg"]) == (0.0, 0.0)
    assert (terms["known0.1"]["jacobian_reg"], terms["known0.1"]["open_space_reg"]) == (0.1, 0.0)
    assert (terms["open0.1"]["jacobian_reg"], terms["open0.1"]["open_space_reg"]) == (0.0, 0.1)
    for name in VARIANTS:
        for seed in (0, 1):
            run = workdir / "runs" / name / f"seed{seed}"
            stored = json.loads((run / "config.json").read_text())
            assert (
                stored.get("jacobian", {}).get("jacobian_reg", 0.0) == terms[name]["jacobian_reg"]
            )
            rows = read_dynamics(run)
            series = results["variants"][name]
            assert series["steps"] == [row["step"] for row in rows] == [0, 1, 30]
            for key in ("jnd", "jnd_low", "jnd_high", "auroc_loss", "auroc_jacobian"):
                assert series["final"][key][seed] == rows[-1][key]
            # a run that uses a term reports its JND in its own results.json
            assert (read_results(run).jnd is not None) == (name != "paper")
        final = np.array(results["variants"][name]["final"]["auroc_msp"])
        assert np.all((0 <= final) & (final <= 1))
    table = (workdir / "jacobian_training.md").read_text()
    assert table == results["markdown"] and all(f"| {name} |" in table for name in VARIANTS)
    for png in ("jacobian_training.png", "jacobian_training_final.png"):
        assert (workdir / png).read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_rerun_trains_nothing_and_writes_the_same(experiment, monkeypatch):
    workdir, results = experiment

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(jacosr.train, "make_train_dispatch", refuse)
    assert main([*TINY_FLAGS, "--workdir", str(workdir)]) == results


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "1"], "--seeds must be >= 2"),
        (["--known-weights", "0", "0.1"], "--known-weights must be distinct weights > 0"),
        (["--open-weights", "0.1", "0.1"], "--open-weights must be distinct weights > 0"),
        (["--jacobian-reg", "0.1"], "--jacobian-reg/--open-space-reg must be 0 in the base run"),
        (["--track-points", "0"], "--track-points must be > 0"),
    ],
)
def test_bad_settings_are_refused_before_any_workdir(argv, message, tmp_path, capsys):
    assert message in refused(main, argv, tmp_path / "w", capsys)
