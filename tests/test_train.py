"""Training: the acceptance run on digits; kills at deterministic points (JACOSR_FAULT) and
resumption to bit-identical parameters and logs; workdir rules, config validation, damaged and
foreign checkpoints, a full disk, a read-only workdir; divergence; the CLI; every loss and
technique through the CLI; the rotation task and on-device augmentation; results.json that
only grows; load_run at any step without the data set; the runs in a workdir.

The runs share one uninterrupted reference run (module fixture, 120 steps of the small MLP)
and copy its workdir where they need a trained one. No test waits on time or machine speed."""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_checkpoint import corrupt

from jacosr import runs, train
from jacosr import step as step_programs
from jacosr.checkpoint import (
    FAULT_ENV,
    TMP_SUFFIX,
    CheckpointStore,
    DamagedCheckpointError,
    DamagedCheckpointWarning,
)
from jacosr.config import from_dict, to_dict
from jacosr.data import DataConfig, LabelledSource, load_open_set, open_set_split
from jacosr.evaluate import EvalConfig, evaluate
from jacosr.losses import LOSSES, LossConfig, loss_rotation, per_sample_loss
from jacosr.models import ModelConfig, apply_model
from jacosr.recipe import ResolvedTrainConfig, TrainConfig, resolve
from jacosr.runs import find_runs, load_run
from jacosr.step import (
    batch_indices,
    init_train_state,
    make_objective,
    make_train_dispatch,
    rotated_copies,
)
from jacosr.train import Every, NonFiniteLossError, fit, main
from jacosr.workdir import WorkdirBusyError, WorkdirError, open_workdir

TINY = TrainConfig(
    model=ModelConfig(width=32, embed_dim=16), steps=120, log_every=20, checkpoint_every=40
)
TINY_FLAGS = [
    *("--width", "32", "--embed-dim", "16"),
    *("--steps", "120", "--log-every", "20", "--checkpoint-every", "40"),
]
STEPS = list(range(20, 121, 20))


@pytest.fixture(scope="module")
def data():
    return load_open_set(TINY.data)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data):
    """``(workdir, model leaves)`` of TINY trained without interruption (checkpoints 40, 80,
    120; no results.json)."""
    workdir = tmp_path_factory.mktemp("reference")
    _, model = fit(TINY, data, workdir, progress=False)
    return workdir, _leaves(model)


@pytest.fixture
def trained(reference, tmp_path) -> Path:
    """A copy of the reference workdir to damage."""
    return Path(shutil.copytree(reference[0], tmp_path / "run"))


def _leaves(model) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(model)]


def _assert_same_model(model, reference) -> None:
    for a, b in zip(_leaves(model), reference[1], strict=True):
        np.testing.assert_array_equal(a, b)


def _log(workdir: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]


# `python -m jacosr.train` under a file-size limit (set here, not in a preexec_fn, which would
# fork the multithreaded test process); Python ignores SIGXFSZ, so a write past it fails with
# EFBIG ("File too large").
LIMITED = """
import resource, runpy, sys
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv[0] = "jacosr.train"
runpy.run_module("jacosr.train", run_name="__main__", alter_sys=True)
"""


def _cli(workdir: Path, *flags: str, env=None, file_size_limit=None) -> subprocess.CompletedProcess:
    """``python -m jacosr.train`` on TINY in a fresh process."""
    args = [*TINY_FLAGS, *flags, "--workdir", str(workdir)]
    if file_size_limit is None:
        command = [sys.executable, "-m", "jacosr.train", *args]
    else:
        command = [sys.executable, "-c", LIMITED, str(file_size_limit), *args]
    return subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


def _strays(workdir: Path) -> list[Path]:
    return list((workdir / "checkpoints").glob(f"*{TMP_SUFFIX}*"))


