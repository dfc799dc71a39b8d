"""Protocol A and B end to end on TFDS mock data (no TensorFlow) with tiny step counts; the
presets under experiments/ run for a few steps, every row of their table checked against the
switches read back from its runs' config.json."""

import dataclasses
import json
import shlex
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jacosr.config import cli
from jacosr.data import DataConfig, load_source
from jacosr.experiments import ablation, protocol_a, protocol_b
from jacosr.grids import split_grid
from jacosr.recipe import TrainConfig

PRESETS = Path(__file__).parent.parent / "experiments"
MODULES = {"protocol_a": protocol_a, "ablation": ablation, "protocol_b": protocol_b}

TINY = [
    "--backbone",
    "mlp",
    "--width",
    "32",
    "--embed-dim",
    "16",
    "--steps",
    "4",
    "--batch-size",
    "8",
    "--log-every",
    "2",
    "--checkpoint-every",
    "2",
]


def preset_command(name: str) -> tuple[str, list[str]]:
    """The experiment module (``protocol_a``, ...) and the arguments of the one
    ``python -m jacosr.experiments.<module>`` line of ``experiments/<name>.sh``."""
    text = (PRESETS / f"{name}.sh").read_text().replace("\\\n", " ")
    (line,) = [line for line in text.splitlines() if line.startswith("python -m ")]
    words = shlex.split(line)
    assert words[-1] == "$@"  # extra arguments are appended: the last flag wins
    return words[2].removeprefix("jacosr.experiments."), words[3:-1]


def test_every_preset_is_one_experiment_command():
    names = sorted(p.stem for p in PRESETS.glob("*.sh"))
    assert names == [
        "table1_resnet18_strong",
        "table1_vgg32_weak",
        "table1_wrn16_4_weak",
        "table2_protocol_b",
        "table3_ablation_wrn16_4",
    ]
    for name in names:
        module, _ = preset_command(name)
        assert module in MODULES


# --- the presets' paper settings, parsed (no data, no training) ----------------------------


def _parsed(name: str):
    module, args = preset_command(name)
    return cli(MODULES[module].COMMAND.arguments, args=args).config


@pytest.mark.parametrize(
    ("name", "backbone", "embed_dim"),
    [("table1_vgg32_weak", "vgg32", 128), ("table1_wrn16_4_weak", "wrn16_4", 256)],
)
def test_table_i_weak_presets_are_the_papers(name, backbone, embed_dim):
    config = _parsed(name)
    assert config.methods == ("SCE", "N-SCE", "DOC", "RPL", "CPN", "Ours")
    assert config.benchmarks == ("cifar10", "cifar+10", "cifar+50", "svhn", "tinyimagenet")
    assert config.splits == (0, 1, 2, 3, 4) and config.epochs is None
    grid = protocol_a.protocol_a_grid(config)
    assert len(grid) == 6 * 5 * 5
    losses = {"SCE": "sce", "N-SCE": "nsce", "DOC": "doc", "RPL": "rpl", "CPN": "gcpl"}
    for run_name, run in grid.items():
        method, benchmark, _ = run_name.split("/")
        assert (run.model.backbone, run.model.embed_dim) == (backbone, embed_dim)
        assert (run.lr, run.lr_min, run.momentum, run.batch_size) == (0.1, 1e-5, 0.9, 128)
        assert (run.weight_decay, run.augment, run.data.val_fraction) == (1e-3, "weak", 0.0)
        assert run.loss.loss == losses.get(method, "movr")
        assert run.self_sup == (0.1 if method == "Ours" else 0.0)  # the paper's lambda_self
        long = method == "Ours" and benchmark == "cifar10"
        assert run.steps == (100_000 if long else 20_000)


