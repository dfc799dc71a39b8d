"""Protocol A and B end to end on TFDS mock data (no TensorFlow) with tiny step counts."""

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jacosr.experiments import protocol_a, protocol_b

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


@pytest.mark.slow
def test_protocol_a_end_to_end_on_mock_cifar10(tmp_path, capsys):
    args = [
        *TINY,
        "--benchmarks",
        "cifar10",
        "--splits",
        "0",
        "2",
        "--data-dir",
        str(tmp_path / "data"),
        "--workdir",
        str(tmp_path / "run"),
    ]
    with tfds.testing.mock_data(num_examples=120):
        result = protocol_a.main(args)
    run = tmp_path / "run"
    for name in ("table.md", "table.json", "table.png"):
        assert (run / name).stat().st_size > 0
    table = json.loads((run / "table.json").read_text())
    assert table["splits"]["cifar10/split2"]["known_classes"] == [1, 5, 7, 3, 9, 4]
    assert table["splits"]["cifar10/split0"]["protocol_split"] == 0
    row = result["summary"]["movr (loss)"]
    assert set(row) == {"cifar10 ACC", "cifar10 AUROC", "cifar10 OSCR"}
    for split, value in zip((0, 2), row["cifar10 AUROC"]["values"], strict=True):
        saved = json.loads(
            (run / "runs" / "cifar10" / f"split{split}" / "results.json").read_text()
        )
        assert saved["scores"]["loss"]["auroc"] == value
    assert np.isclose(row["cifar10 ACC"]["mean"], np.mean(row["cifar10 ACC"]["values"]))
    assert "| movr (loss) |" in capsys.readouterr().out
    # a second call reads the finished splits back (the cache makes mock data unnecessary)
    assert protocol_a.main(args)["summary"] == result["summary"]


def test_protocol_a_bad_benchmark_and_no_splits(tmp_path):
    with pytest.raises(ValueError, match=r"unknown benchmarks \['cifar11'\]; valid are: mnist"):
        protocol_a.run(protocol_a.ProtocolAConfig(benchmarks=("cifar11",)), tmp_path)
    with pytest.raises(ValueError, match=r"no splits given"):
        protocol_a.run(protocol_a.ProtocolAConfig(splits=()), tmp_path)


def _ood_folder(root, n=24):
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        (root / "LSUN" / "test").mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "LSUN" / "test" / f"{i}.png")


@pytest.mark.slow
def test_protocol_b_end_to_end_on_mock_cifar10(tmp_path):
    data_dir = tmp_path / "data"
    _ood_folder(data_dir)
    args = [
        *TINY,
        "--ood",
        "lsun_crop",
        "--seeds",
        "2",
        "--data-dir",
        str(data_dir),
        "--workdir",
        str(tmp_path / "run"),
    ]
    with tfds.testing.mock_data(num_examples=120):
        result = protocol_b.main(args)
    row = result["summary"]["movr (loss)"]
    assert set(row) == {"lsun_crop", "ACC"}
    assert len(row["lsun_crop"]["values"]) == 2
    assert all(0.0 <= v <= 1.0 for v in row["lsun_crop"]["values"])
    assert (tmp_path / "run" / "seed1" / "checkpoints").is_dir()
    table = json.loads((tmp_path / "run" / "table.json").read_text())
    assert table["splits"]["lsun_crop"]["known_classes"] == list(range(10))
    assert table["splits"]["lsun_crop"]["unknown_source"] == "lsun_crop"


def test_protocol_b_needs_an_ood_set(tmp_path):
    with pytest.raises(ValueError, match=r"no OOD sets given; choose from: imagenet_crop"):
        protocol_b.run(protocol_b.ProtocolBConfig(ood=()), tmp_path)