@pytest.mark.slow
def test_acceptance_digits_movr_2000_steps(digits_run):
    """The defaults (digits, known [0..5], seed 0, m-OvR) for 2000 steps: the suite's shared
    run, trained by ``jacosr.train.run`` (tests/conftest.py)."""
    workdir, results = digits_run
    config = TrainConfig(steps=2000)
    assert config.data.known == (0, 1, 2, 3, 4, 5) and config.loss.loss == "movr"
    assert results.accuracy >= 0.97
    assert results.scores["loss"]["auroc"] >= 0.85
    saved = json.loads((workdir / "results.json").read_text())
    assert saved["split"]["known_classes"] == [0, 1, 2, 3, 4, 5]
    assert saved["scores"] == results.scores
    assert saved["config"] == to_dict(resolve(config))
    assert saved["config"]["augment"] == "none" and saved["config"]["self_sup"] == 0.0
    log = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(100, 2001, 100))


def test_batches_are_a_function_of_the_step():
    key = jax.random.key(3)
    a = np.asarray(batch_indices(key, np.int32(7), 100, 32))
    b = np.asarray(batch_indices(key, np.int32(7), 100, 32))
    np.testing.assert_array_equal(a, b)
    # within one epoch the batches are disjoint
    epoch = np.concatenate([np.asarray(batch_indices(key, np.int32(s), 100, 32)) for s in range(3)])
    assert len(np.unique(epoch)) == 96


@pytest.mark.parametrize(
    "fault, checkpoints, stray",
    [
        ("after-step:60", [40], False),  # between checkpoints 40 and 80
        ("during-save:80", [40], True),  # checkpoint 80's data written, not yet committed
        ("after-save:80", [40, 80], False),  # checkpoint 80 committed
    ],
)
def test_sigkill_then_resume_equals_uninterrupted(
    fault, checkpoints, stray, reference, data, tmp_path
):
    killed = _cli(tmp_path, env={FAULT_ENV: fault})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with CheckpointStore(tmp_path, read_only=True) as store:
        assert store.steps() == checkpoints
    assert bool(_strays(tmp_path)) == stray
    assert [r["step"] for r in _log(tmp_path)] == list(range(20, int(fault.split(":")[1]) + 1, 20))
    assert not (tmp_path / "results.json").exists()

    _, model = fit(TINY, data, tmp_path, progress=False)  # the same run again, no fault
    _assert_same_model(model, reference)
    assert _log(tmp_path) == _log(reference[0])  # no duplicated or missing line, same values
    assert not _strays(tmp_path)  # the killed save's temporary folder is gone


