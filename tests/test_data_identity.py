"""The data are part of a run's identity: a ``--benchmark mnist`` run (on MNIST idx files the
user brought, written here) records its real data set, classes and a fingerprint of what it
trained on; other data in its workdir, through ``fit`` or a data set prepared again from other
files, is refused naming what differs; the same data resume."""

import json
import shutil

import jax
import numpy as np
import pytest
from test_data_files import mnist_parts, write_mnist

from jacosr.config import to_dict
from jacosr.data import (
    DataConfig,
    load_open_set,
    load_source,
    open_set_split,
    resize_source,
    source_from_arrays,
)
from jacosr.data.openset import split_sha256
from jacosr.data.prepare import prepare
from jacosr.evaluate import EvalConfig
from jacosr.models import ModelConfig
from jacosr.recipe import TrainConfig, resolve
from jacosr.runs import load_run
from jacosr.train import fit, main, run
from jacosr.workdir import WorkdirError

KNOWN, UNKNOWN = [2, 4, 5, 9, 8, 3], [0, 1, 6, 7]  # split 0 of the MNIST benchmark


def tiny(data_dir) -> TrainConfig:
    return TrainConfig(
        data=DataConfig(benchmark="mnist", data_dir=data_dir),
        model=ModelConfig(width=32, embed_dim=16),
        steps=2,
        batch_size=8,
        log_every=2,
        checkpoint_every=2,
        dispatch_steps=2,
        augment="none",
        self_sup=0.0,
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished 2-step run of the MNIST benchmark on 8 training and 3 test images per class
    of idx files prepared with --from: ``(data_dir, workdir, files, results)``."""
    root = tmp_path_factory.mktemp("identity")
    files, data_dir, workdir = root / "files", root / "data", root / "run"
    write_mnist(files, mnist_parts(np.random.default_rng(0), n_train=80, n_test=30))
    prepare("mnist", data_dir, source=files)
    results = run(tiny(data_dir), workdir, EvalConfig(scores=("msp",)), progress=False)
    return data_dir, workdir, files, results


def copy(workdir, tmp_path):
    shutil.copytree(workdir, tmp_path / "run")
    return tmp_path / "run"


def test_a_benchmark_run_records_its_real_data_set_and_a_fingerprint(trained):
    data_dir, workdir, _, results = trained
    stored = json.loads((workdir / "config.json").read_text())
    assert stored["data"] == {
        **to_dict(DataConfig(data_dir=data_dir)),
        "dataset": "mnist",
        "known": KNOWN,
        "unknown": UNKNOWN,
        "benchmark": "mnist",
        "image_size": 32,
    }
    data = load_open_set(resolve(tiny(data_dir)).data)
    assert stored["trained_on"] == {
        "source": "mnist",
        "known_classes": KNOWN,
        "image_shape": [32, 32, 1],
        "dtype": "uint8",
        # 8 training images per class, of which round(0.1 * 8) = 1 is known-val
        "known_train": {"size": 6 * 7, "sha256": split_sha256(data.known_train)},
    }
    split = results.split
    assert split["source"] == "mnist" and split["benchmark"] == "mnist"
    assert split["sha256"]["unknown_test"] == split_sha256(data.unknown_test)
    assert split["sizes"]["unknown_test"] == 4 * 3


def test_the_same_data_resume_and_other_data_are_refused(trained, tmp_path):
    data_dir, workdir, _, _ = trained
    workdir = copy(workdir, tmp_path)
    config = tiny(data_dir)
    data = load_open_set(resolve(config).data)
    _, model = fit(config, data, workdir, progress=False)  # finished: read back, not trained
    _, _, _, stored = load_run(workdir)
    for a, b in zip(jax.tree.leaves(model), jax.tree.leaves(stored), strict=True):
        np.testing.assert_array_equal(a, b)
    # Other images of the same classes and shape (negatives), built in Python: refused, where
    # the old model used to come back.
    source = load_source("mnist", data_dir)
    negative = source_from_arrays(
        "mnist", 255 - source.train_x, source.train_y, source.test_x, source.test_y
    )
    other = open_set_split(resize_source(negative, 32), KNOWN)
    with pytest.raises(WorkdirError) as err:
        fit(config, other, workdir, progress=False)
    digest = split_sha256(data.known_train)
    assert str(err.value) == (
        f"{workdir} holds a run with a different config (trained_on.known_train.sha256: "
        f"{digest!r} -> {split_sha256(other.known_train)!r}); choose another --workdir, or "
        "pass --overwrite to delete the old run"
    )


def test_a_data_set_prepared_again_from_other_files_is_refused(trained, tmp_path):
    data_dir, workdir, files, _ = trained
    workdir = copy(workdir, tmp_path)
    write_mnist(tmp_path / "new", mnist_parts(np.random.default_rng(1), n_train=80, n_test=30))
    prepare("mnist", data_dir, source=tmp_path / "new", force=True)
    try:
        done = json.loads((workdir / "results.json").read_text())["eval"]["scores"]
        for scores in (("energy",), tuple(done)):  # new scores, and those results.json holds
            with pytest.raises(WorkdirError, match=r"different config \(trained_on\.known_tr"):
                run(tiny(data_dir), workdir, EvalConfig(scores=scores), progress=False)
        with pytest.raises(WorkdirError, match=r"trained on other data than its config loads"):
            load_run(workdir)
        config, data, _, _ = load_run(workdir, data=False)  # the model, without its data
        assert data is None and config.data.dataset == "mnist"
    finally:
        prepare("mnist", data_dir, source=files, force=True)  # as the other tests expect


def test_an_older_workdir_without_the_record_is_refused_as_another_config(trained, tmp_path):
    data_dir, workdir, _, _ = trained
    workdir = copy(workdir, tmp_path)
    stored = json.loads((workdir / "config.json").read_text())
    del stored["trained_on"]
    (workdir / "config.json").write_text(json.dumps(stored))
    config = tiny(data_dir)
    with pytest.raises(WorkdirError, match=r"different config \(trained_on: None -> \{'source'"):
        fit(config, load_open_set(resolve(config).data), workdir, progress=False)


def test_train_help_says_how_to_bring_a_data_set(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.replace("│", " ").replace("`", "").split())
    assert "or your own, prepared from your files under a name of yours with python -m " in out
    assert " jacosr.data.prepare NAME --from PATH (a .npz, MNIST idx files, CIFAR" in out
