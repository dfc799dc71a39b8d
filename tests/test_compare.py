"""The comparison command on hand-written runs (config.json, checkpoints/, results.json with
chosen numbers: no training), an experiment's workdir expanded into its runs, and the suite's
real digits run; the runs compared are only read."""

import csv
import io
import json

import pytest

from jacosr.config import DEBUG_ENV, run_command, to_dict
from jacosr.experiments import compare
from jacosr.losses import LossConfig
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import collect, read_results
from jacosr.workdir import WorkdirError

SPLIT = {"source": "digits", "benchmark": None, "known_classes": [0, 1, 2, 3, 4, 5]}
"""What results.json says of the data a run was evaluated on (the fields its readers use)."""


def _run(folder, *, loss="movr", seed=0, accuracy=0.5, scores=None):
    """A finished training run's workdir as compare reads it (results.json optional)."""
    config = to_dict(resolve(TrainConfig(loss=LossConfig(loss=loss), seed=seed)))
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    if scores is not None:
        results = {"config": config, "accuracy": accuracy, "split": SPLIT, "scores": scores}
        (folder / "results.json").write_text(json.dumps(results))
    return folder


@pytest.fixture
def runs(tmp_path):
    """Two runs with different losses, seeds and score sets; an experiment's workdir with one
    finished run and one without results.json."""
    a = _run(
        tmp_path / "a",
        accuracy=0.5,
        scores={"loss": {"auroc": 0.75, "oscr": 0.625}, "msp": {"auroc": 0.875, "oscr": 0.5}},
    )
    b = _run(
        tmp_path / "b",
        loss="sce",
        seed=1,
        accuracy=0.25,
        scores={"loss": {"auroc": 0.125, "oscr": 0.0625}, "energy": {"auroc": 1.0, "oscr": 0.5}},
    )
    exp = tmp_path / "exp"
    (exp / "runs" / "sce").mkdir(parents=True)
    (exp / "config.json").write_text("{}")
    _run(exp / "runs" / "sce" / "seed1", loss="sce", seed=1, scores={"msp": {"auroc": 0.5}})
    _run(exp / "train")  # trained by fit alone: no results.json
    return a, b, exp


def _stamps(folder):
    return {p: p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_runs_with_different_scores_in_one_table(runs, tmp_path, capsys):
    a, b, _ = runs
    out = tmp_path / "out"
    before = _stamps(a) | _stamps(b)
    result = compare.main([str(a), str(b), "--metrics", "auroc", "oscr", "--workdir", str(out)])
    lines = (out / "compare.md").read_text().splitlines()
    assert lines == [
        "| run | loss.loss | seed | accuracy | loss auroc | loss oscr | msp auroc | msp oscr "
        "| energy auroc | energy oscr |",
        "|:--|:--|:--|--:|--:|--:|--:|--:|--:|--:|",
        f"| {a} | movr | 0 | 0.5000 | 0.7500 | 0.6250 | 0.8750 | 0.5000 |  |  |",
        f"| {b} | sce | 1 | 0.2500 | 0.1250 | 0.0625 |  |  | 1.0000 | 0.5000 |",
    ]
    assert result["markdown"] in capsys.readouterr().out
    table = list(csv.reader(io.StringIO((out / "compare.csv").read_text())))
    assert table[0][:4] == ["run", "loss.loss", "seed", "accuracy"]
    assert table[2] == [str(b), "sce", "1", "0.25", "0.125", "0.0625", "", "", "1.0", "0.5"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["differs"] == ["loss.loss", "seed"]
    assert saved["rows"][str(b)]["values"]["msp auroc"] is None
    assert saved["rows"][str(a)]["config"] == {"loss.loss": "movr", "seed": 0}
    assert (out / "compare.png").stat().st_size > 10_000
    assert before == _stamps(a) | _stamps(b)  # only read
    # the same command again rewrites the same table; other runs are another comparison
    assert compare.main([str(a), str(b), "--metrics", "auroc", "oscr", "--workdir", str(out)])
    with pytest.raises(WorkdirError, match=r"different config \(.*runs: \[.*\] -> \["):
        compare.main([str(a), "--workdir", str(out)])
    compare.main([str(a), "--workdir", str(out), "--overwrite"])
    assert len((out / "compare.md").read_text().splitlines()) == 3


def test_an_experiments_workdir_is_expanded_into_its_runs(runs, tmp_path):
    a, _, exp = runs
    with pytest.warns(UserWarning, match=r"left out 1 run\(s\) without results.json .*exp/train"):
        result = compare.main([str(exp), str(a), str(a), "--workdir", str(tmp_path / "out")])
    assert list(result["rows"]) == [str(exp / "runs" / "sce" / "seed1"), str(a)]
    assert result["columns"] == ["accuracy", "msp auroc", "loss auroc"]
    assert result["rows"][str(a)]["values"]["msp auroc"] == 0.875


def test_paths_without_finished_runs_are_errors(runs, tmp_path):
    _, _, exp = runs
    out = str(tmp_path / "out")
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist"):
        compare.main([str(tmp_path / "nowhere"), "--workdir", out])
    with pytest.raises(FileNotFoundError, match=r"checkpoints holds no training run"):
        compare.main([str(exp / "runs" / "sce" / "seed1" / "checkpoints"), "--workdir", out])
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            ValueError,
            match=r"none of the runs in .*train has a readable results.json \(1 without one, 0 "
            r"damaged; see the warnings above\)$",
        ),
    ):
        compare.main([str(exp / "train"), "--workdir", out])
    with pytest.raises(SystemExit):
        compare.main(["--metrics", "f1", "--workdir", out])
    assert not (tmp_path / "out").exists()