def test_log_and_model_do_not_depend_on_how_the_steps_are_dispatched(
    reference, data, tmp_path, monkeypatch
):
    traces = []

    def counting(*args, **kwargs):
        traces.append(1)
        return per_sample_loss(*args, **kwargs)

    monkeypatch.setattr(step_programs, "per_sample_loss", counting)  # once per trace of a step
    # Between checkpoints (40 steps) dispatches of 15, 15 and 10 steps: lines of 20 steps span
    # two dispatches, and the reference dispatched all 40 at once.
    _, model = fit(dataclasses.replace(TINY, dispatch_steps=15), data, tmp_path, progress=False)
    assert len(traces) == (1 if jax.default_backend() == "cpu" else 2)  # (+ the 15-step scan)
    log, expected = _log(tmp_path), _log(reference[0])
    assert [r["step"] for r in log] == STEPS
    assert [r["lr"] for r in log] == [r["lr"] for r in expected]
    # The same steps, dispatched otherwise: equal up to rounding (they are bit-equal with
    # jax 0.10 on CPU).
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose([r[key] for r in log], [r[key] for r in expected], rtol=1e-6)
    for a, b in zip(_leaves(model), reference[1], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    with CheckpointStore(tmp_path, read_only=True) as store:
        assert store.steps() == [40, 80, 120]


def test_a_dispatch_runs_any_number_of_steps_with_at_most_two_programs(data, monkeypatch):
    traces = []

    def counting(*args, **kwargs):
        traces.append(1)
        return per_sample_loss(*args, **kwargs)

    monkeypatch.setattr(step_programs, "per_sample_loss", counting)  # once per trace of a step
    config = resolve(dataclasses.replace(TINY, dispatch_steps=4))
    graphdef, _ = init_train_state(config, data)
    dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
    x, y = data.known_train.x, data.known_train.y
    at_once, (loss, accuracy, finite) = dispatch(init_train_state(config, data)[1], x, y, 4)
    assert loss.shape == accuracy.shape == finite.shape == (4,) and finite.all()
    state, losses = init_train_state(config, data)[1], []
    for n in (1, 2, 1, 3, 2):  # lengths 1 to 3 share one program (on CPU, with length 4)
        state, (part, _, _) = dispatch(state, x, y, n)
        assert part.shape == (n,)
        losses.append(part)
    assert len(traces) == (1 if jax.default_backend() == "cpu" else 2)
    assert int(state.step) == 9 and int(at_once.step) == 4
    np.testing.assert_allclose(np.concatenate(losses)[:4], loss, rtol=1e-6)
    with pytest.raises(ValueError, match=r"runs 1 to dispatch_steps \(4\) steps, not 5"):
        dispatch(state, x, y, 5)


def test_the_seeds_of_a_grid_share_the_compiled_step(data, monkeypatch):
    traces = []

    def counting(*args, **kwargs):
        traces.append(1)
        return per_sample_loss(*args, **kwargs)

    monkeypatch.setattr(step_programs, "per_sample_loss", counting)  # once per trace of a step
    config = resolve(dataclasses.replace(TINY, dispatch_steps=3))
    graphdef, _ = init_train_state(config, data)
    x, y = data.known_train.x, data.known_train.y
    finals = []
    for seed in (5, 6):
        seeded = dataclasses.replace(config, seed=seed)
        dispatch = make_train_dispatch(graphdef, seeded, len(y))
        state, _ = dispatch(init_train_state(seeded, data)[1], x, y, 2)
        finals.append(_leaves(state.model))
    assert len(traces) == 1  # the second seed traced (and compiled) nothing
    assert any(not np.array_equal(a, b) for a, b in zip(*finals, strict=True))  # other batches


def test_rerun_of_a_finished_run_only_reads_it(trained, data, reference):
    before = {p: p.stat().st_mtime_ns for p in trained.rglob("*")}
    _, model = fit(TINY, data, trained, progress=False)
    _assert_same_model(model, reference)
    assert {p: p.stat().st_mtime_ns for p in trained.rglob("*")} == before


KEPT = r"deleted the old run in .* but kept what jacosr did not write there: "


def test_different_config_is_refused_unless_overwrite_which_keeps_user_files(trained, data):
    (trained / "notes.md").write_text("my notes")
    (trained / "checkpoints" / "MY_NOTES.txt").write_text("notes on the old run")
    other = TrainConfig(**{**TINY.__dict__, "lr": 0.05, "steps": 40})
    refused = r"different config \(lr: 0.1 -> 0.05; steps: 120 -> 40\).*--overwrite"
    with pytest.raises(WorkdirError, match=refused):
        fit(other, data, trained, progress=False)
    with pytest.warns(UserWarning, match=KEPT + r"checkpoints/MY_NOTES.txt; move or delete"):
        fit(other, data, trained, overwrite=True, progress=False)
    assert json.loads((trained / "config.json").read_text())["lr"] == 0.05
    assert [r["step"] for r in _log(trained)] == [20, 40]
    with CheckpointStore(trained, read_only=True) as store:
        assert store.steps() == [40]  # the old run's checkpoints are gone
    assert (trained / "notes.md").read_text() == "my notes"
    assert (trained / "checkpoints" / "MY_NOTES.txt").read_text() == "notes on the old run"


def test_a_workdir_held_by_another_run_is_refused(trained, data):
    stamp = (trained / "metrics.jsonl").read_text()
    config = runs.run_identity(resolve(TINY), data)
    with open_workdir(trained, config, outputs=()):  # holds the lock, as a running run does
        with pytest.raises(WorkdirBusyError, match=r"in use by another jacosr process"):
            fit(TINY, data, trained, progress=False)
    assert (trained / "metrics.jsonl").read_text() == stamp


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("steps", 0, r"--steps must be >= 1; got 0"),
        ("batch_size", 0, r"--batch-size must be >= 1; got 0"),
        ("log_every", 0, r"--log-every must be >= 1; got 0"),
        ("dispatch_steps", 0, r"--dispatch-steps must be >= 1; got 0"),
        ("checkpoint_every", 0, r"--checkpoint-every must be a positive multiple of --log-every"),
        (
            "checkpoint_every",
            150,
            r"--checkpoint-every must be a positive multiple of --log-every \(100\); got 1",
        ),
        ("keep_checkpoints", 0, r"--keep-checkpoints must be >= 1; got 0"),
        ("lr", 0.0, r"--lr must be > 0"),
        ("lr", float("nan"), r"--lr must be > 0"),
        ("lr_min", 0.2, r"--lr-min must be between 0 and --lr \(0.1\)"),
        ("lr_min", -1e-5, r"--lr-min must be between 0"),
        ("momentum", 1.0, r"--momentum must be in \[0, 1\); got 1.0"),
        ("weight_decay", -1e-3, r"--weight-decay must be >= 0"),
        ("self_sup", -1.0, r"--self-sup must be >= 0"),
        ("augment", "heavy", r"unknown augmentation 'heavy'; valid .*weak"),
    ],
)
def test_bad_config_values_are_refused_when_built(field, value, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_bad_flag_leaves_no_workdir_and_the_corrected_command_works(tmp_path, capsys):
    workdir = tmp_path / "run"
    flags = [*TINY_FLAGS, "--steps", "40", "--scores", "loss", "--workdir", str(workdir)]
    bad_flags = (["--keep-checkpoints", "0"], ["--batch-size", "0"], ["--lr", "0"])
    for bad in (*bad_flags, ["--scores", "odin"]):  # an unknown score: before training too
        with pytest.raises(SystemExit):
            main([*flags, *bad])
        assert f"{bad[0]} must be" in capsys.readouterr().err
        assert not workdir.exists()
    data = load_open_set(DataConfig())
    with pytest.raises(ValueError, match=r"fewer than batch_size 4096; lower --batch-size"):
        fit(TrainConfig(batch_size=4096), data, workdir)  # needs the data: checked before too
    assert not workdir.exists()
    main([*flags, "--keep-checkpoints", "1"])
    with CheckpointStore(workdir, read_only=True) as store:
        assert store.steps() == [40]


def test_a_corrupt_newest_checkpoint_is_skipped_and_retrained(trained, data, reference):
    corrupt(trained / "checkpoints" / "120")
    warned = r"checkpoint 120 in .* is damaged \(.*\); using checkpoint 80, the newest intact"
    with pytest.warns(DamagedCheckpointWarning, match=warned):
        _, model = fit(TINY, data, trained, progress=False)
    _assert_same_model(model, reference)
    assert _log(trained) == _log(reference[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DamagedCheckpointWarning)  # 120 is intact again
        load_run(trained)


def test_no_intact_checkpoint_is_an_error_and_overwrite_starts_again(trained, data, reference):
    for step in (40, 80, 120):
        corrupt(trained / "checkpoints" / str(step))
    (trained / "checkpoints" / "MY_NOTES.txt").write_text("mine")
    refused = r"no intact checkpoint in .*checkpoint 120: .*checkpoint 40: .*; pass --overwrite"
    with pytest.raises(DamagedCheckpointError, match=refused):
        fit(TINY, data, trained, progress=False)
    with pytest.warns(UserWarning, match=KEPT + r"checkpoints/MY_NOTES.txt;"):
        _, model = fit(TINY, data, trained, overwrite=True, progress=False)
    _assert_same_model(model, reference)
    assert (trained / "checkpoints" / "MY_NOTES.txt").read_text() == "mine"


def test_load_run_restores_only_verified_state(trained):
    corrupt(trained / "checkpoints" / "120")
    with pytest.warns(DamagedCheckpointWarning, match=r"using checkpoint 80"):
        config, _, _, model = load_run(trained)
    assert config == resolve(TINY) and type(config) is ResolvedTrainConfig
    assert all(np.isfinite(x).all() for x in _leaves(model))


def test_a_checkpoint_is_never_restored_under_another_config(trained, data, reference):
    (trained / "config.json").unlink()
    other = TrainConfig(**{**TINY.__dict__, "lr": 0.05})
    refused = (
        r"checkpoint 120 in .* was saved by a run with another config \(lr: 0.1 -> 0.05\); "
        r"choose another --workdir, or pass --overwrite"
    )
    with pytest.raises(WorkdirError, match=refused):
        fit(other, data, trained, progress=False)
    assert not (trained / "config.json").exists()  # left as it was found
    _, model = fit(TINY, data, trained, progress=False)  # the right flags resume it
    _assert_same_model(model, reference)
    assert json.loads((trained / "config.json").read_text())["lr"] == 0.1


def test_a_partial_last_log_line_is_dropped(trained, data, reference):
    shutil.rmtree(trained / "checkpoints" / "120")  # killed after writing step 120's log line
    with (trained / "metrics.jsonl").open("a") as log:
        log.write('{"step": 140, "loss": 0.0')  # ... and while writing another
    _, model = fit(TINY, data, trained, progress=False)
    _assert_same_model(model, reference)
    assert _log(trained) == _log(reference[0])


def test_a_failed_checkpoint_write_is_one_clear_error(trained, data, reference):
    for step in (80, 120):  # the run was killed after checkpoint 40
        shutil.rmtree(trained / "checkpoints" / str(step))
    # 4 KiB: room for the log and the config, not for a checkpoint's files
    out = _cli(trained, file_size_limit=4096)
    assert out.returncode == 2
    # The error is one line, the only one besides the progress bar: what Orbax's writer threads
    # report (absl logs, asyncio's errors, ignored exceptions: pages of tracebacks) is dropped.
    lines = [x for x in out.stderr.replace("\r", "\n").splitlines() if x and "train:" not in x]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-3000:]
    last = lines[0]
    checkpoints = trained.absolute() / "checkpoints"
    # which of the checkpoint's files fails first varies (Orbax writes them concurrently)
    assert last.startswith(
        f"error: could not write checkpoint 80 to {checkpoints}: File too large"
    ), out.stderr[-3000:]
    assert last.endswith(
        f"; the last good checkpoint (step 40) in {checkpoints} is intact (verified); make room "
        "(free disk space, or raise the file-size limit) and re-run the same command to resume"
    )
    _, model = fit(TINY, data, trained, progress=False)  # with room again, it resumes
    _assert_same_model(model, reference)
    assert _log(trained) == _log(reference[0])
    assert not _strays(trained)


def test_a_read_only_finished_workdir_is_re_evaluated(trained):
    (trained / "results.json").write_text('{"old": "results"}')
    before = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in trained.rglob("*")}
    modes = {p: p.stat().st_mode for p in [trained, *trained.rglob("*")]}
    for path in modes:
        path.chmod(path.stat().st_mode & ~0o222)
    try:
        # chmod does not stop root; a file-size limit of 0 bytes fails every write for anyone
        out = _cli(trained, "--scores", "loss", file_size_limit=0)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "closed-set accuracy" in out.stdout and "auroc" in out.stdout
    assert "wrote" not in out.stdout  # not after the warning that it could not
    warning = [line for line in out.stderr.splitlines() if "could not write" in line]
    assert len(warning) == 1 and warning[0].endswith("the results above are not saved")
    assert f"could not write {trained / 'results.json'}: " in warning[0]
    after = {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in trained.rglob("*")}
    assert after == before  # nothing written, created or deleted


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
    diverged = r"diverged at step (\d+).*is intact \(verified\)"
    with pytest.raises(NonFiniteLossError, match=diverged) as err:
        fit(config, data, tmp_path, progress=False)
    bad_step = int(err.value.args[0].split("step ")[1].split(":")[0])
    _, template = init_train_state(resolve(config), data)
    with CheckpointStore(tmp_path, read_only=True) as store:
        last, state, saved_config, damaged = store.newest_intact(template)
    assert last <= bad_step and f"(step {last})" in err.value.args[0] and not damaged
    assert int(state.step) == last
    assert saved_config["lr"] == 10.0
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(state.model))


