"""Workdirs: the marker, the lock (in-process, across processes, after SIGKILL), the overwrite
rule (only what jacosr wrote, nested sub-workdirs included; never user files or unmarked
folders), config checks. Pure Python: no jax, every test well under a second."""

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from jacosr.workdir import MARKER, OutputFolder, WorkdirBusyError, WorkdirError, open_workdir

STEPS = r"\d+(\.tmp)?"  # a step folder, or the temporary folder of one being written
OUT = (OutputFolder("checkpoints", STEPS), "metrics.jsonl", "results.json")
NAMES = ("checkpoints", "metrics.jsonl", "results.json")
KEPT = r"deleted the old run in .* but kept what jacosr did not write there: "
A = {"lr": 0.1, "model": {"width": 32}, "known": [0, 1]}
B = {"lr": 0.05, "model": {"width": 32}, "known": [0, 1]}


def _fake_run(path: Path, config: dict, outputs=OUT) -> None:
    """Open ``path`` as a run and write its outputs, as a training run would."""
    with open_workdir(path, config, outputs=outputs) as wd:
        for name in wd.outputs:
            if name == "checkpoints":
                (wd.path / name / "40").mkdir(parents=True)
                (wd.path / name / "40" / "data").write_text("state")
            else:
                (wd.path / name).write_text("jacosr")


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_new_workdir_gets_marker_and_config_and_reopens(tmp_path):
    path = tmp_path / "a" / "b"
    with open_workdir(path, A, outputs=OUT) as wd:
        assert wd.wrote_config and wd.path == path
    marker = json.loads((path / MARKER).read_text())
    assert marker == {
        "written_by": "jacosr",
        "outputs": sorted(NAMES),
        "folders": {"checkpoints": STEPS},
    }
    assert json.loads((path / "config.json").read_text()) == A
    stamp = (path / "config.json").stat().st_mtime_ns
    with open_workdir(path, {**A, "known": (0, 1)}, outputs=OUT) as wd:  # tuples == lists
        assert not wd.wrote_config
    assert (path / "config.json").stat().st_mtime_ns == stamp  # not rewritten


def test_an_empty_existing_folder_is_accepted(tmp_path):
    with open_workdir(tmp_path, A, outputs=OUT):
        pass
    assert (tmp_path / MARKER).exists()


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_folder_jacosr_did_not_make_is_refused_and_untouched(tmp_path, overwrite):
    (tmp_path / "config.json").write_text(json.dumps(B))  # looks like a workdir, is not one
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "checkpoints").mkdir()
    before = _tree(tmp_path)
    with pytest.raises(WorkdirError, match=r"is not empty and jacosr did not make it.*even with"):
        with open_workdir(tmp_path, A, outputs=OUT, overwrite=overwrite):
            pass
    assert _tree(tmp_path) == before
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(WorkdirError, match=r"exists and is not a folder"):
        with open_workdir(tmp_path / "f", A, outputs=OUT):
            pass


def test_a_different_config_is_refused_unless_overwrite_which_keeps_user_files(tmp_path):
    _fake_run(tmp_path, A)
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "fig.png").write_text("mine too")
    before = _tree(tmp_path)
    with pytest.raises(WorkdirError, match=r"different config \(lr: 0.1 -> 0.05\).*--overwrite"):
        with open_workdir(tmp_path, B, outputs=OUT):
            pass
    assert _tree(tmp_path) == before
    with open_workdir(tmp_path, B, outputs=OUT, overwrite=True) as wd:
        assert wd.wrote_config
    assert _tree(tmp_path) == {MARKER, "config.json", "notes.txt", "plots", "plots/fig.png"}
    assert json.loads((tmp_path / "config.json").read_text()) == B


def test_overwrite_of_an_experiment_clears_marked_sub_workdirs_only(tmp_path):
    table = ("table.md", "table.png")
    _fake_run(tmp_path, A, outputs=table)
    _fake_run(tmp_path / "runs" / "x" / "seed0", {"seed": 0})
    _fake_run(tmp_path / "runs" / "x" / "seed1", {"seed": 1})
    _fake_run(tmp_path / "runs" / "y" / "seed0", {"seed": 0})
    (tmp_path / "runs" / "y" / "seed0" / "my_analysis.py").write_text("mine")
    mine = tmp_path / "runs" / "mine"  # the user's own run folder, config.json and all
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    (mine / "metrics.jsonl").write_text("mine")
    (tmp_path / "runs" / "empty_by_user").mkdir()
    with pytest.warns(UserWarning, match=KEPT + r"runs/y/seed0/my_analysis.py; move or"):
        with open_workdir(tmp_path, B, outputs=table, overwrite=True):
            pass
    assert _tree(tmp_path) == {
        MARKER,
        "config.json",
        "runs",
        "runs/y",
        "runs/y/seed0",
        "runs/y/seed0/my_analysis.py",
        "runs/mine",
        "runs/mine/config.json",
        "runs/mine/metrics.jsonl",
        "runs/empty_by_user",
    }


