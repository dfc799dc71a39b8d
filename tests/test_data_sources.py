"""Image sources: TFDS (mocked, and real array_record files written here without TensorFlow),
TinyImageNet and out-of-distribution folders generated with Pillow, the uint8 cache, the
prepare command, and open-set splits across sources."""

import logging
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jacosr.config import run_command
from jacosr.data import (
    DataConfig,
    DataNotPreparedError,
    load_open_set,
    load_source,
    protocol_a_config,
    protocol_b_config,
    tfds_sources,
)
from jacosr.data import prepare as prepare_module
from jacosr.data.folders import decode_image
from jacosr.data.labelled import DEFAULT_DATA_DIR, cache_path, load_cache, prepare_command
from jacosr.data.prepare import main, prepare

TFDS_EXPECTED = {  # name: (image shape, number of classes)
    "mnist": ((28, 28, 1), 10),
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "svhn_cropped": ((32, 32, 3), 10),
    "imagenet_resized/32x32": ((32, 32, 3), 1000),
}


# --- helpers ------------------------------------------------------------------------------


def write_tfds_array_record(data_dir: Path, name: str, splits: dict[str, tuple]) -> None:
    """Write a TFDS data set as TFDS would after ``download_and_prepare(file_format=
    "array_record")``: one shard per split plus dataset_info.json, from ``splits[split] =
    (images uint8 [N, H, W, C], labels [N])``. Needs no TensorFlow (images go in as PIL)."""
    from array_record.python.array_record_module import ArrayRecordWriter

    builder = tfds.builder(name, data_dir=str(data_dir / "tfds"), file_format="array_record")
    out = Path(builder.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    features = builder.info.features
    infos = []
    for split, (x, y) in splits.items():
        template = tfds.core.ShardedFileTemplate(
            data_dir=out,
            template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=builder.name,
            split=split,
            filetype_suffix="array_record",
        )
        writer = ArrayRecordWriter(
            str(out / f"{builder.name}-{split}.array_record-00000-of-00001"), "group_size:1"
        )
        for i, (img, label) in enumerate(zip(x, y, strict=True)):
            example = {}
            for key, feature in features.items():
                if key == "image":
                    example[key] = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
                elif key == "label":
                    example[key] = int(label)
                elif isinstance(feature, tfds.features.ClassLabel):
                    example[key] = 0
                else:
                    example[key] = f"{split}_{i}"
            writer.write(features.serialize_example(example))
        writer.close()
        infos.append(
            tfds.core.SplitInfo(
                name=split, shard_lengths=[len(x)], num_bytes=0, filename_template=template
            )
        )
    builder.info.set_splits(tfds.core.SplitDict(infos))
    builder.info.set_file_format("array_record")
    builder.info.write_to_directory(out)


def random_images(rng, n, shape):
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def save(img: np.ndarray, path: Path, fmt: str = "PNG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path, format=fmt)


def coded_image(code: int, size: int) -> np.ndarray:
    """A constant-colour image whose colour encodes ``code`` (decodes exactly from PNG)."""
    return np.broadcast_to(np.array([code, 255 - code, 7], np.uint8), (size, size, 3)).copy()


WNIDS = ["n03000000", "n01000000", "n02000000"]  # wnids.txt order; sorted: n01, n02, n03


def write_tinyimagenet(data_dir: Path, train_per_class=3) -> dict:
    """A small TinyImageNet in its distributed layout; returns the expected decoded arrays.

    Images are PNG data under .JPEG names (Pillow reads by content), so pixels are exact; the
    code of image i of class c is 10 * c + i for train and 100 + j for val image j.
    """
    root = data_dir / "tiny-imagenet-200"
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    sorted_wnids = sorted(WNIDS)
    train_x, train_y = [], []
    for c, wnid in enumerate(sorted_wnids):
        for i in range(train_per_class):
            img = coded_image(10 * c + i, 64)
            save(img, root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG")
            train_x.append(img)
            train_y.append(c)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("ignored\n")
    # val: flat folder, labels only in val_annotations.txt, listed out of class order
    val_labels = [2, 0, 1, 1, 0, 2, 2]
    lines, test_x = [], []
    for j, c in enumerate(val_labels):
        img = coded_image(100 + j, 64)
        save(img, root / "val" / "images" / f"val_{j}.JPEG")
        lines.append(f"val_{j}.JPEG\t{sorted_wnids[c]}\t0\t1\t62\t63")
        test_x.append(img)
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return {
        "train_x": np.stack(train_x),
        "train_y": np.array(train_y),
        "test_x": np.stack(test_x),
        "test_y": np.array(val_labels),
    }


def write_ood_folder(data_dir: Path, folder="LSUN", n=5) -> np.ndarray:
    """An ODIN-style folder: images one level down, plus files that are not images."""
    images = [coded_image(50 + i, 32) for i in range(n)]
    for i, img in enumerate(images):
        save(img, data_dir / folder / "test" / f"{i:04d}.png")
    (data_dir / folder / "README.txt").write_text("not an image")
    return np.stack(images)


# --- TFDS ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(TFDS_EXPECTED))
def test_tfds_sources_through_mock_data(tmp_path, name):
    shape, num_classes = TFDS_EXPECTED[name]
    with tfds.testing.mock_data(num_examples=12):
        src = load_source(name, tmp_path)
    assert src.name == name and src.num_classes == num_classes
    for x, y in ((src.train_x, src.train_y), (src.test_x, src.test_y)):
        assert x.shape == (12, *shape) and x.dtype == np.uint8
        assert y.shape == (12,) and y.dtype == np.int32
        assert 0 <= y.min() and y.max() < num_classes
    assert len(np.unique(src.train_x.reshape(12, -1), axis=0)) > 1  # not one repeated image
    assert cache_path(tmp_path, name).is_file()
    # the cache now serves it without TFDS (outside the mock nothing is prepared)
    again = load_source(name, tmp_path)
    np.testing.assert_array_equal(again.train_x, src.train_x)
    np.testing.assert_array_equal(again.test_y, src.test_y)


def test_tfds_real_array_record_files_read_without_tensorflow(tmp_path):
    rng = np.random.default_rng(0)
    splits = {
        "train": (random_images(rng, 6, (32, 32, 3)), np.array([3, 1, 4, 1, 5, 9])),
        "test": (random_images(rng, 4, (32, 32, 3)), np.array([2, 6, 5, 3])),
    }
    write_tfds_array_record(tmp_path, "cifar10", splits)
    src = load_source("cifar10", tmp_path)
    np.testing.assert_array_equal(src.train_x, splits["train"][0])  # PNG is lossless
    np.testing.assert_array_equal(src.train_y, splits["train"][1])
    np.testing.assert_array_equal(src.test_x, splits["test"][0])
    np.testing.assert_array_equal(src.test_y, splits["test"][1])
    assert src.num_classes == 10


def test_tfds_real_mnist_and_imagenet_validation_split(tmp_path):
    rng = np.random.default_rng(1)
    mnist = {
        s: (random_images(rng, 3, (28, 28, 1)), np.array([0, 7, 9])) for s in ("train", "test")
    }
    write_tfds_array_record(tmp_path, "mnist", mnist)
    src = load_source("mnist", tmp_path)
    np.testing.assert_array_equal(src.test_x, mnist["test"][0])
    imnet = {
        s: (random_images(rng, 2, (32, 32, 3)), np.array([999, 0])) for s in ("train", "validation")
    }
    write_tfds_array_record(tmp_path, "imagenet_resized/32x32", imnet)
    src = load_source("imagenet_resized/32x32", tmp_path)
    np.testing.assert_array_equal(src.test_x, imnet["validation"][0])
    assert src.num_classes == 1000
    assert cache_path(tmp_path, "imagenet_resized/32x32").name == "imagenet_resized-32x32.npz"


def test_prepare_command_names_the_data_dir_unless_it_is_the_default(tmp_path):
    assert prepare_command("cifar10") == "python -m jacosr.data.prepare cifar10"
    assert prepare_command("cifar10", DEFAULT_DATA_DIR) == "python -m jacosr.data.prepare cifar10"
    assert (
        prepare_command("imagenet_resized/32x32", tmp_path / "my data")
        == f"python -m jacosr.data.prepare imagenet_resized/32x32 --data-dir '{tmp_path}/my data'"
    )


@pytest.mark.parametrize("name", sorted(TFDS_EXPECTED))
@pytest.mark.parametrize("tensorflow", [True, False])
def test_tfds_not_prepared_says_why_and_the_exact_command(
    tmp_path, name, tensorflow, monkeypatch, caplog
):
    monkeypatch.setattr(tfds_sources, "has_tensorflow", lambda: tensorflow)
    with caplog.at_level(logging.WARNING), pytest.raises(DataNotPreparedError) as err:
        load_source(name, tmp_path)
    command = f"`python -m jacosr.data.prepare {name} --data-dir {tmp_path}`"
    install = " (it needs TensorFlow: pip install 'jacosr[data]')" if not tensorflow else ""
    files = {
        "mnist": "idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, .gz or not",
        "cifar10": "cifar-10-batches-py: data_batch_1..5, test_batch, batches.meta",
        "cifar100": "cifar-100-python: train, test, meta",
        "svhn_cropped": "train_32x32.mat and test_32x32.mat",
    }
    own = (
        f", or, from your own copy ({files[name]}), `python -m jacosr.data.prepare {name} "
        f"--from PATH --data-dir {tmp_path}` with PATH the folder that holds it"
        if name in files
        else ""
    )
    assert str(err.value) == (
        f"the TFDS data set {name!r} is not prepared: {tmp_path / 'tfds' / name} does not exist; "
        f"run {command}{install}{own}"
    )
    assert caplog.records == []  # not TFDS's warning about a "variant folder" it never had
    assert not (tmp_path / "cache").exists()  # nothing half-written


def test_tfds_folder_that_tfds_cannot_read_is_to_be_deleted(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_sources, "has_tensorflow", lambda: True)
    (tmp_path / "tfds" / "cifar10" / "3.0.2").mkdir(parents=True)  # a build that stopped
    with pytest.raises(DataNotPreparedError) as err:
        load_source("cifar10", tmp_path)
    folder = tmp_path / "tfds" / "cifar10"
    assert str(err.value) == (
        f"the TFDS data set 'cifar10' in {folder} cannot be read: it holds no finished "
        f"array_record build (it was built as TFRecord, or its build stopped); delete {folder}, "
        f"then run `python -m jacosr.data.prepare cifar10 --data-dir {tmp_path}`, or, from your "
        "own copy (cifar-10-batches-py: data_batch_1..5, test_batch, batches.meta), "
        f"`python -m jacosr.data.prepare cifar10 --from PATH --data-dir {tmp_path}` with PATH the "
        "folder that holds it"
    )


def test_not_prepared_through_the_open_set_config(tmp_path):
    with pytest.raises(
        DataNotPreparedError,
        match=rf"python -m jacosr\.data\.prepare cifar10 --data-dir {re.escape(str(tmp_path))}`",
    ):
        load_open_set(protocol_a_config("cifar10", 0, data_dir=tmp_path))


def test_prepare_without_tensorflow_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tfds_sources, "has_tensorflow", lambda: False)
    with pytest.raises(ImportError, match=r"needs TensorFlow.*pip install 'jacosr\[data\]'"):
        prepare("svhn_cropped", tmp_path)
    with pytest.raises(SystemExit) as exit_:
        run_command(main, ["cifar100", "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: building the TFDS data set 'cifar100' needs TensorFlow, which is not installed; "
        "install it with: pip install 'jacosr[data]'\n"
    )


def test_build_tfds_asks_tfds_for_array_record(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_sources, "has_tensorflow", lambda: True)
    calls = []

    class FakeBuilder:
        def download_and_prepare(self):
            calls.append("download_and_prepare")

    def fake_builder(name, **kwargs):
        calls.append((name, kwargs))
        return FakeBuilder()

    monkeypatch.setattr(tfds, "builder", fake_builder)
    tfds_sources.build_tfds("cifar10", tmp_path)
    assert calls == [
        ("cifar10", {"data_dir": str(tmp_path / "tfds"), "file_format": "array_record"}),
        "download_and_prepare",
    ]


def test_prepare_builds_then_caches(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    splits = {
        s: (random_images(rng, 4, (32, 32, 3)), np.array([0, 1, 2, 3])) for s in ("train", "test")
    }
    built = []

    def fake_build(name, data_dir):
        built.append(name)
        write_tfds_array_record(Path(data_dir), name, splits)

    monkeypatch.setattr(prepare_module, "build_tfds", fake_build)
    path = prepare("svhn_cropped", tmp_path)
    assert built == ["svhn_cropped"]
    assert path == cache_path(tmp_path, "svhn_cropped") and path.is_file()
    np.testing.assert_array_equal(load_cache(path, "svhn_cropped").train_x, splits["train"][0])
    prepare("svhn_cropped", tmp_path)  # prepared already: nothing is built again
    assert built == ["svhn_cropped"]


# --- TinyImageNet -------------------------------------------------------------------------


def test_tinyimagenet_layout_and_class_convention(tmp_path):
    expected = write_tinyimagenet(tmp_path)
    src = load_source("tinyimagenet", tmp_path)
    assert src.num_classes == 3
    assert src.train_x.shape == (9, 64, 64, 3) and src.train_x.dtype == np.uint8
    # class index = position in sorted wnids.txt, not in file order
    for key, value in expected.items():
        np.testing.assert_array_equal(getattr(src, key), value)


def test_tinyimagenet_greyscale_jpeg_becomes_rgb(tmp_path):
    write_tinyimagenet(tmp_path)
    grey = np.full((64, 64), 200, np.uint8)
    save(grey, tmp_path / "tiny-imagenet-200/val/images/val_0.JPEG", fmt="JPEG")
    src = load_source("tinyimagenet", tmp_path)
    assert src.test_x.shape == (7, 64, 64, 3)
    assert np.abs(src.test_x[0].astype(int) - 200).max() <= 2  # JPEG of a flat grey


def test_tinyimagenet_resized_to_32(tmp_path):
    write_tinyimagenet(tmp_path)
    data = load_open_set(
        DataConfig(
            dataset="tinyimagenet",
            known=(0, 2),
            data_dir=tmp_path,
            image_size=32,
            val_fraction=0.34,
        )
    )
    assert data.image_shape == (32, 32, 3)
    assert data.unknown_test.x.shape[1:] == (32, 32, 3)
    # constant images stay exactly constant under resizing
    np.testing.assert_array_equal(data.known_test.x[:, 5, 7], data.known_test.x[:, 0, 0])


def test_tinyimagenet_missing_says_where_and_how(tmp_path):
    with pytest.raises(DataNotPreparedError) as err:
        load_source("tinyimagenet", tmp_path)
    root = tmp_path / "tiny-imagenet-200"
    assert str(err.value) == (
        f"TinyImageNet is not prepared: {root} does not exist. Unzip "
        f"http://cs231n.stanford.edu/tiny-imagenet-200.zip into {tmp_path} (giving "
        f"{root}/wnids.txt, train/, val/), then run "
        f"`python -m jacosr.data.prepare tinyimagenet --data-dir {tmp_path}`"
    )


def test_tinyimagenet_bad_annotation_line(tmp_path):
    write_tinyimagenet(tmp_path)
    ann = tmp_path / "tiny-imagenet-200/val/val_annotations.txt"
    ann.write_text(ann.read_text() + "val_9.JPEG\tn09999999\t0\t0\t1\t1\n")
    with pytest.raises(ValueError, match=r"val_annotations\.txt:8: expected .*'val_9\.JPEG"):
        load_source("tinyimagenet", tmp_path)


def test_tinyimagenet_missing_val_image(tmp_path):
    write_tinyimagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200/val/images/val_3.JPEG").unlink()
    with pytest.raises(
        DataNotPreparedError,
        match=r"^TinyImageNet is incomplete: .*val_3\.JPEG \(listed in val_annotations",
    ):
        load_source("tinyimagenet", tmp_path)


def test_tinyimagenet_class_without_training_images(tmp_path):
    write_tinyimagenet(tmp_path)
    for f in (tmp_path / "tiny-imagenet-200/train/n02000000/images").iterdir():
        f.unlink()
    with pytest.raises(DataNotPreparedError, match=r"no training images in .*n02000000/images"):
        load_source("tinyimagenet", tmp_path)


# --- out-of-distribution folders ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"),
    [
        ("imagenet_crop", "Imagenet"),
        ("imagenet_resize", "Imagenet_resize"),
        ("lsun_crop", "LSUN"),
        ("lsun_resize", "LSUN_resize"),
    ],
)
def test_ood_folders(tmp_path, name, folder):
    images = write_ood_folder(tmp_path, folder)
    src = load_source(name, tmp_path)
    assert src.num_classes == 1
    assert src.train_x.shape == (0, 32, 32, 3) and len(src.train_y) == 0
    np.testing.assert_array_equal(src.test_x, images)  # sorted by path, README ignored
    np.testing.assert_array_equal(src.test_y, np.zeros(len(images)))


@pytest.mark.parametrize("empty_folder", [False, True])
def test_ood_folder_missing(tmp_path, empty_folder):
    root = tmp_path / "LSUN_resize"
    if empty_folder:
        (root / "test").mkdir(parents=True)
    with pytest.raises(DataNotPreparedError) as err:
        load_source("lsun_resize", tmp_path)
    cause = f"{root} holds no images" if empty_folder else f"{root} does not exist"
    assert str(err.value) == (
        f"lsun_resize is not prepared: {cause}. Unpack the ODIN authors' LSUN_resize.tar.gz "
        f"(linked from github.com/facebookresearch/odin) into {tmp_path}, then run "
        f"`python -m jacosr.data.prepare lsun_resize --data-dir {tmp_path}`"
    )


def test_decode_image_centre_crops_then_resizes(tmp_path):
    # 40 wide, 32 high: the centre 32x32 square is kept as is
    cols = np.tile(np.arange(40, dtype=np.uint8)[None, :, None] * 5, (32, 1, 3))
    save(cols, tmp_path / "wide.png")
    np.testing.assert_array_equal(decode_image(tmp_path / "wide.png", 32), cols[:, 4:36])
    # 36x36 of one colour, resized to 32x32, stays that colour
    save(np.full((36, 36, 3), 90, np.uint8), tmp_path / "big.png")
    out = decode_image(tmp_path / "big.png", 32)
    assert out.shape == (32, 32, 3) and np.all(out == 90)
    # greyscale becomes RGB
    save(np.full((32, 32), 10, np.uint8), tmp_path / "grey.png")
    assert decode_image(tmp_path / "grey.png", 32).shape == (32, 32, 3)


# --- open-set splits across sources -------------------------------------------------------


def test_protocol_b_unknowns_from_an_ood_folder(tmp_path):
    images = write_ood_folder(tmp_path, "Imagenet_resize", n=4)
    with tfds.testing.mock_data(num_examples=60):
        data = load_open_set(protocol_b_config("imagenet_resize", data_dir=tmp_path))
    assert data.known_classes == tuple(range(10))
    np.testing.assert_array_equal(data.unknown_test.x, images)
    desc = data.describe()
    assert desc["source"] == "cifar10" and desc["unknown_source"] == "imagenet_resize"
    assert desc["unknown_classes"] == [0]


def test_cifar_plus_10_unknowns_from_cifar100(tmp_path):
    with tfds.testing.mock_data(num_examples=300):
        data = load_open_set(protocol_a_config("cifar+10", 1, data_dir=tmp_path))
        cifar100 = load_source("cifar100", tmp_path)
    unknown = (41, 9, 49, 40, 73, 60, 48, 30, 95, 71)
    mask = np.isin(cifar100.test_y, unknown)
    assert mask.any()
    np.testing.assert_array_equal(data.unknown_test.x, cifar100.test_x[mask])
    np.testing.assert_array_equal(data.unknown_test.y, cifar100.test_y[mask])
    desc = data.describe()
    assert desc["benchmark"] == "cifar+10" and desc["protocol_split"] == 1
    assert desc["known_classes"] == [6, 7, 1, 9] and desc["unknown_classes"] == list(unknown)
    assert desc["unknown_source"] == "cifar100"


def test_mnist_benchmark_is_resized_to_32(tmp_path):
    with tfds.testing.mock_data(num_examples=100):
        data = load_open_set(protocol_a_config("mnist", 0, data_dir=tmp_path))
    assert data.image_shape == (32, 32, 1)
    assert data.unknown_test.x.shape[1:] == (32, 32, 1)
    assert set(np.unique(data.unknown_test.y)) <= {0, 1, 6, 7}


def test_ood_unknowns_resized_to_the_known_resolution(tmp_path):
    write_tinyimagenet(tmp_path)
    write_ood_folder(tmp_path, "LSUN")
    config = DataConfig(
        dataset="tinyimagenet",
        known=(0, 1, 2),
        unknown_dataset="lsun_crop",
        data_dir=tmp_path,
        val_fraction=0.34,
    )
    data = load_open_set(config)
    assert data.unknown_test.x.shape == (5, 64, 64, 3)
    data32 = load_open_set(DataConfig(**{**config.__dict__, "image_size": 32}))
    assert data32.image_shape == (32, 32, 3) and data32.unknown_test.x.shape == (5, 32, 32, 3)


def test_ood_folder_cannot_be_the_known_source(tmp_path):
    write_ood_folder(tmp_path, "LSUN")
    with pytest.raises(ValueError, match="'lsun_crop' has no training images"):
        load_open_set(DataConfig(dataset="lsun_crop", known=(0, 1), data_dir=tmp_path))


# --- the cache ----------------------------------------------------------------------------


def test_second_load_reads_the_cache(tmp_path):
    expected = write_tinyimagenet(tmp_path)
    load_source("tinyimagenet", tmp_path)
    for f in sorted((tmp_path / "tiny-imagenet-200").rglob("*"), reverse=True):
        f.unlink() if f.is_file() else f.rmdir()
    src = load_source("tinyimagenet", tmp_path)  # the raw folder is gone
    np.testing.assert_array_equal(src.train_x, expected["train_x"])
    np.testing.assert_array_equal(src.test_y, expected["test_y"])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garbage(path: Path) -> None:
    path.write_bytes(b"not a zip file at all")


def _wrong_dtype(path: Path) -> None:
    with np.load(path) as z:
        arrays = dict(z)
    arrays["train_x"] = arrays["train_x"].astype(np.float32)
    np.savez(path, **arrays)


def _missing_key(path: Path) -> None:
    with np.load(path) as z:
        arrays = {k: v for k, v in z.items() if k != "test_y"}
    np.savez(path, **arrays)


@pytest.mark.parametrize("damage", [_truncate, _garbage, _wrong_dtype, _missing_key])
def test_damaged_cache_is_rebuilt_with_a_warning(tmp_path, damage):
    images = write_ood_folder(tmp_path, "LSUN")
    path = cache_path(tmp_path, "lsun_crop")
    load_source("lsun_crop", tmp_path)
    damage(path)
    with pytest.warns(
        UserWarning, match=re.escape(f"rebuilt the unreadable cache {path} from the raw data")
    ):
        src = load_source("lsun_crop", tmp_path)
    np.testing.assert_array_equal(src.test_x, images)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rewritten: no warning the next time
        np.testing.assert_array_equal(load_source("lsun_crop", tmp_path).test_x, images)


def test_damaged_cache_without_raw_data_is_not_prepared(tmp_path):
    """One error with both causes, and no warning promising a rebuild that cannot happen."""
    path = cache_path(tmp_path, "lsun_crop")
    path.parent.mkdir(parents=True)
    _garbage(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataNotPreparedError) as err:
            load_source("lsun_crop", tmp_path)
    assert str(err.value).startswith(f"lsun_crop is not prepared: {tmp_path / 'LSUN'} does not")
    assert str(err.value).endswith(
        f"`python -m jacosr.data.prepare lsun_crop --data-dir {tmp_path}` (its cache {path} is "
        "unreadable too)"
    )


def test_interrupted_cache_write_leaves_no_cache(tmp_path, monkeypatch):
    write_ood_folder(tmp_path, "LSUN")

    def failing_savez(f, **arrays):
        f.write(b"PK partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", failing_savez)
    with pytest.raises(KeyboardInterrupt):
        load_source("lsun_crop", tmp_path)
    monkeypatch.undo()
    assert list((tmp_path / "cache").iterdir()) == []  # neither a cache nor a temporary file
    assert load_source("lsun_crop", tmp_path).test_x.shape == (5, 32, 32, 3)


# --- the prepare command ------------------------------------------------------------------


def test_prepare_command_line(tmp_path, capsys):
    write_ood_folder(tmp_path, "LSUN")
    write_ood_folder(tmp_path, "Imagenet", n=2)
    paths = main(["lsun_crop", "imagenet_crop", "--data-dir", str(tmp_path)])
    assert paths == [cache_path(tmp_path, "lsun_crop"), cache_path(tmp_path, "imagenet_crop")]
    out = capsys.readouterr().out
    assert f"lsun_crop: ready, cached in {cache_path(tmp_path, 'lsun_crop')}" in out
    assert all(path.is_file() for path in paths)


def test_prepare_force_rebuilds(tmp_path):
    write_ood_folder(tmp_path, "LSUN", n=5)
    prepare("lsun_crop", tmp_path)
    write_ood_folder(tmp_path, "LSUN", n=7)  # two more images arrive
    assert load_source("lsun_crop", tmp_path).test_x.shape[0] == 5  # the cache wins
    prepare("lsun_crop", tmp_path, force=True)
    assert load_source("lsun_crop", tmp_path).test_x.shape[0] == 7


def test_prepare_refuses_what_needs_no_preparation(tmp_path, capsys):
    with pytest.raises(ValueError, match="nothing to prepare for 'digits'"):
        prepare("digits", tmp_path)
    with pytest.raises(ValueError, match=r"^nothing to prepare for 'toy2d'; built-in data sets"):
        main(["toy2d", "--data-dir", str(tmp_path)])
    with pytest.raises(ValueError, match=r"^name at least one data set to prepare, out of: mnist"):
        main(["--data-dir", str(tmp_path)])


def test_missing_folder_through_the_command_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_command(main, ["lsun_crop", "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: lsun_crop is not prepared: {tmp_path / 'LSUN'} does not exist")
    assert err.endswith(f"`python -m jacosr.data.prepare lsun_crop --data-dir {tmp_path}`\n")
    assert err.count("\n") == 1