def test_load_run_errors_on_non_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no config\.json; is it a jacosr workdir"):
        load_run(tmp_path)


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
    assert results.config["loss"]["loss"] == loss
    if "--augment" not in techniques:  # 60 steps on 8x8 digits shifted by 4 px learn little
        assert results.accuracy > 0.5  # 6 known classes: chance is 1/6
    out = capsys.readouterr().out
    assert "closed-set accuracy" in out and "auroc" in out and "openmax" in out
    # what it ran on: printed before training, recorded in results.json
    assert f"on 1 cpu device (cpu) in 1 process; jax {jax.__version__}" in out
    assert results.hardware["devices"] == 1 and results.hardware["jax"] == jax.__version__


def test_rotated_copies_match_numpy_rot90():
    x = jax.random.normal(jax.random.key(0), (12, 5, 5, 2))
    turned, turns = rotated_copies(jax.random.key(1), x)
    turns = np.asarray(turns)
    assert set(turns) <= {0, 1, 2, 3} and len(set(turns)) > 1
    for b in range(12):
        np.testing.assert_array_equal(turned[b], np.rot90(np.asarray(x[b]), turns[b], axes=(0, 1)))


def test_techniques_default_per_data_set():
    digits = resolve(TrainConfig())
    assert type(digits) is ResolvedTrainConfig
    assert (digits.augment, digits.self_sup) == ("none", 0.0)
    cifar = resolve(TrainConfig(data=DataConfig(benchmark="cifar10")))
    assert (cifar.augment, cifar.self_sup) == ("weak", 0.1)
    chosen = resolve(TrainConfig(augment="strong", self_sup=0.3, lr=0.05))
    assert (chosen.augment, chosen.self_sup, chosen.lr) == ("strong", 0.3, 0.05)
    assert resolve(chosen) is chosen
    chosen_dict = {**to_dict(TrainConfig(lr=0.05)), "augment": "strong", "self_sup": 0.3}
    assert to_dict(chosen) == chosen_dict
    with pytest.raises(ValueError, match=r"unknown augmentation 'heavy'; valid .*weak"):
        resolve(TrainConfig(augment="heavy"))
    with pytest.raises(ValueError, match=r"--self-sup must be >= 0"):
        resolve(TrainConfig(self_sup=-1.0))