def test_table_i_strong_and_table_iii_presets_are_the_papers():
    strong = _parsed("table1_resnet18_strong")
    assert strong.methods == ("SCE", "m-OvR") and strong.epochs == 200
    t = strong.train
    assert (t.model.backbone, t.lr, t.lr_min, t.momentum, t.augment) == (
        "resnet18",
        0.06,
        0.0,
        0.9,
        "strong",
    )
    table3 = _parsed("table3_ablation_wrn16_4")
    assert table3.rows == tuple(row.label for row in ablation.ROWS)
    assert table3.benchmarks == ("cifar10", "cifar+10", "cifar+50", "svhn", "tinyimagenet")
    grid = ablation.ablation_grid(table3)
    assert len(grid) == 14 * 5 * 5
    assert {
        (r.model.backbone, r.steps, r.momentum, r.data.val_fraction) for r in grid.values()
    } == {("wrn16_4", 20_000, 0.9, 0.0)}
    table2 = _parsed("table2_protocol_b")
    assert table2.train.data.val_fraction == 0.1 and table2.reject_rate == 0.1


# --- every preset for a few steps on mock CIFAR10 ------------------------------------------


@pytest.fixture(scope="module")
def mock_data_dir(tmp_path_factory):
    """A data directory with mock CIFAR10 decoded into jacosr's cache (later loads need no
    mock), and its training labels."""
    data_dir = tmp_path_factory.mktemp("data")
    with tfds.testing.mock_data(num_examples=120):
        source = load_source("cifar10", data_dir)
    return data_dir, source.train_y


SHORT = [*TINY, "--steps", "2", "--benchmarks", "cifar10", "--splits", "1"]


@pytest.fixture(scope="module")
def preset_runs(mock_data_dir, tmp_path_factory):
    """Each Table I / III preset's command line with the tiny model, 2 steps (Ours on CIFAR10:
    3; the strong recipe: 1 epoch) and one split of mock CIFAR10: name -> (workdir, results)."""
    data_dir, _ = mock_data_dir
    extra = {
        "table1_vgg32_weak": ["--ours-cifar10-steps", "3"],
        "table1_wrn16_4_weak": ["--ours-cifar10-steps", "3"],
        "table1_resnet18_strong": ["--epochs", "1"],
        "table3_ablation_wrn16_4": [],
    }
    runs = {}
    for name, more in extra.items():
        module, args = preset_command(name)
        workdir = tmp_path_factory.mktemp(name)
        argv = [*args, *SHORT, *more, "--data-dir", str(data_dir), "--workdir", str(workdir)]
        runs[name] = workdir, MODULES[module].main(argv)
    return runs


def _run_configs(workdir: Path) -> dict[str, dict]:
    return {
        str(p.parent.relative_to(workdir / "runs")): json.loads(p.read_text())
        for p in sorted(workdir.glob("runs/*/*/*/config.json"))
    }


@pytest.mark.slow
@pytest.mark.parametrize("name", ["table1_vgg32_weak", "table1_wrn16_4_weak"])
def test_table_i_weak_preset_runs_every_row(preset_runs, mock_data_dir, name):
    workdir, result = preset_runs[name]
    methods = ["SCE", "N-SCE", "DOC", "RPL", "CPN", "Ours"]
    assert list(result["summary"]) == [f"{m} ({s})" for m in methods for s in ("loss", "msp")]
    markdown = (workdir / "table.md").read_text()
    assert markdown.startswith("| method (score) | Arch. | cifar10 ACC | cifar10 AUROC |")
    assert all(f"| {m} (loss) | mlp |" in markdown for m in methods)
    configs = _run_configs(workdir)
    assert list(configs) == sorted(f"{m}/cifar10/split1" for m in methods)
    losses = {"SCE": "sce", "N-SCE": "nsce", "DOC": "doc", "RPL": "rpl", "CPN": "gcpl"}
    _, train_y = mock_data_dir
    known = [7, 6, 4, 9, 0, 1]  # CIFAR10 split 1
    for run_name, c in configs.items():
        method = run_name.split("/")[0]
        assert c["loss"]["loss"] == losses.get(method, "movr")
        assert (c["augment"], c["weight_decay"], c["momentum"]) == ("weak", 1e-3, 0.9)
        assert c["self_sup"] == (0.1 if method == "Ours" else 0.0)
        assert c["steps"] == (3 if method == "Ours" else 2)
        assert c["data"]["known"] == known and c["data"]["val_fraction"] == 0.0
        results = json.loads((workdir / "runs" / run_name / "results.json").read_text())
        # Protocol A trains on every known training image and reports no macro-F1
        assert results["split"]["sizes"]["known_train"] == np.isin(train_y, known).sum()
        assert "macro_f1" not in results["scores"]["loss"]
        cell = result["summary"][f"{method} (loss)"]["cifar10 AUROC"]
        assert cell["values"] == [results["scores"]["loss"]["auroc"]]


