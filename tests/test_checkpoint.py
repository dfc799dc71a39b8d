"""Checkpoints on a tiny pytree: bit-exact round trip, verification (garbage bytes, missing
files, another config), fallback to the newest intact checkpoint, a checkpoint chosen by step,
the model item, stray temporary folders, read-only stores, the fault hook's spec; and the
documented layout of a training run's checkpoint, restored by plain Orbax. (Training-level
kills and resumption: test_train.)"""

import hashlib
import json
import re
import shutil
import warnings
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from jacosr.checkpoint import (
    CHECKPOINTS,
    FAULT_ENV,
    TMP_SUFFIX,
    CheckpointError,
    CheckpointStore,
    DamagedCheckpointError,
    DamagedCheckpointWarning,
    fault_point,
    state_digest,
)
from jacosr.workdir import WorkdirError

IDENTITY = {"lr": 0.1, "known": [0, 1]}


def _state(step: int) -> dict:
    return {
        "step": jnp.int32(step),
        "w": jnp.arange(2000, dtype=jnp.float32) * (step + 1),
        "b": jnp.full((7, 3), step, jnp.float32),
    }


def corrupt(checkpoint: Path) -> None:
    """Overwrite bytes in the middle of every array data file Orbax wrote in ``checkpoint``
    (OCDBT: ``state/d/*`` and ``state/ocdbt.process_0/d/*``)."""
    files = [p for p in (checkpoint / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, f"no data files in {checkpoint}"
    for path in files:
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 16] = b"\x7f" * 16
        path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """A workdir with checkpoints 1, 2, 3 of :func:`_state`."""
    workdir = tmp_path_factory.mktemp("saved")
    with CheckpointStore(workdir, keep=3) as store:
        for step in (1, 2, 3):
            store.save(step, _state(step), IDENTITY)
    return workdir


@pytest.fixture
def copy(saved, tmp_path) -> Path:
    shutil.copytree(saved, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _equal(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_round_trip_is_bit_exact_and_keeps_the_last_k(saved):
    # Every entry the store wrote is one that --overwrite may delete (CHECKPOINTS), and only
    # those: a user's file there is never taken for a checkpoint's.
    assert sorted(p.name for p in (saved / "checkpoints").iterdir()) == ["1", "2", "3"]
    assert all(re.fullmatch(CHECKPOINTS.entries, name) for name in ["1", f"4{TMP_SUFFIX}"])
    assert not any(re.fullmatch(CHECKPOINTS.entries, n) for n in ["MY_NOTES.txt", "4_best"])
    with CheckpointStore(saved, read_only=True) as store:
        assert store.steps() == [1, 2, 3]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            state, damaged = store.restore(_state(0), IDENTITY)
    assert damaged == [] and _equal(state, _state(3))


def test_keep_rotates_old_checkpoints(tmp_path):
    with CheckpointStore(tmp_path, keep=2) as store:
        for step in (1, 2, 3):
            store.save(step, _state(step), IDENTITY)
        assert store.steps() == [2, 3]


def test_state_digest_sees_values_dtypes_and_paths():
    base = state_digest(_state(1))
    assert state_digest(_state(1)) == base
    assert state_digest(_state(2)) != base
    assert state_digest({**_state(1), "b": _state(1)["b"].astype(jnp.bfloat16)}) != base
    assert state_digest({"x": _state(1)["w"]}) != state_digest({"y": _state(1)["w"]})


def test_a_corrupt_newest_checkpoint_falls_back_with_a_warning(copy):
    corrupt(copy / "checkpoints" / "3")
    with CheckpointStore(copy, read_only=True) as store:
        with pytest.warns(
            DamagedCheckpointWarning,
            match=r"checkpoint 3 in .* is damaged \(state/\S+ is changed\); using checkpoint 2, "
            r"the newest intact one",
        ):
            state, damaged = store.restore(_state(0), IDENTITY)
    assert damaged == [3] and _equal(state, _state(2))


def test_a_half_written_checkpoint_is_damaged(copy):
    (copy / "checkpoints" / "3" / "sha256.json").unlink()  # killed before the commit
    (copy / "checkpoints" / "2" / "state" / "manifest.ocdbt").unlink()
    with CheckpointStore(copy, read_only=True) as store:
        with pytest.warns(DamagedCheckpointWarning) as record:
            state, damaged = store.restore(_state(0), IDENTITY)
    assert damaged == [3, 2] and _equal(state, _state(1))
    assert [str(w.message).split(";")[0] for w in record] == [
        f"checkpoint 3 in {copy / 'checkpoints'} is damaged (its sha256.json is missing or "
        "unreadable)",
        f"checkpoint 2 in {copy / 'checkpoints'} is damaged (state/manifest.ocdbt is missing)",
    ]


def test_restored_values_are_checked_against_the_state_checksum(copy):
    # files consistent with sha256.json, but not with the state that was saved
    folder = copy / "checkpoints" / "3"
    (folder / "checksum" / "metadata").write_text(json.dumps({"sha256": "0" * 64}))
    digests = json.loads((folder / "sha256.json").read_text())
    digests["checksum/metadata"] = hashlib.sha256(
        (folder / "checksum" / "metadata").read_bytes()
    ).hexdigest()
    (folder / "sha256.json").write_text(json.dumps(digests))
    with CheckpointStore(copy, read_only=True) as store:
        with pytest.warns(
            DamagedCheckpointWarning,
            match=r"checkpoint 3 .* is damaged \(its data do not match the checksum saved with",
        ):
            state, damaged = store.restore(_state(0), IDENTITY)
    assert damaged == [3] and _equal(state, _state(2))


def test_no_intact_checkpoint_is_a_clear_error(copy):
    for step in (1, 2, 3):
        corrupt(copy / "checkpoints" / str(step))
    with CheckpointStore(copy, read_only=True) as store:
        with pytest.raises(
            DamagedCheckpointError,
            match=r"no intact checkpoint in .*checkpoints \(checkpoint 3: .*checkpoint 1: .*\); "
            r"pass --overwrite",
        ):
            store.restore(_state(0), IDENTITY)


def test_a_checkpoint_of_another_config_is_refused(saved):
    with CheckpointStore(saved, read_only=True) as store:
        with pytest.raises(
            WorkdirError,
            match=r"checkpoint 3 in .* was saved by a run with another config \(lr: 0.1 -> 0.2\); "
            r"choose another --workdir, or pass --overwrite",
        ):
            store.restore(_state(0), {**IDENTITY, "lr": 0.2})


def test_damaged_checkpoints_can_be_deleted_by_a_writable_store(copy):
    corrupt(copy / "checkpoints" / "3")
    with CheckpointStore(copy) as store:
        with pytest.warns(DamagedCheckpointWarning):
            _, damaged = store.restore(_state(0), IDENTITY)
        store.delete(damaged)
        assert store.steps() == [1, 2]
        store.save(3, _state(3), IDENTITY)  # the step can be saved again
        assert _equal(store.restore(_state(0), IDENTITY)[0], _state(3))


def test_stray_temporary_folders_go_when_a_writable_store_opens(copy):
    strays = [
        copy / "checkpoints" / "4.orbax-checkpoint-tmp",
        copy / "checkpoints" / "5.orbax-checkpoint-tmp-1712345678",
    ]
    for stray in strays:
        (stray / "state").mkdir(parents=True)
    mine = copy / "checkpoints" / f"notes{TMP_SUFFIX}"  # the user's, whatever its name says
    mine.mkdir()
    with CheckpointStore(copy, read_only=True) as store:
        assert store.steps() == [1, 2, 3]
    assert all(s.exists() for s in strays)  # a read-only store changes nothing
    with CheckpointStore(copy) as store:
        assert store.steps() == [1, 2, 3]
    assert not any(s.exists() for s in strays)
    assert mine.exists()


def test_a_read_only_store_creates_nothing_and_refuses_to_save(tmp_path):
    with CheckpointStore(tmp_path / "run", read_only=True) as store:
        assert store.steps() == []
        assert store.restore(_state(0), IDENTITY) == (None, [])
        with pytest.raises(RuntimeError, match=r"opened read-only"):
            store.save(1, _state(1), IDENTITY)
    assert not (tmp_path / "run").exists()


def test_keep_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match=r"keep must be >= 1"):
        CheckpointStore(tmp_path, keep=0)


def test_fault_spec_is_checked_and_inert_elsewhere(monkeypatch):
    monkeypatch.setenv(FAULT_ENV, "after-save:7")
    fault_point("after-save", 6)  # another step: nothing happens
    fault_point("after-step", 7)  # another point: nothing happens
    monkeypatch.setenv(FAULT_ENV, "after-sav:7")
    with pytest.raises(ValueError, match=r"expected <point>:<step> with point one of after-step"):
        fault_point("after-save", 7)


def test_a_full_disk_is_refused_before_writing(copy, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(free=300_000))
    with CheckpointStore(copy) as store:
        with pytest.raises(CheckpointError) as err:
            store.save(4, _state(4), IDENTITY)
        assert store.steps() == [1, 2, 3]
    assert str(err.value) == (
        f"could not write checkpoint 4 to {copy / 'checkpoints'}: No space left on device "
        "(0.3 MB free, about 1.1 MB needed); the last good checkpoint (step 3) in "
        f"{copy / 'checkpoints'} is intact (verified); make room (free disk space, or raise "
        "the file-size limit) and re-run the same command to resume"
    )
    assert not list((copy / "checkpoints").glob("4*"))


MODEL = {"image_shape": [8, 8, 1], "num_known": 6}


def test_a_checkpoint_is_chosen_by_step_and_never_replaced(copy):
    corrupt(copy / "checkpoints" / "2")
    with CheckpointStore(copy, read_only=True) as store:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            state, damaged = store.restore(_state(0), IDENTITY, step=1)
        assert damaged == [] and _equal(state, _state(1))
        with pytest.raises(
            DamagedCheckpointError,
            match=r"checkpoint 2 in .* is damaged \(state/\S+ is changed\); its intact "
            r"checkpoints are at steps \[1, 3\]$",
        ):
            store.restore(_state(0), IDENTITY, step=2)
        with pytest.raises(FileNotFoundError, match=r"no checkpoint 7 in .*at steps \[1, 2, 3\]"):
            store.restore(_state(0), IDENTITY, step=7)
        with pytest.raises(
            TypeError, match=r"step must be an int, one of the steps .* \(\[1, 2, 3\]\); got '2'"
        ):
            store.restore(_state(0), IDENTITY, step="2")
        with pytest.raises(WorkdirError, match=r"another config \(lr: 0.1 -> 0.2\)"):
            store.restore(_state(0), {**IDENTITY, "lr": 0.2}, step=1)


def test_the_model_item_is_stored_verified_and_optional(copy):
    with CheckpointStore(copy) as store:
        assert store.model() is None  # checkpoints saved without one
        store.save(4, _state(4), IDENTITY, model=MODEL)
        assert store.model() == store.model(4) == MODEL
        assert store.model(3) is None
        with pytest.raises(FileNotFoundError, match=r"no checkpoint 9 in"):
            store.model(9)
    folder = copy / "checkpoints" / "4"
    assert json.loads((folder / "model" / "metadata").read_text()) == MODEL  # plain JSON
    assert "model/metadata" in json.loads((folder / "sha256.json").read_text())
    (folder / "model" / "metadata").write_text(json.dumps({**MODEL, "num_known": 7}))
    with CheckpointStore(copy, read_only=True) as store:
        with pytest.raises(
            DamagedCheckpointError,
            match=r"checkpoint 4 in .* is damaged \(model/metadata is changed\); its intact "
            r"checkpoints are at steps \[2, 3\]$",  # 1 went when 4 was saved (keep=3)
        ):
            store.model(4)
        assert store.model() is None  # checkpoint 3's (4 is damaged)
    for step in (2, 3):
        corrupt(copy / "checkpoints" / str(step))
    with CheckpointStore(copy, read_only=True) as store:
        with pytest.raises(DamagedCheckpointError, match=r"is changed\); none is intact$"):
            store.model(4)


def _plain(tree, prefix=()) -> dict[tuple, np.ndarray]:
    """A nested dict/list of arrays as ``{key path: array}``."""
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list | tuple):
        items = enumerate(tree)
    else:
        return {prefix: np.asarray(tree)}
    return {k: v for key, sub in items for k, v in _plain(sub, (*prefix, str(key))).items()}


def test_plain_orbax_restores_a_training_checkpoint_as_documented(digits_run, tmp_path):
    """The checkpoint layout of jacosr.checkpoint's docstring, read by Orbax alone (no jacosr
    code, no template): the items, the model item's values (digits: 8x8x1 images, known
    classes 0..5, the default MLP), and the state's paths and arrays against the model that
    load_run restores."""
    from jacosr.runs import load_run

    workdir, _ = digits_run
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")  # the shared run: read-only
    items = dict(
        state=ocp.args.StandardRestore(),
        model=ocp.args.JsonRestore(),
        config=ocp.args.JsonRestore(),
    )
    with ocp.CheckpointManager((tmp_path / "checkpoints").absolute()) as manager:
        step = manager.latest_step()
        ckpt = manager.restore(step, args=ocp.args.Composite(**items))
    assert step == 2000 and ckpt["config"]["steps"] == 2000
    assert ckpt["model"] == {
        "image_shape": [8, 8, 1],
        "num_known": 6,
        "backbone": "mlp",
        "embed_dim": ckpt["config"]["model"]["embed_dim"],
        "head": "cosine",
        "rotation_head": False,
    }
    state = ckpt["state"]
    assert int(state["step"]) == 2000
    assert set(state) == {"step", "model", "opt_state"}
    width = ckpt["config"]["model"]["width"]
    params = state["model"]["params"]
    assert params["backbone"]["hidden"]["0"]["kernel"]["value"].shape == (8 * 8 * 1, width)
    prototypes = params["head"]["prototypes"]["value"]
    assert prototypes.shape == (6, ckpt["config"]["model"]["embed_dim"])
    momentum = state["opt_state"][1][0]["trace"]["head"]["prototypes"]["value"]
    assert momentum.shape == prototypes.shape
    # every array of the model, at the documented path (a "value" level per variable)
    _, _, _, model = load_run(workdir, data=False)
    plain = _plain(state["model"])
    ours = {
        tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path): leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(model)
    }
    assert all(path[-1] == "value" for path in ours)
    assert plain.keys() == ours.keys()
    for path, array in ours.items():
        np.testing.assert_array_equal(plain[path], np.asarray(array))