def test_a_resolved_config_stays_resolved():
    resolved = resolve(TrainConfig())
    again = dataclasses.replace(resolved, seed=3)
    assert type(again) is ResolvedTrainConfig and again.augment == "none"
    assert from_dict(ResolvedTrainConfig, to_dict(resolved)) == resolved  # config.json
    undecided = r"a ResolvedTrainConfig has a concrete augment and self_sup.*recipe\.resolve"
    with pytest.raises(ValueError, match=undecided):
        dataclasses.replace(resolved, augment="auto")
    with pytest.raises(ValueError, match=undecided):
        from_dict(ResolvedTrainConfig, {**to_dict(resolved), "self_sup": None})
    with pytest.raises(TypeError, match=r"missing 2 required keyword-only arguments"):
        ResolvedTrainConfig()


def test_every_gives_the_next_boundary():
    every = Every(7, 17)
    assert [every.after(s) for s in (0, 6, 7, 13, 14, 15, 16)] == [7, 7, 14, 14, 17, 17, 17]
    assert Every(5, 10).after(5) == 10  # last on a multiple


def test_rotation_task_needs_square_images(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 8, 6, 1)).astype(np.float32)
    y = np.repeat(np.arange(3), 100)
    data = open_set_split(LabelledSource("rect", x, y, x, y, 3), (0, 1))
    with pytest.raises(ValueError, match=r"square images, got 8x6; pass --self-sup 0"):
        fit(TrainConfig(self_sup=0.1, batch_size=32), data, tmp_path)