@pytest.mark.slow
def test_table_i_strong_preset_runs_every_row(preset_runs, mock_data_dir):
    workdir, result = preset_runs["table1_resnet18_strong"]
    assert list(result["summary"]) == ["SCE (loss)", "SCE (msp)", "m-OvR (loss)", "m-OvR (msp)"]
    _, train_y = mock_data_dir
    # 1 epoch = (known training images // batch 8) steps, counted here from the labels
    epoch = np.isin(train_y, [7, 6, 4, 9, 0, 1]).sum() // 8
    configs = _run_configs(workdir)
    assert list(configs) == ["SCE/cifar10/split1", "m-OvR/cifar10/split1"]
    for run_name, c in configs.items():
        assert c["loss"]["loss"] == ("sce" if run_name.startswith("SCE") else "movr")
        assert (c["augment"], c["self_sup"], c["steps"]) == ("strong", 0.0, epoch)
        assert (c["lr"], c["lr_min"], c["momentum"]) == (0.06, 0.0, 0.9)


@pytest.mark.slow
def test_table_iii_preset_runs_every_row(preset_runs):
    workdir, result = preset_runs["table3_ablation_wrn16_4"]
    labels = [row.label for row in ablation.ROWS]
    assert list(result["summary"]) == labels
    assert list(result["summary"]["Ours"]) == ["cifar10"]  # one benchmark: no Avg.
    markdown = (workdir / "table.md").read_text()
    assert markdown.startswith("| model | block | OvR | N | m | W | A | S | cifar10 |")
    assert "| a | one out |  | ✓ |  | ✓ | ✓ | ✓ | " in markdown
    configs = _run_configs(workdir)
    assert list(configs) == sorted(f"{label}/cifar10/split1" for label in labels)
    for row in ablation.ROWS:
        c = configs[f"{row.label}/cifar10/split1"]
        on = row.switches
        family = {(0, 0): "sce", (1, 0): "doc", (0, 1): "nsce", (1, 1): "movr"}
        assert c["loss"]["loss"] == family[on.ovr, on.n], row.label
        assert c["loss"]["margin_pos"] == c["loss"]["margin_neg"] == (0.5 if on.m else 0.0)
        assert c["weight_decay"] == (1e-3 if on.w else 0.0)
        assert c["augment"] == ("weak" if on.a else "none")
        assert c["self_sup"] == (0.1 if on.s else 0.0)
    assert (workdir / "table.png").stat().st_size > 10_000


@pytest.mark.slow
def test_a_preset_rerun_reads_back(preset_runs, mock_data_dir):
    workdir, result = preset_runs["table1_resnet18_strong"]
    module, args = preset_command("table1_resnet18_strong")
    data_dir, _ = mock_data_dir
    stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("runs/*/*/*/results.json")}
    argv = [*args, *SHORT, "--epochs", "1", "--data-dir", str(data_dir), "--workdir", str(workdir)]
    assert MODULES[module].main(argv) == result
    assert stamps == {p: p.stat().st_mtime_ns for p in stamps}