def test_overwrite_keeps_and_names_the_users_files_in_an_output_folder(tmp_path):
    _fake_run(tmp_path, A)
    checkpoints = tmp_path / "checkpoints"
    (checkpoints / "80.tmp").mkdir()  # a save in progress when the old run was killed
    (checkpoints / "MY_NOTES.txt").write_text("mine")
    (checkpoints / "40_best").mkdir()  # a name like a step's, but not one
    with pytest.warns(UserWarning, match=KEPT + r"checkpoints/40_best, checkpoints/MY_NOTES.txt;"):
        with open_workdir(tmp_path, B, outputs=OUT, overwrite=True):
            pass
    assert _tree(tmp_path) == {
        MARKER,
        "config.json",
        "checkpoints",
        "checkpoints/MY_NOTES.txt",
        "checkpoints/40_best",
    }
    assert (checkpoints / "MY_NOTES.txt").read_text() == "mine"


def test_clearing_an_open_workdir_keeps_and_names_the_users_files_too(tmp_path):
    """The path a training run takes when its checkpoints turn out to be of another run."""
    _fake_run(tmp_path, A)
    (tmp_path / "checkpoints" / "MY_NOTES.txt").write_text("mine")
    with open_workdir(tmp_path, A, outputs=OUT) as wd:
        with pytest.warns(UserWarning, match=KEPT + r"checkpoints/MY_NOTES.txt;"):
            wd.clear()
    assert _tree(tmp_path) == {MARKER, "config.json", "checkpoints", "checkpoints/MY_NOTES.txt"}


def test_an_output_folder_of_a_sub_workdir_is_cleared_as_its_marker_says(tmp_path):
    _fake_run(tmp_path, A, outputs=("table.md",))
    sub = tmp_path / "runs" / "x" / "seed0"
    _fake_run(sub, A)
    (sub / "checkpoints" / "MY_NOTES.txt").write_text("mine")
    _fake_run(tmp_path / "runs" / "x" / "seed1", A)
    with pytest.warns(UserWarning, match=KEPT + r"runs/x/seed0/checkpoints/MY_NOTES.txt;"):
        with open_workdir(tmp_path, B, outputs=("table.md",), overwrite=True):
            pass
    assert _tree(tmp_path) == {
        MARKER,
        "config.json",
        "runs",
        "runs/x",
        "runs/x/seed0",
        "runs/x/seed0/checkpoints",
        "runs/x/seed0/checkpoints/MY_NOTES.txt",
    }


def test_a_marker_older_than_output_folders_gets_the_runs_description(tmp_path):
    _fake_run(tmp_path, A)
    (tmp_path / MARKER).write_text(json.dumps({"written_by": "jacosr", "outputs": NAMES}))
    (tmp_path / "checkpoints" / "MY_NOTES.txt").write_text("mine")
    with pytest.warns(UserWarning, match=KEPT + r"checkpoints/MY_NOTES.txt;"):
        with open_workdir(tmp_path, B, outputs=OUT, overwrite=True):
            pass
    assert (tmp_path / "checkpoints" / "MY_NOTES.txt").read_text() == "mine"
    assert json.loads((tmp_path / MARKER).read_text())["folders"] == {"checkpoints": STEPS}


def test_overwrite_deletes_a_symlinked_output_link_not_its_target(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "precious").write_text("mine")
    run = tmp_path / "run"
    with open_workdir(run, A, outputs=OUT):
        (run / "checkpoints").symlink_to(target)
    with open_workdir(run, B, outputs=OUT, overwrite=True):
        pass
    assert not (run / "checkpoints").exists() and (target / "precious").read_text() == "mine"


def test_missing_config_is_written_and_can_be_discarded(tmp_path):
    _fake_run(tmp_path, A)
    (tmp_path / "config.json").unlink()
    with open_workdir(tmp_path, B, outputs=OUT) as wd:
        assert wd.wrote_config and json.loads((tmp_path / "config.json").read_text()) == B
        wd.discard_config()  # e.g. the checkpoints turn out to be of another config
    assert not (tmp_path / "config.json").exists()
    assert (tmp_path / "metrics.jsonl").read_text() == "jacosr"