def test_objective_puts_rotated_copies_through_the_rotation_head_only():
    config = resolve(TrainConfig(model=ModelConfig(width=32, embed_dim=16), self_sup=0.25))
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
    np.testing.assert_allclose(accuracy, jnp.mean(jnp.argmax(upright.class_scores, -1) == y))


def test_augmentation_runs_inside_the_step_and_is_keyed():
    base = TrainConfig(model=ModelConfig(width=32, embed_dim=16), steps=5)
    data = load_open_set(base.data)

    def params_after(augment, repeats=1):
        config = resolve(TrainConfig(**{**base.__dict__, "augment": augment}))
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


# --- results.json, load_run, find_runs --------------------------------------------------------


def _no_data(*args, **kwargs):
    raise AssertionError("the data set was loaded")


def _no_evaluation(*args, **kwargs):
    raise AssertionError("the run was opened or evaluated again")


def test_results_only_grow_and_a_covered_run_is_read_back(trained, monkeypatch):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = train.run(TINY, trained, EvalConfig(scores=("loss",)), progress=False)
        both = train.run(TINY, trained, EvalConfig(scores=("msp",)), progress=False)
    assert not [w for w in caught if "settings" in str(w.message)]  # same settings: rows kept
    assert list(first.scores) == ["loss"] and first.eval["scores"] == ["loss"]
    assert list(both.scores) == ["loss", "msp"] and both.eval["scores"] == ["loss", "msp"]
    assert both.scores["loss"] == first.scores["loss"]  # kept, not dropped
    config, data, graphdef, model = load_run(trained)
    alone = evaluate(graphdef, model, data, config.loss, EvalConfig(scores=("msp",)))
    assert both.scores["msp"] == alone["scores"]["msp"]
    assert json.loads((trained / "results.json").read_text()) == both.to_json()
    # every score asked for is there: read back, nothing trained, evaluated or written
    stamp = (trained / "results.json").stat().st_mtime_ns
    monkeypatch.setattr(train, "evaluate", _no_evaluation)
    monkeypatch.setattr(train, "open_workdir", _no_evaluation)
    assert train.run(TINY, trained, EvalConfig(scores=("msp", "loss")), progress=False) == both
    assert (trained / "results.json").stat().st_mtime_ns == stamp


