"""The loss table and the ablation end to end on tiny configs; Table III's rows written out
from the paper; the shared grid loop (resume, more seeds added to a workdir, the base seed,
the workdir identity, summary, the GPU-time estimate)."""

import dataclasses
import json

import numpy as np
import pytest
from helpers import TINY_GRID as TINY

from jacosr import recipe
from jacosr.config import cli
from jacosr.data import DataConfig
from jacosr.experiments import ablation, losses_table
from jacosr.grids import grid_identity, seed_grid
from jacosr.recipe import TrainConfig, resolve
from jacosr.tables import markdown_table, summarise_columns, summarise_values
from jacosr.workdir import WorkdirError


def _check_outputs(workdir, rows, columns, seeds=2):
    saved = json.loads((workdir / "table.json").read_text())
    assert list(saved["rows"]) == rows
    for row in rows:
        assert list(saved["rows"][row]) == columns
        for cell in saved["rows"][row].values():
            assert len(cell["values"]) == seeds
            np.testing.assert_allclose(cell["mean"], np.mean(cell["values"]))
            np.testing.assert_allclose(cell["std"], np.std(cell["values"], ddof=1))
    markdown = (workdir / "table.md").read_text()
    assert all(f"| {row} |" in markdown for row in rows)
    assert (workdir / "table.png").stat().st_size > 10_000
    return saved


@pytest.mark.slow
def test_losses_table_end_to_end_and_resume(tmp_path, capsys):
    args = [*TINY, "--losses", "sce", "rpl", "--workdir", str(tmp_path)]
    result = losses_table.main(args)
    _check_outputs(tmp_path, ["sce", "rpl"], list(losses_table.COLUMNS))
    assert "| loss | accuracy | AUROC (loss score) | AUROC (MSP) |" in capsys.readouterr().out
    runs = sorted(p.parent.name + "/" + p.name for p in tmp_path.glob("runs/*/seed*"))
    assert runs == ["rpl/seed0", "rpl/seed1", "sce/seed0", "sce/seed1"]
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/seed*/results.json")}
    assert losses_table.main(args) == result  # read back, not retrained or re-evaluated
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    # more seeds (of fewer losses) add runs beside the finished ones, which are read back
    identity = (tmp_path / "config.json").read_text()
    more = losses_table.main([*args, "--losses", "sce", "--seeds", "3"])
    _check_outputs(tmp_path, ["sce"], list(losses_table.COLUMNS), seeds=3)
    assert (
        more["summary"]["sce"]["accuracy"]["values"][:2]
        == (result["summary"]["sce"]["accuracy"]["values"])
    )
    assert sorted(p.name for p in tmp_path.glob("runs/sce/seed*")) == ["seed0", "seed1", "seed2"]
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}
    assert (tmp_path / "config.json").read_text() == identity  # the seed count is not in it
    assert json.loads((tmp_path / "table.json").read_text())["config"]["seeds"] == 3
    # another base seed is another experiment: refused before anything runs
    with pytest.raises(WorkdirError, match=r"different config \(train.seed: 0 -> 7\)"):
        losses_table.main([*args, "--seed", "7"])


def test_the_base_seed_sets_the_seeds_of_the_runs():
    """``--seed 7 --seeds 2`` trains seeds 7 and 8 (it used to be recorded but not used)."""
    parsed = cli(losses_table.COMMAND.arguments, args=["--seed", "7", "--seeds", "2"])
    grid = seed_grid(losses_table.rows(parsed.config), parsed.config.seeds)
    assert list(grid)[:3] == ["sce/seed7", "sce/seed8", "nsce/seed7"]
    assert all(c.seed == int(name.rsplit("seed", 1)[1]) for name, c in grid.items())
    config = ablation.AblationConfig(train=TrainConfig(seed=3), rows=("a",), seeds=2)
    assert list(ablation.ablation_grid(config)) == ["a/digits/seed3", "a/digits/seed4"]
    split = ablation.ablation_grid(
        dataclasses.replace(config, benchmarks=("cifar10",), splits=(1,))
    )
    assert [(name, c.seed) for name, c in split.items()] == [
        ("a/cifar10/split1-seed3", 3),
        ("a/cifar10/split1-seed4", 4),
    ]