def test_split_grid_counts_epochs_on_the_split(mock_data_dir):
    data_dir, train_y = mock_data_dir
    base = TrainConfig(batch_size=8, steps=5, data=DataConfig(val_fraction=0.0, data_dir=data_dir))
    grid = split_grid(lambda b: {"r": b}, base, ["cifar10"], [0, 2], epochs=3)
    for split, known in ((0, [0, 6, 4, 9, 1, 7]), (2, [1, 5, 7, 3, 9, 4])):
        assert grid[f"r/cifar10/split{split}"].steps == 3 * (np.isin(train_y, known).sum() // 8)
    assert split_grid(lambda b: {"r": b}, base, ["cifar10"], [0])["r/cifar10/split0"].steps == 5
    # with a known-val, an epoch is the images left to train on
    held_out = dataclasses.replace(base, data=dataclasses.replace(base.data, val_fraction=0.5))
    grid = split_grid(lambda b: {"r": b}, held_out, ["cifar10"], [0], epochs=1)
    known = np.isin(train_y, [0, 6, 4, 9, 1, 7])
    left = sum(n - round(0.5 * n) for n in np.bincount(train_y[known]) if n)
    assert grid["r/cifar10/split0"].steps == left // 8


def test_protocol_a_methods_and_bad_arguments(tmp_path):
    config = protocol_a.ProtocolAConfig(
        methods=("RPL", "Ours"), benchmarks=("cifar10", "svhn"), ours_cifar10_steps=7
    )
    grid = protocol_a.protocol_a_grid(config)
    assert len(grid) == 2 * 2 * 5
    assert {n for n, c in grid.items() if c.steps == 7} == {
        f"Ours/cifar10/split{s}" for s in range(5)
    }
    with pytest.raises(ValueError, match=r"unknown benchmarks \['cifar11'\]; valid are: mnist"):
        protocol_a.run(protocol_a.ProtocolAConfig(benchmarks=("cifar11",)), tmp_path)
    with pytest.raises(ValueError, match=r"no splits given"):
        protocol_a.run(protocol_a.ProtocolAConfig(splits=()), tmp_path)
    with pytest.raises(ValueError, match=r"--methods must be names out of SCE, N-SCE, DOC"):
        protocol_a.ProtocolAConfig(methods=("GCPL",))


def _ood_folder(root, folder="LSUN", n=24, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (root / folder / "test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / folder / "test" / f"{i}.png")


@pytest.mark.slow
def test_protocol_b_end_to_end_on_mock_cifar10(tmp_path):
    data_dir = tmp_path / "data"
    _ood_folder(data_dir)
    _ood_folder(data_dir, "LSUN_resize", seed=1)
    workdir = tmp_path / "run"
    args = [*TINY, "--data-dir", str(data_dir), "--workdir", str(workdir)]
    with tfds.testing.mock_data(num_examples=120):
        first = protocol_b.main([*args, "--ood", "lsun_crop", "--seeds", "1"])
        models = {p: p.stat().st_mtime_ns for p in workdir.glob("seed0/checkpoints/**/*")}
        # other OOD sets, in another order, and one more seed: seed 0's model is reused
        result = protocol_b.main([*args, "--ood", "lsun_resize", "lsun_crop", "--seeds", "2"])
    assert models and models == {p: p.stat().st_mtime_ns for p in models}
    assert sorted(p.name for p in workdir.glob("seed*")) == ["seed0", "seed1"]
    row = result["summary"]["movr (loss)"]
    assert list(row) == ["lsun_resize", "lsun_crop", "ACC"]
    assert (
        row["lsun_crop"]["values"][0] == first["summary"]["movr (loss)"]["lsun_crop"]["values"][0]
    )
    assert len(row["lsun_resize"]["values"]) == 2
    assert all(0.0 <= v <= 1.0 for v in row["lsun_crop"]["values"])
    # the models' config names no OOD set: CIFAR10, all ten classes known
    model = json.loads((workdir / "seed1" / "config.json").read_text())
    assert model["data"]["unknown_dataset"] is None and model["seed"] == 1
    assert model["data"]["dataset"] == "cifar10" and model["data"]["known"] == list(range(10))
    table = json.loads((workdir / "table.json").read_text())
    assert table["splits"]["lsun_crop"]["known_classes"] == list(range(10))
    assert table["splits"]["lsun_crop"]["unknown_source"] == "lsun_crop"
    assert table["config"]["ood"] == ["lsun_resize", "lsun_crop"]


def test_protocol_b_needs_an_ood_set_and_a_validation_split(tmp_path):
    with pytest.raises(ValueError, match=r"no OOD sets given; choose from: imagenet_crop"):
        protocol_b.run(protocol_b.ProtocolBConfig(ood=()), tmp_path)
    with pytest.raises(ValueError, match=r"Protocol B sets its threshold on known-val"):
        protocol_b.main(["--val-fraction", "0", "--workdir", str(tmp_path)])
