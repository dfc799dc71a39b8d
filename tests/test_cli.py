"""Every ``python -m jacosr...`` command, run in-process as ``__main__`` (runpy, no subprocess):
its --help lists its key flags and the --debug note, and an error ends it with one line and
status 2 (see jacosr.config.run_command); a refused config value stops it before any workdir."""

import runpy
import sys

import pytest

from jacosr.config import DEBUG_ENV, DEBUG_NOTE
from jacosr.data import DataNotPreparedError
from jacosr.experiments import losses_table
from jacosr.train import main as train_main

# Every command and flags its --help must list.
COMMANDS = {
    "jacosr.train": (
        "--dataset",
        "--known",
        "--unknown",
        "--data-dir",
        "--val-fraction",
        "--benchmark",
        "--loss",
        "--scale",
        "--margin-pos",
        "--margin-neg",
        "--temperature",
        "--weight-pl",
        "--backbone",
        "--embed-dim",
        "--width",
        "--steps",
        "--log-every",
        "--dispatch-steps",
        "--lr",
        "--weight-decay",
        "--augment",
        "--self-sup",
        "--scores",
        "--reject-rate",
        "--workdir",
        "--overwrite",
        "--coordinator-address",
        "--distributed-timeout",
        "--jacobian-reg",
        "--jacobian-reg-probes",
        "--open-space-reg",
    ),
    "jacosr.experiments.interp": ("--num-paths", "--estimator", "--num-probes", "--steps"),
    "jacosr.experiments.losses_table": (
        "--losses",
        "--seeds",
        "--steps",
        "--workdir",
        "--distributed-timeout",
    ),
    "jacosr.experiments.ablation": ("--rows", "--seeds", "--steps", "--workdir"),
    "jacosr.experiments.protocol_a": ("--benchmarks", "--splits", "--scores", "--backbone"),
    "jacosr.experiments.protocol_b": ("--ood", "--seeds", "--scores", "--reject-rate"),
    "jacosr.experiments.dynamics": ("--figure", "--seeds", "--track-points", "--steps"),
    "jacosr.experiments.loss_vs_norm": ("--seeds", "--max-samples", "--steps", "--backbone"),
    "jacosr.experiments.tsne": ("--losses", "--max-samples", "--perplexity", "--steps"),
    "jacosr.experiments.sensitivity": ("--sweeps", "--t-values", "--wd-values", "--seeds"),
    "jacosr.experiments.heatmap": ("--resolution", "--known", "--steps"),
    "jacosr.experiments.compare": ("--metrics", "--workdir"),
    "jacosr.experiments.known_classes": ("--ks", "--draws", "--benchmark", "--backbone", "--steps"),
    "jacosr.experiments.jnd_auroc": ("--methods", "--draws", "--runs", "--benchmark", "--steps"),
    "jacosr.experiments.jacobian_training": ("--known-weights", "--open-weights", "--seeds"),
    "jacosr.data.prepare": (
        "--data-dir",
        "--force",
        "--no-flip",
        "cifar10",
        "imagenet_resized/32x32",
    ),
}
# Commands that read no data set named on the command line: the heat map draws toy2d only,
# compare reads finished runs.
NO_DATA = {"jacosr.experiments.heatmap", "jacosr.experiments.compare"}

# Every experiment command (jacosr.experiments.command) and what its --workdir holds.
TABLE = "table.md, table.json, table.png and"
EXPERIMENTS = {
    "jacosr.experiments.interp": "results.json, hist.png, interp.png and the trained model "
    "(train/)",
    "jacosr.experiments.losses_table": f"{TABLE} the runs (runs/)",
    "jacosr.experiments.ablation": f"{TABLE} the runs (runs/)",
    "jacosr.experiments.protocol_a": f"{TABLE} the runs (runs/)",
    "jacosr.experiments.protocol_b": f"{TABLE} the models (seed<i>/)",
    "jacosr.experiments.dynamics": "results.json and <figure>.png and the tracked runs "
    "(runs/<variant>/seed<i>)",
    "jacosr.experiments.loss_vs_norm": "results.json, samples.npz, loss_vs_norm.png and the "
    "trained models (runs/)",
    "jacosr.experiments.tsne": "results.json, tsne.npz, tsne.png and the trained models (runs/)",
    "jacosr.experiments.heatmap": "results.json, heatmap.npz, heatmap.png and the trained model "
    "(train/)",
    "jacosr.experiments.sensitivity": "results.json, sensitivity.md, sensitivity.png and the "
    "runs (runs/<point>/seed<i>)",
    "jacosr.experiments.known_classes": "results.json, known_classes.md, known_classes.png and "
    "the runs (runs/K<k>/known<classes>)",
    "jacosr.experiments.jnd_auroc": "results.json, jnd_auroc.md, jnd_auroc.png and the runs it "
    "trains (runs/<method>/<data set>/<known set>)",
    "jacosr.experiments.jacobian_training": "results.json, jacobian_training.md, "
    "jacobian_training.png, jacobian_training_final.png and the runs (runs/<variant>/seed<i>)",
}