def test_the_grid_identity_leaves_out_what_only_chooses_runs():
    base = ablation.AblationConfig(rows=("a",), seeds=2)
    extent = ("rows", "benchmarks", "splits", "seeds")
    more = dataclasses.replace(base, rows=("a", "b"), seeds=5, benchmarks=("svhn",))
    assert grid_identity(base, extent) == grid_identity(more, extent)
    assert "seeds" not in grid_identity(base) and "rows" in grid_identity(base)
    other = dataclasses.replace(base, train=TrainConfig(seed=1))
    assert grid_identity(other, extent) != grid_identity(base, extent)


@pytest.mark.slow
def test_ablation_end_to_end_and_resume(tmp_path, capsys):
    rows = ["Baseline", "Ours"]
    args = [*TINY, "--rows", *rows, "--workdir", str(tmp_path)]
    result = ablation.main(args)
    saved = _check_outputs(tmp_path, rows, ["digits"])
    assert saved["config"]["rows"] == rows
    assert list(saved["details"]["Ours"]) == ["digits ACC", "digits AUROC (MSP)", "digits OSCR"]
    runs = sorted(str(p.relative_to(tmp_path / "runs")) for p in tmp_path.glob("runs/*/*/seed*"))
    assert runs == [f"{r}/digits/seed{s}" for r in ("Baseline", "Ours") for s in (0, 1)]
    # the switches, read back from each run's config.json
    for seed in (0, 1):
        base = json.loads((tmp_path / f"runs/Baseline/digits/seed{seed}/config.json").read_text())
        assert (base["loss"]["loss"], base["weight_decay"]) == ("sce", 0.0)
        assert (base["augment"], base["self_sup"], base["seed"]) == ("none", 0.0, seed)
        ours = json.loads((tmp_path / f"runs/Ours/digits/seed{seed}/config.json").read_text())
        assert (ours["loss"]["loss"], ours["loss"]["margin_pos"]) == ("movr", 0.5)
        assert (ours["weight_decay"], ours["augment"], ours["self_sup"]) == (1e-3, "translate", 0.1)
        assert ours["data"]["val_fraction"] == 0.0  # Protocol A: no known-val
    out = capsys.readouterr().out
    assert "| model | block | OvR | N | m | W | A | S | digits |" in out
    assert "| Baseline |  |  |  |  |  |  |  | " in out
    assert "| Ours |  | ✓ | ✓ | ✓ | ✓ | ✓ | ✓ | " in out
    assert "| model | digits ACC | digits AUROC (MSP) | digits OSCR |" in out
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("runs/*/*/seed*/results.json")}
    assert ablation.main(args) == result  # read back, not retrained or re-evaluated
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


# (block, loss, margin, weight decay, augmentation, lambda_self) of every row of Table III,
# written out from the paper's table and text (the augmentation on CIFAR10; on digits
# "translate" replaces "weak")
PAPER_ROWS = {
    "Baseline": ("", "sce", 0.0, 0.0, "none", 0.0),
    "m-OvR": ("", "movr", 0.5, 0.0, "none", 0.0),
    "a": ("one out", "nsce", 0.0, 1e-3, "weak", 0.1),
    "b": ("one out", "doc", 0.0, 1e-3, "weak", 0.1),
    "c": ("one out", "movr", 0.5, 0.0, "weak", 0.1),
    "d": ("one out", "movr", 0.5, 1e-3, "none", 0.1),
    "e": ("w/o A+S", "sce", 0.0, 1e-3, "none", 0.0),
    "f": ("w/o A+S", "nsce", 0.0, 1e-3, "none", 0.0),
    "g": ("w/o A+S", "movr", 0.5, 1e-3, "none", 0.0),
    "h": ("w/o S", "sce", 0.0, 1e-3, "weak", 0.0),
    "i": ("w/o S", "nsce", 0.0, 1e-3, "weak", 0.0),
    "j": ("w/o S", "movr", 0.5, 1e-3, "weak", 0.0),
    "k": ("on m", "movr", 0.0, 1e-3, "weak", 0.1),
    "Ours": ("", "movr", 0.5, 1e-3, "weak", 0.1),
}


@pytest.mark.parametrize("data", [DataConfig(benchmark="cifar10"), DataConfig()])
def test_the_rows_are_table_iiis(data):
    base = resolve(TrainConfig(data=data))
    assert [row.label for row in ablation.ROWS] == list(PAPER_ROWS)
    for row in ablation.ROWS:
        block, loss, margin, wd, augment, self_sup = PAPER_ROWS[row.label]
        if data.benchmark is None and augment == "weak":
            augment = "translate"  # digits are not flipped
        c = ablation.ablation_config(row.switches, base)
        got = (row.block, c.loss.loss, c.loss.margin_pos, c.weight_decay, c.augment, c.self_sup)
        assert got == (block, loss, margin, wd, augment, self_sup), row.label
        assert c.loss.margin_neg == c.loss.margin_pos
    with pytest.raises(ValueError, match=r"margin m is defined for normalised OvR only"):
        recipe.ablation_config(recipe.Switches(ovr=True, m=True), base)
    with pytest.raises(ValueError, match=r"--rows must be names out of Baseline, m-OvR, a, b"):
        ablation.AblationConfig(rows=("Baseline", "OvR+m"))