def test_unreadable_config_counts_as_different(tmp_path):
    _fake_run(tmp_path, A)
    (tmp_path / "config.json").write_text('{"lr": 0.')
    with pytest.raises(WorkdirError, match=r"config.json cannot be read"):
        with open_workdir(tmp_path, A, outputs=OUT):
            pass
    with open_workdir(tmp_path, A, outputs=OUT, overwrite=True):
        pass
    assert not (tmp_path / "metrics.jsonl").exists()


def test_write_text_is_atomic_and_limited_to_outputs(tmp_path):
    with open_workdir(tmp_path, A, outputs=OUT) as wd:
        wd.write("results.json", "{}")
        with pytest.raises(ValueError, match=r"'notes.txt' is not one of this run's outputs"):
            wd.write("notes.txt", "x")
    assert (tmp_path / "results.json").read_text() == "{}"
    assert not (tmp_path / "results.json.tmp").exists()


def test_a_write_that_finds_no_room_names_the_file_and_keeps_the_old_one(tmp_path):
    def full_disk(file):  # write() on a full disk raises without naming the file
        file.write(b"{")
        raise OSError(errno.ENOSPC, "No space left on device")

    with open_workdir(tmp_path, A, outputs=OUT) as wd:
        wd.write("results.json", "{}")
        with pytest.raises(OSError) as err:
            wd.write("results.json", full_disk)
    assert (err.value.errno, err.value.filename) == (errno.ENOSPC, str(tmp_path / "results.json"))
    assert (tmp_path / "results.json").read_text() == "{}"
    assert not (tmp_path / "results.json.tmp").exists()


def test_outputs_added_later_are_recorded_in_the_marker(tmp_path):
    with open_workdir(tmp_path, A, outputs=("a",)):
        pass
    with open_workdir(tmp_path, A, outputs=("b",)):
        pass
    assert json.loads((tmp_path / MARKER).read_text())["outputs"] == ["a", "b"]


def test_a_second_holder_is_refused_until_the_first_is_done(tmp_path):
    with open_workdir(tmp_path, A, outputs=OUT):
        with pytest.raises(WorkdirBusyError, match=r"in use by another jacosr process"):
            with open_workdir(tmp_path, A, outputs=OUT):
                pass
    with open_workdir(tmp_path, A, outputs=OUT):
        pass


HOLDER = """
import sys
from jacosr.workdir import open_workdir
with open_workdir(sys.argv[1], {"lr": 0.1, "model": {"width": 32}, "known": [0, 1]},
                  outputs=("checkpoints", "metrics.jsonl", "results.json")):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def _holder(path: Path) -> subprocess.Popen:
    """A child process that holds ``path`` until its stdin gets a line (or it is killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline() == "locked\n"  # blocks until the child holds the lock
    return proc


def test_another_process_holding_the_workdir_refuses_a_run(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(WorkdirBusyError, match=r"in use by another jacosr process"):
            with open_workdir(tmp_path, A, outputs=OUT):
                pass
        with pytest.raises(WorkdirBusyError):  # an overwrite is refused as well
            with open_workdir(tmp_path, B, outputs=OUT, overwrite=True):
                pass
        assert json.loads((tmp_path / "config.json").read_text()) == A
    finally:
        proc.communicate("done\n")
    assert proc.returncode == 0
    with open_workdir(tmp_path, A, outputs=OUT):
        pass


def test_a_sigkilled_holder_leaves_no_stuck_lock(tmp_path):
    proc = _holder(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with open_workdir(tmp_path, A, outputs=OUT) as wd:
        assert not wd.wrote_config


def test_overwrite_is_refused_while_a_sub_workdir_is_held(tmp_path):
    _fake_run(tmp_path, A, outputs=("table.md",))
    sub = tmp_path / "runs" / "x" / "seed0"
    _fake_run(sub, A)
    before = _tree(tmp_path)
    proc = _holder(sub)
    try:
        with pytest.raises(WorkdirBusyError, match=r"cannot overwrite .*seed0 is in use"):
            with open_workdir(tmp_path, B, outputs=("table.md",), overwrite=True):
                pass
    finally:
        proc.communicate("done\n")
    assert _tree(tmp_path) == before