# Re-running a module that is already imported as __main__ is what this file means to do.
pytestmark = pytest.mark.filterwarnings("ignore:.*found in sys.modules:RuntimeWarning")


def run_as_main(module: str, argv: list[str], monkeypatch) -> None:
    """``python -m <module> <argv>``, in this process."""
    monkeypatch.setattr(sys, "argv", [module, *argv])
    runpy.run_module(module, run_name="__main__", alter_sys=True)


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_lists_the_key_flags_and_the_debug_note(module, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_as_main(module, ["--help"], monkeypatch)
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m {module} ")
    for flag in COMMANDS[module]:
        assert flag in out, f"{module} --help lacks {flag}"
    assert " ".join(DEBUG_NOTE.split()) in " ".join(out.split())  # as wrapped on screen


@pytest.mark.parametrize("module", sorted(EXPERIMENTS))
def test_experiment_help_says_what_workdir_holds_and_what_overwrite_deletes(
    module, monkeypatch, capsys
):
    with pytest.raises(SystemExit):
        run_as_main(module, ["--help"], monkeypatch)
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())  # unwrapped, unboxed
    assert f"--workdir PATH where {EXPERIMENTS[module]} go;" in out
    assert "--log-every INT" in out and "--dispatch-steps INT" in out  # the training run's
    assert "Deletes only what jacosr wrote there and in the runs below it" in out
    assert "nothing while another jacosr process uses workdir" in out


def _not_prepared_argv(module: str, data_dir: str) -> list[str]:
    """Arguments with which ``module`` stops on data that is not there (an image source in an
    empty data directory), after parsing and before any training."""
    if module == "jacosr.data.prepare":
        return ["lsun_crop", "--data-dir", data_dir]
    workdir = ["--workdir", f"{data_dir}/workdir"]
    if module in ("jacosr.experiments.protocol_a", "jacosr.experiments.protocol_b"):
        return ["--data-dir", data_dir, *workdir]  # the benchmark's CIFAR10 is missing
    return ["--dataset", "lsun_crop", "--data-dir", data_dir, *workdir]


@pytest.mark.parametrize("module", sorted(set(COMMANDS) - NO_DATA))
def test_an_error_is_one_line_with_status_2(module, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_as_main(module, _not_prepared_argv(module, str(tmp_path)), monkeypatch)
    assert exit_.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]  # progress bars may come before it
    assert last.startswith("error: ")
    assert "not prepared" in last and f"--data-dir {tmp_path}`" in last
    assert "Traceback" not in last


def test_debug_flag_keeps_the_traceback(tmp_path, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    argv = ["--debug", *_not_prepared_argv("jacosr.data.prepare", str(tmp_path))]
    with pytest.raises(DataNotPreparedError, match="lsun_crop is not prepared"):
        run_as_main("jacosr.data.prepare", argv, monkeypatch)


@pytest.mark.parametrize(
    ("main", "argv", "message"),
    [
        (
            train_main,
            ["--margin-pos", "4"],
            "--margin-pos must be an angle in [0, pi) radians (0: no margin); got 4.0",
        ),
        (train_main, ["--width", "0"], "--width must be >= 1; got 0"),
        (train_main, ["--reject-rate", "1"], "--reject-rate must be a fraction in [0, 1)"),
        (losses_table.main, ["--val-fraction", "1"], "--val-fraction must be a fraction in [0, 1)"),
        (
            train_main,
            ["--distributed", "on", "--coordinator-address", "nohostport"],
            "--coordinator-address must be host:port, process 0's machine and a port in 1 .. "
            "65535 (e.g. localhost:12345 or 10.0.0.1:12345); got 'nohostport'",
        ),
        (
            losses_table.main,
            ["--distributed", "on", "--distributed-timeout", "0"],
            "--distributed-timeout must be >= 1; got 0",
        ),
    ],
)
def test_a_refused_value_stops_the_command_before_any_workdir(
    main, argv, message, tmp_path, capsys
):
    workdir = tmp_path / "workdir"
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--workdir", str(workdir)])
    assert exit_.value.code == 2
    boxed = capsys.readouterr().err  # tyro's parse-error box, wrapped at the terminal width
    assert message in " ".join(boxed.replace("│", " ").split())
    assert not workdir.exists()