def test_other_evaluation_settings_evaluate_every_row_again(trained):
    train.run(TINY, trained, EvalConfig(scores=("loss", "msp")), progress=False)
    changed = EvalConfig(scores=("msp",), reject_rate=0.3)
    with pytest.warns(
        UserWarning,
        match=r"evaluation settings differ .* \(reject_rate: 0.1 -> 0.3\); evaluating all of "
        r"them again under the new ones \(loss, msp\)",
    ):
        results = train.run(TINY, trained, changed, progress=False)
    assert results.eval["reject_rate"] == 0.3 and list(results.scores) == ["loss", "msp"]
    config, data, graphdef, model = load_run(trained)
    expected = evaluate(graphdef, model, data, config.loss, EvalConfig(("loss", "msp"), 0.3))
    assert results.scores == expected["scores"]


def test_load_run_at_a_step_without_the_data_set(trained, monkeypatch):
    items = dict(state=ocp.args.StandardRestore(), model=ocp.args.JsonRestore())
    with ocp.CheckpointManager((trained / "checkpoints").absolute()) as manager:
        plain = manager.restore(40, args=ocp.args.Composite(**items))
    assert plain["model"]["image_shape"] == [8, 8, 1] and plain["model"]["num_known"] == 6
    monkeypatch.setattr(train, "load_open_set", _no_data)
    config, data, _, model = load_run(trained, step=40, data=False)
    assert data is None and config == resolve(TINY)
    expected = plain["state"]["model"]["params"]["head"]["prototypes"]["value"]
    np.testing.assert_array_equal(np.asarray(model.params["head"]["prototypes"][...]), expected)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint 50 in .*at steps \[40, 80, 120\]"):
        load_run(trained, step=50, data=False)


