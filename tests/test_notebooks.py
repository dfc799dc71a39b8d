"""Every notebook executes top to bottom on an experiment's workdir built from the suite's
shared digits run, reads it without writing there, and shows its progress bars as Jupyter
widgets (no "IProgress not found")."""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from jacosr.data import load_open_set
from jacosr.models import ModelConfig
from jacosr.recipe import TrainConfig
from jacosr.tracking import TrackConfig
from jacosr.train import fit

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory, digits_run):
    """An experiment's workdir: ``runs/movr/seed0``, a copy of the digits run, and ``train/``,
    a tiny run trained by ``fit`` alone (no results.json) with tracking on (dynamics.jsonl)."""
    workdir = tmp_path_factory.mktemp("experiment")
    shutil.copytree(digits_run[0], workdir / "runs" / "movr" / "seed0")
    tiny = TrainConfig(
        model=ModelConfig(width=32, embed_dim=16),
        steps=40,
        log_every=20,
        checkpoint_every=20,
        track=TrackConfig(track_points=3, track_samples=50),
    )
    fit(tiny, load_open_set(tiny.data), workdir / "train", progress=False)
    return workdir


def _outputs(nb, kind=None):
    return [
        o for c in nb.cells for o in c.get("outputs", []) if o["output_type"] == kind or not kind
    ]


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_explores_an_experiments_run_without_writing(
    path, tmp_path, monkeypatch, experiment
):
    monkeypatch.setenv("JACOSR_WORKDIR", str(experiment))
    monkeypatch.setenv("JACOSR_RUN", "train")  # the run without results.json, with dynamics
    monkeypatch.setenv("MPLBACKEND", "Agg")
    before = {p: p.stat().st_mtime_ns for p in experiment.rglob("*")}
    nb = nbformat.read(path, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    assert not _outputs(nb, "error")
    assert before == {p: p.stat().st_mtime_ns for p in experiment.rglob("*")}
    text = "".join(o.get("text", "") for o in _outputs(nb, "stream"))
    assert "IProgress" not in text  # tqdm.auto found ipywidgets
    assert f"picked {experiment / 'train'}" in text
    assert "0 runs/movr/seed0 \n1 train (no results.json)" in text
    assert "the same in every row" in text  # the dynamics rows were read
    assert "checkpoints at steps [20, 40]" in text
    tables = [
        o["data"]["text/markdown"] for o in _outputs(nb) if "text/markdown" in o.get("data", {})
    ]
    assert tables and tables[0].startswith("| run | accuracy | loss auroc | loss oscr |")
    assert any(WIDGET in o.get("data", {}) for o in _outputs(nb, "display_data"))


def test_there_are_notebooks():
    assert NOTEBOOKS