def test_a_real_run_compares_with_every_score_it_has(digits_run, tmp_path):
    workdir, results = digits_run
    out = compare.main([str(workdir), "--workdir", str(tmp_path / "out")])
    row = out["rows"][str(workdir)]["values"]
    assert row["accuracy"] == results.accuracy
    assert [c for c in out["columns"] if c != "accuracy"] == [f"{s} auroc" for s in results.scores]
    assert all(row[f"{s} auroc"] == v["auroc"] for s, v in results.scores.items())
    assert out["differs"] == []


GOOD = {"config": {"seed": 0}, "accuracy": 0.5, "split": SPLIT, "scores": {"msp": {"auroc": 0.5}}}


@pytest.mark.parametrize(
    ("content", "wrong"),
    [
        (b"", " is empty"),
        (b" \n", " is empty"),
        (b"\x80\x93\xff{", " is not UTF-8 text (invalid start byte at byte 0)"),
        (b'{"config": ', " is not JSON (Expecting value: line 1 column 12 (char 11))"),
        (b"[" * 100_000 + b"]" * 100_000, " is JSON nested too deeply to read"),
        (b"[1, 2]", " holds an array, not an object"),
        (b"7", " holds a number, not an object"),
        (
            b"{}",
            " lacks 'config', 'accuracy', 'split', 'scores' (a training run's results.json "
            "holds config, accuracy, split, scores)",
        ),
        (json.dumps({**GOOD, "scores": [1]}).encode(), ": 'scores' is an array, not an object"),
        (json.dumps({**GOOD, "config": None}).encode(), ": 'config' is null, not an object"),
        (
            json.dumps({**GOOD, "accuracy": "0.5"}).encode(),
            ": 'accuracy' is a string, not a number",
        ),
        (
            json.dumps({**GOOD, "accuracy": True}).encode(),
            ": 'accuracy' is a boolean, not a number",
        ),
        (json.dumps({**GOOD, "split": []}).encode(), ": 'split' is an array, not an object"),
        (
            json.dumps({**GOOD, "scores": {"msp": [0.5]}}).encode(),
            ": scores['msp'] is an array, not an object of metric -> value",
        ),
        (
            json.dumps({**GOOD, "scores": {"msp": {"auroc": "high"}}}).encode(),
            ": scores['msp']['auroc'] is a string, not a number or null",
        ),
    ],
)
def test_a_damaged_results_json_is_named_and_left_out(runs, tmp_path, content, wrong):
    """Each was a KeyError, TypeError or AttributeError (or a one-line error naming no file):
    the run is left out with a warning naming it, its file and what is wrong; the others are
    compared."""
    a, _, _ = runs
    bad = _run(tmp_path / "bad")
    (bad / "results.json").write_bytes(content)
    with pytest.raises(ValueError) as raised:
        read_results(bad)
    assert str(raised.value) == f"{bad / 'results.json'}{wrong}"
    with pytest.warns(UserWarning) as warned:
        results = collect((bad, a))
    assert list(results) == [str(a)]
    assert [str(w.message) for w in warned] == [
        f"left out run {bad}: {raised.value}; re-running its `python -m jacosr.train` command "
        "evaluates it again and rewrites the file"
    ]


def test_damaged_runs_are_left_out_on_the_command_line(runs, tmp_path, capsys, monkeypatch):
    """One warning line per damaged run, the table of the others; with none left, one error
    line (status 2) and nothing written."""
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    a, _, _ = runs
    bad = _run(tmp_path / "bad")
    (bad / "results.json").write_text("{}")
    out = tmp_path / "out"
    run_command(compare.main, [str(bad), str(a), "--workdir", str(out)])
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"warning: left out run {bad}: {bad / 'results.json'} lacks 'config', "
        "'accuracy', 'split', 'scores' (a training run's results.json holds config, "
        "accuracy, split, scores); re-running its `python -m jacosr.train` command "
        "evaluates it again and rewrites the file"
    ]
    assert list(json.loads((out / "results.json").read_text())["rows"]) == [str(a)]
    with pytest.raises(SystemExit) as exit_:
        run_command(compare.main, [str(bad), "--workdir", str(tmp_path / "none")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[1:] == [
        f"error: none of the runs in {bad} has a readable results.json (0 without one, 1 "
        "damaged; see the warnings above)"
    ]
    assert not (tmp_path / "none").exists()