def test_load_run_names_a_damaged_step_and_the_intact_ones(trained):
    corrupt(trained / "checkpoints" / "80")
    with pytest.raises(
        DamagedCheckpointError,
        match=r"checkpoint 80 in .* is damaged \(state/\S+ is changed\); its intact checkpoints "
        r"are at steps \[40, 120\]$",
    ):
        load_run(trained, step=80, data=False)
    with pytest.raises(TypeError, match=r"step must be an int, .*\[40, 80, 120\]\); got '80'"):
        load_run(trained, step="80", data=False)


@pytest.mark.parametrize("garbage", ["{not json", "[1, 2]", '{"lr": 0.1, "colour": "red"}'])
def test_load_run_of_a_garbage_config_names_the_file_and_the_copy(trained, garbage):
    config_path = trained / "config.json"
    config_path.write_text(garbage)
    with pytest.raises(
        ValueError,
        match=rf"^{config_path} is not the config of a training run \(\w+: .*\); each checkpoint "
        r"keeps a copy of the run's config \(checkpoints/<step>/config/metadata\): copy one "
        r"over it$",
    ):
        load_run(trained, data=False)
    shutil.copy(trained / "checkpoints" / "120" / "config" / "metadata", config_path)
    assert load_run(trained, data=False)[0] == resolve(TINY)  # the fix the message gives


def test_load_run_of_a_checkpoint_without_the_model_item_loads_the_data(trained, reference):
    for step in (40, 80, 120):  # as saved before the item existed
        folder = trained / "checkpoints" / str(step)
        shutil.rmtree(folder / "model")
        digests = json.loads((folder / "sha256.json").read_text())
        kept = {k: v for k, v in digests.items() if not k.startswith("model/")}
        (folder / "sha256.json").write_text(json.dumps(kept))
    _, data, _, model = load_run(trained, data=False)
    assert data is not None  # needed to build the network
    _assert_same_model(model, reference)


def test_find_runs_in_a_run_and_in_an_experiments_workdir(tmp_path):
    for run in ("exp/train", "exp/runs/movr/seed0", "exp/runs/sce/seed1", "exp/seed3"):
        (tmp_path / run / "checkpoints" / "10").mkdir(parents=True)
        (tmp_path / run / "config.json").write_text("{}")
    (tmp_path / "exp" / "config.json").write_text("{}")  # the experiment's own: no checkpoints
    (tmp_path / "exp" / "notes").mkdir()
    found = [str(p.relative_to(tmp_path / "exp")) for p in find_runs(tmp_path / "exp")]
    assert found == ["runs/movr/seed0", "runs/sce/seed1", "seed3", "train"]
    assert find_runs(tmp_path / "exp" / "train") == [tmp_path / "exp" / "train"]
    assert find_runs(tmp_path / "exp" / "notes") == []