def test_the_ablation_grid_runs_rows_over_splits_or_seeds():
    config = ablation.AblationConfig(
        rows=("a", "h"), benchmarks=("cifar10", "mnist"), splits=(0, 3)
    )
    grid = ablation.ablation_grid(config)
    assert list(grid) == [
        f"{row}/{b}/split{s}" for b in ("cifar10", "mnist") for s in (0, 3) for row in ("a", "h")
    ]
    for name, c in grid.items():
        _, benchmark, split = name.split("/")
        assert (c.data.benchmark, c.data.protocol_split) == (benchmark, int(split[-1]))
        assert c.augment == ("translate" if benchmark == "mnist" else "weak")
        assert c.seed == 0 and c.data.val_fraction == 0.0
    seeded = ablation.ablation_grid(dataclasses.replace(config, seeds=2))
    assert list(seeded)[:2] == ["a/cifar10/split0-seed0", "a/cifar10/split0-seed1"]
    assert [c.seed for c in list(seeded.values())[:2]] == [0, 1]
    digits = ablation.ablation_grid(ablation.AblationConfig(rows=("Ours",)))
    assert list(digits) == [f"Ours/digits/seed{s}" for s in range(5)]


def test_the_papers_average_column():
    """Table III's Baseline row: 76.5 ± 2.5, 84.7 ± 1.2, 83.9 ± 1.2, 92.1 ± 1.3, 66.1 ± 2.1 give
    Avg. 80.7 ± 1.7 (the mean of the means ± the mean of the stds)."""
    cells = [(76.5, 2.5), (84.7, 1.2), (83.9, 1.2), (92.1, 1.3), (66.1, 2.1)]
    row = {str(i): {"mean": m, "std": s, "values": [m]} for i, (m, s) in enumerate(cells)}
    avg = ablation.with_average({"Baseline": row})["Baseline"]["Avg."]
    assert round(avg["mean"], 1) == 80.7 and round(avg["std"], 1) == 1.7
    assert "Avg." not in ablation.with_average({"r": {"digits": row["0"]}})["r"]


def test_unknown_loss_row_fails_before_training(tmp_path):
    config = losses_table.LossesTableConfig(losses=("sce", "arcface"))
    with pytest.raises(ValueError, match=r"unknown loss 'arcface'"):
        losses_table.run(config, tmp_path)
    assert not (tmp_path / "runs").exists()


def test_summary_and_markdown():
    grid = seed_grid({"a": resolve(TrainConfig()), "b": resolve(TrainConfig(seed=5))}, 3)
    assert list(grid) == ["a/seed0", "a/seed1", "a/seed2", "b/seed5", "b/seed6", "b/seed7"]
    assert [c.seed for c in grid.values()] == [0, 1, 2, 5, 6, 7]
    summary = summarise_values({name: {"Y": i} for i, name in enumerate(grid)})
    assert summary["b"]["Y"] == {"mean": 4.0, "std": 1.0, "values": [3.0, 4.0, 5.0]}
    table = markdown_table(
        summary, row_header="row", labels={"a": ["✓"], "b": [""]}, label_headers=["S"]
    )
    assert table.splitlines() == [
        "| row | S | Y |",
        "|:--|:-:|--:|",
        "| a | ✓ | 1.0000 ± 1.0000 |",
        "| b |  | 4.0000 ± 1.0000 |",
    ]


def test_summarise_columns_groups_rows_and_columns():
    values = {
        f"{row}/{col}/split{i}": {"X": 10 * r + c + i}
        for r, row in enumerate(("A", "B"))
        for c, col in enumerate(("cifar10", "svhn"))
        for i in range(2)
    }
    table = summarise_columns(summarise_values(values))
    assert list(table) == ["A", "B"] and list(table["B"]) == ["cifar10", "svhn"]
    assert table["B"]["svhn"]["X"] == {"mean": 11.5, "std": np.sqrt(0.5), "values": [11.0, 12.0]}
