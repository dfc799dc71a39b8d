"""Data from the user's own files: every format written here as the real files are laid out
(MNIST idx, gzipped or not; CIFAR's Python 2 pickles; SVHN's .mat; class folders; .npz), read
back without TensorFlow, checked against the arrays written and hand-computed layouts; the
prepare command's --from route, named data sets in DataConfig, and the messages."""

import gzip
import io
import json
import os
import pickle
import re
import shutil
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from jacosr.config import USER_ERRORS, run_command
from jacosr.data import (
    SOURCES,
    DataConfig,
    DataNotPreparedError,
    check_available,
    load_open_set,
    load_source,
    open_set_split,
    paper_augmentation,
    read_files,
    source_from_arrays,
)
from jacosr.data.files import find_format, read_idx
from jacosr.data.labelled import cache_path, load_cache
from jacosr.data.prepare import main, prepare

# --- writers of the real layouts -------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    """An idx file: 0, 0, 0x08 (unsigned byte), ndim, the sizes as big-endian uint32, data."""
    head = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(folder: Path, parts: dict, *, gz: bool = True, sep: str = "-") -> None:
    """MNIST's four files, from ``parts[part] = (images [N, 28, 28], labels [N])`` with part
    ``train`` or ``t10k``; ``gz``: gzipped as distributed; ``sep="."``: Kaggle's names."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, (x, y) in parts.items():
        for kind, array, dims in (("images", x, 3), ("labels", y, 1)):
            name = f"{part}-{kind}{sep}idx{dims}-ubyte" + (".gz" if gz else "")
            data = idx_bytes(array)
            (folder / name).write_bytes(gzip.compress(data) if gz else data)


class Py2Pickler(pickle._Pickler):
    """Pickles as Python 2's cPickle wrote CIFAR's files (protocol 2): byte strings as STRING
    opcodes (``str`` in Python 2) and NumPy's functions under ``numpy.core``."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_bytes(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_bytes


def py2_pickle(path: Path, obj) -> None:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    path.write_bytes(buffer.getvalue().replace(b"numpy._core.", b"numpy.core."))


def cifar_rows(x: np.ndarray) -> np.ndarray:
    """``[N, 32, 32, 3]`` -> CIFAR's rows ``[N, 3072]``: the red, green, blue planes."""
    return x.transpose(0, 3, 1, 2).reshape(len(x), 3072)


def write_cifar10(folder: Path, batches: list, test: tuple, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for i, (x, y) in enumerate(batches, start=1):
        batch = {b"batch_label": b"training batch", b"labels": [int(v) for v in y]}
        py2_pickle(folder / f"data_batch_{i}", {**batch, b"data": cifar_rows(x)})
    x, y = test
    py2_pickle(folder / "test_batch", {b"labels": [int(v) for v in y], b"data": cifar_rows(x)})
    meta = {b"label_names": [n.encode() for n in names], b"num_cases_per_batch": 10000}
    py2_pickle(folder / "batches.meta", meta)


def write_cifar100(folder: Path, train: tuple, test: tuple, names: list[str]) -> None:
    folder.mkdir(parents=True)
    for part, (x, y) in (("train", train), ("test", test)):
        fine = [int(v) for v in y]
        record = {b"fine_labels": fine, b"coarse_labels": [v // 5 for v in fine]}
        py2_pickle(folder / part, {**record, b"data": cifar_rows(x)})
    meta = {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": [b"c"]}
    py2_pickle(folder / "meta", meta)


def write_svhn(folder: Path, parts: dict) -> None:
    """``parts[part] = (images [N, 32, 32, 3], digits [N])`` as ``<part>_32x32.mat``: X
    ``[32, 32, 3, N]``, y ``[N, 1]`` with the digit 0 stored as 10."""
    folder.mkdir(parents=True, exist_ok=True)
    for part, (x, digits) in parts.items():
        y = np.where(digits == 0, 10, digits).astype(np.uint8)[:, None]
        scipy.io.savemat(folder / f"{part}_32x32.mat", {"X": np.moveaxis(x, 0, -1), "y": y})


def write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def images(rng, n: int, shape: tuple) -> np.ndarray:
    return rng.integers(0, 256, (n, *shape), dtype=np.uint8)


def mnist_parts(rng, n_train: int = 30, n_test: int = 20) -> dict:
    return {
        part: (images(rng, n, (28, 28)), (np.arange(n) % 10).astype(np.uint8))
        for part, n in (("train", n_train), ("t10k", n_test))
    }


# --- MNIST idx ------------------------------------------------------------------------------


def test_idx_header_is_big_endian_and_the_data_row_major(tmp_path):
    # Two 2x3 images, written byte by byte: magic 0x00000803, sizes 2, 2, 3, then 0..11.
    raw = bytes.fromhex("00000803000000020000000200000003") + bytes(range(12))
    (tmp_path / "f").write_bytes(raw)
    x = read_idx(tmp_path / "f", 3)
    assert x.shape == (2, 2, 3) and x.dtype == np.uint8
    assert x[1, 0, 2] == 1 * 6 + 0 * 3 + 2
    (tmp_path / "f.gz").write_bytes(gzip.compress(raw))
    np.testing.assert_array_equal(read_idx(tmp_path / "f.gz", 3), x)


@pytest.mark.parametrize(
    "gz, sep, where",
    [(True, "-", "."), (False, "-", "MNIST/raw"), (False, ".", "archive")],
    ids=["as-distributed", "torchvision-unpacked", "kaggle-names"],
)
def test_mnist_idx_files(tmp_path, gz, sep, where):
    parts = mnist_parts(np.random.default_rng(0))
    write_mnist(tmp_path / where, parts, gz=gz, sep=sep)
    assert find_format(tmp_path) == ("mnist-idx", tmp_path / where)
    source = read_files(tmp_path, name="m")
    assert source.name == "m" and source.num_classes == 10
    np.testing.assert_array_equal(source.train_x, parts["train"][0][..., None])
    np.testing.assert_array_equal(source.test_x, parts["t10k"][0][..., None])
    np.testing.assert_array_equal(source.train_y, parts["train"][1])
    assert source.train_y.dtype == np.int32


def test_mnist_beside_its_gz_as_torchvision_keeps_both(tmp_path):
    parts = mnist_parts(np.random.default_rng(1))
    write_mnist(tmp_path, parts, gz=True)
    write_mnist(tmp_path, parts, gz=False)
    np.testing.assert_array_equal(read_files(tmp_path).test_x[..., 0], parts["t10k"][0])


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda b: b[:-5], r"holds 15675 bytes of data but its header says 20x28x28 = 15680"),
        (lambda b: b"\x00\x00\x08\x01" + b[4:], r"starts with the bytes 00000801, not 00000803"),
        (lambda b: gzip.compress(b)[:-9], r"is a damaged gzip file"),
    ],
    ids=["truncated", "labels-magic", "damaged-gzip"],
)
def test_damaged_idx_files_name_the_file_and_the_fault(tmp_path, damage, message):
    write_mnist(tmp_path, mnist_parts(np.random.default_rng(2)), gz=False)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        read_files(tmp_path)


# --- CIFAR python pickles ------------------------------------------------------------------


def test_cifar10_rows_are_red_green_blue_planes(tmp_path):
    rng = np.random.default_rng(3)
    batches = [(images(rng, 4, (32, 32, 3)), rng.integers(0, 10, 4)) for _ in range(5)]
    test = (images(rng, 3, (32, 32, 3)), np.array([9, 0, 1]))
    names = [f"class{i}" for i in range(10)]
    write_cifar10(tmp_path / "root" / "cifar-10-batches-py", batches, test, names)
    # Hand-made: set bytes of the first test row and check where they land.
    path = tmp_path / "root" / "cifar-10-batches-py" / "test_batch"
    rows = cifar_rows(test[0])
    rows[0, 0], rows[0, 1024 + 32 * 1 + 2], rows[0, 2048 + 32 * 31 + 31] = 11, 22, 33
    py2_pickle(path, {b"labels": [9, 0, 1], b"data": rows})
    source = read_files(tmp_path / "root")
    assert source.test_x[0, 0, 0, 0] == 11  # red of pixel (row 0, column 0)
    assert source.test_x[0, 1, 2, 1] == 22  # green of pixel (1, 2)
    assert source.test_x[0, 31, 31, 2] == 33  # blue of pixel (31, 31)
    np.testing.assert_array_equal(source.train_x, np.concatenate([x for x, _ in batches]))
    np.testing.assert_array_equal(source.train_y, np.concatenate([y for _, y in batches]))
    np.testing.assert_array_equal(source.test_y, [9, 0, 1])
    assert source.class_names == tuple(names) and source.num_classes == 10


def test_cifar100_reads_the_fine_labels(tmp_path):
    rng = np.random.default_rng(4)
    train = (images(rng, 6, (32, 32, 3)), np.array([0, 99, 5, 6, 7, 8]))
    test = (images(rng, 2, (32, 32, 3)), np.array([42, 3]))
    names = [f"fine{i}" for i in range(100)]
    write_cifar100(tmp_path / "cifar-100-python", train, test, names)
    source = read_files(tmp_path)
    np.testing.assert_array_equal(source.train_x, train[0])
    np.testing.assert_array_equal(source.train_y, train[1])
    np.testing.assert_array_equal(source.test_y, [42, 3])
    assert source.num_classes == 100 and source.class_names[99] == "fine99"


class RunsCode:
    def __reduce__(self):
        return os.system, ("touch pwned",)


def test_a_pickle_that_asks_for_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "data_batch_1", "wb") as f:
        pickle.dump({b"data": RunsCode(), b"labels": []}, f, protocol=4)
    shutil.copy(folder / "data_batch_1", folder / "test_batch")
    with pytest.raises(
        ValueError,
        match=r"cannot be read as a CIFAR python pickle: it asks for posix\.system, which is not",
    ):
        read_files(tmp_path)
    assert not (tmp_path / "pwned").exists()


# --- SVHN .mat ------------------------------------------------------------------------------


def test_svhn_mat_images_are_the_last_axis_and_10_is_zero(tmp_path):
    rng = np.random.default_rng(5)
    parts = {
        "train": (images(rng, 5, (32, 32, 3)), np.array([0, 1, 9, 0, 5])),
        "test": (images(rng, 3, (32, 32, 3)), np.array([3, 0, 7])),
    }
    write_svhn(tmp_path, parts)
    mat = scipy.io.loadmat(tmp_path / "test_32x32.mat")
    assert mat["X"].shape == (32, 32, 3, 3) and mat["y"].ravel().tolist() == [3, 10, 7]
    source = read_files(tmp_path)
    np.testing.assert_array_equal(source.train_x, parts["train"][0])
    np.testing.assert_array_equal(source.test_x[1], mat["X"][:, :, :, 1])
    np.testing.assert_array_equal(source.train_y, [0, 1, 9, 0, 5])
    np.testing.assert_array_equal(source.test_y, [3, 0, 7])


# --- .npz and arrays ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys", [("train_x", "train_y", "test_x", "test_y"), ("x_train", "y_train", "x_test", "y_test")]
)
def test_npz_with_jacosr_or_keras_names_and_greyscale_images(tmp_path, keys):
    rng = np.random.default_rng(6)
    arrays = (images(rng, 8, (5, 7)), np.arange(8) % 3, images(rng, 4, (5, 7)), np.arange(4))
    np.savez(tmp_path / "mine.npz", **dict(zip(keys, arrays, strict=True)))
    source = read_files(tmp_path / "mine.npz")
    assert source.name == "mine" and source.num_classes == 4  # the largest label + 1
    assert source.train_x.shape == (8, 5, 7, 1)
    np.testing.assert_array_equal(source.test_x[..., 0], arrays[2])


@pytest.mark.parametrize(
    "change, message",
    [
        ({"train_x": np.zeros((4, 5, 5, 1), np.float32)}, r"train_x must be uint8 images .*255\)"),
        ({"train_x": np.full((4, 5, 5, 1), 300)}, r"train_x must be uint8 images in \[0, 255\]"),
        ({"test_y": np.array([0.0, 1.0])}, r"test_y must be integer class indices"),
        ({"train_y": np.array([0, -1, 0, 1])}, r"train_y holds the negative class index -1"),
        ({"train_y": np.array([0, 1, 0])}, r"train_x holds 4 images but train_y 3 labels"),
        ({"test_x": np.zeros((2, 6, 5, 1), np.uint8)}, r"train images are 5x5x1 but test .*6x5x1"),
        ({"test_x": np.zeros((0, 5, 5, 1), np.uint8)}, r"the test partition holds no images"),
        ({"num_classes": 1}, r"num_classes is 1, but a label is 1"),
        ({"class_names": ["a"]}, r"1 class names for 2 classes"),
    ],
)
def test_arrays_that_are_not_images_and_labels_are_refused(change, message):
    arrays = {
        "train_x": np.zeros((4, 5, 5, 1), np.uint8),
        "train_y": np.array([0, 1, 0, 1]),
        "test_x": np.zeros((2, 5, 5, 1), np.uint8),
        "test_y": np.array([1, 0]),
    }
    arrays.update(change)
    if "test_x" in change and len(change["test_x"]) == 0:
        arrays["test_y"] = np.zeros(0, int)
    with pytest.raises(ValueError, match=message):
        source_from_arrays("x", **arrays)


# --- class folders of images ----------------------------------------------------------------


def test_image_folder_classes_are_the_sorted_folder_names(tmp_path):
    rng = np.random.default_rng(7)
    written = {}
    for part, n in (("train", 2), ("test", 1)):
        for name in ("zebra", "ant", "cat"):
            for i in range(n):
                image = images(rng, 1, (6, 6, 3))[0]
                # deeper files are found too (torchvision's ImageFolder does the same)
                where = f"{part}/{name}/{'sub/' if i else ''}{i}.png"
                write_png(tmp_path / where, image)
                written[where] = image
    source = read_files(tmp_path)
    assert source.class_names == ("ant", "cat", "zebra") and source.num_classes == 3
    np.testing.assert_array_equal(source.train_y, [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(source.train_x[5], written["train/zebra/sub/1.png"])
    np.testing.assert_array_equal(source.test_x[0], written["test/ant/0.png"])


def test_image_folder_greyscale_test_only_and_sizes(tmp_path):
    rng = np.random.default_rng(8)
    write_png(tmp_path / "test/only/a.png", images(rng, 1, (4, 4, 1))[0])
    write_png(tmp_path / "test/only/b.png", images(rng, 1, (8, 6, 1))[0])
    with pytest.raises(
        ValueError, match=r"b\.png is 6x8 pixels but .*a\.png is 4x4; .*--image-size"
    ):
        read_files(tmp_path)
    source = read_files(tmp_path, image_size=4)
    assert source.test_x.shape == (2, 4, 4, 1) and source.train_x.shape == (0, 4, 4, 1)
    write_png(tmp_path / "test/only/c.png", images(rng, 1, (4, 4, 3))[0])
    assert read_files(tmp_path, image_size=4).test_x.shape == (3, 4, 4, 3)  # one in colour


# --- finding the format ----------------------------------------------------------------------


def test_find_format_names_what_it_found_or_what_it_reads(tmp_path):
    rng = np.random.default_rng(9)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_format(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ValueError, match=r"found no data files in .* mnist-idx: idx files"):
        find_format(tmp_path)
    write_mnist(tmp_path / "MNIST" / "raw", mnist_parts(rng))
    write_svhn(
        tmp_path / "svhn", {p: (images(rng, 1, (32, 32, 3)), [1]) for p in ("train", "test")}
    )
    with pytest.raises(
        ValueError, match=r"several data sets \(svhn in .*svhn, mnist-idx in .*raw\)"
    ):
        find_format(tmp_path)
    with pytest.raises(ValueError, match=r"does not hold cifar10 files"):
        read_files(tmp_path / "svhn", "cifar10")
    assert read_files(tmp_path / "svhn", "svhn").num_classes == 10
    with pytest.raises(ValueError, match=r"train_32x32\.mat is a file jacosr does not read: .*"):
        read_files(tmp_path / "svhn" / "train_32x32.mat")


# --- prepare --from, and named data sets ----------------------------------------------------


@pytest.fixture
def mnist_files(tmp_path):
    parts = mnist_parts(np.random.default_rng(10), n_train=60, n_test=20)
    write_mnist(tmp_path / "files", parts)
    return tmp_path / "files", parts


def test_prepare_from_files_makes_a_named_data_set(tmp_path, mnist_files, capsys):
    files, parts = mnist_files
    data_dir = tmp_path / "data"
    with pytest.raises(DataNotPreparedError, match=r"no data set 'my-digits'"):
        check_available(DataConfig(dataset="my-digits", data_dir=data_dir))
    assert main(["my-digits", "--from", str(files), "--data-dir", str(data_dir)]) == [
        cache_path(data_dir, "my-digits")
    ]
    out = capsys.readouterr().out
    assert out == (
        f"my-digits: ready, cached in {data_dir}/cache/my-digits.npz\n"
        "  60 train and 20 test images of 28x28x1, 10 classes\n"
        f"  train on it: python -m jacosr.train --dataset my-digits --data-dir {data_dir} "
        "--workdir runs/my-digits\n"
    )
    config = DataConfig(dataset="my-digits", known=(1, 3), unknown=(7,), data_dir=data_dir)
    data = load_open_set(config)
    assert data.source == "my-digits" and data.image_shape == (28, 28, 1)
    np.testing.assert_array_equal(data.unknown_test.x[:, :, :, 0], parts["t10k"][0][[7, 17]])
    assert json.loads(json.dumps(data.describe()))["sha256"] == data.fingerprints


def test_prepare_standard_name_from_files_serves_the_benchmark(tmp_path, mnist_files):
    files, _ = mnist_files
    prepare("mnist", tmp_path, source=files)
    data = load_open_set(DataConfig(benchmark="mnist", protocol_split=1, data_dir=tmp_path))
    assert data.source == "mnist" and data.image_shape == (32, 32, 1)  # as ARPL, resized
    assert data.known_classes == (3, 2, 6, 9, 4, 0)
    with pytest.raises(ValueError, match=r"holds 28x28x1 images of 10 classes, but cifar10 has"):
        prepare("cifar10", tmp_path, source=files)


def test_prepare_refuses_other_files_under_a_taken_name_without_force(tmp_path, mnist_files):
    files, parts = mnist_files
    prepare("mine", tmp_path, source=files)
    prepare("mine", tmp_path, source=files)  # the same files again: nothing to do
    write_mnist(files, mnist_parts(np.random.default_rng(11), n_train=60, n_test=20))
    with pytest.raises(ValueError, match=r"holds other data under the name 'mine' .*--force"):
        prepare("mine", tmp_path, source=files)
    prepare("mine", tmp_path, source=files, force=True)
    assert not np.array_equal(load_source("mine", tmp_path).test_x[..., 0], parts["t10k"][0])


def test_prepare_from_arrays_keeps_class_names(tmp_path, capsys):
    source = source_from_arrays(
        "ignored",
        np.zeros((4, 3, 3), np.uint8),
        [0, 1, 0, 1],
        np.ones((2, 3, 3), np.uint8),
        [1, 0],
        class_names=["cat", "dog"],
    )
    path = prepare("pets", tmp_path, source=source)
    loaded = load_cache(path, "pets")
    assert loaded.class_names == ("cat", "dog") and loaded.train_x.shape == (4, 3, 3, 1)


@pytest.mark.parametrize(
    "name, message",
    [
        ("digits", r"'digits' is built in and is not read from other files"),
        ("tinyimagenet", r"'tinyimagenet' is built in"),
        ("../up", r"'\.\./up' cannot name a data set"),
        ("imagenet_resized-32x32", r"cannot name a data set"),  # the built-in's cache file
    ],
)
def test_prepare_from_refuses_names_it_cannot_use(tmp_path, mnist_files, name, message):
    with pytest.raises(ValueError, match=message):
        prepare(name, tmp_path, source=mnist_files[0])


def test_names_without_data_say_how_to_bring_them(tmp_path, capsys):
    with pytest.raises(DataNotPreparedError) as err:
        load_source("mine", tmp_path)
    assert str(err.value) == (
        f"there is no data set 'mine' in {tmp_path}: it is not built in "
        f"({', '.join(sorted(SOURCES))}), "
        "and "
        f"{tmp_path}/cache/mine.npz does not exist; to bring your own files under that name run "
        f"`python -m jacosr.data.prepare mine --from PATH --data-dir {tmp_path}` "
        "(see python -m jacosr.data.prepare --help)"
    )
    with pytest.raises(SystemExit) as exit_:
        run_command(main, ["mine", "--data-dir", str(tmp_path)])
    assert exit_.value.code == 2
    assert capsys.readouterr().err == (
        "error: nothing to prepare for 'mine'; to make your own files a data set named 'mine', "
        "pass --from PATH; built-in data sets that can be prepared are: mnist, cifar10, "
        "cifar100, svhn_cropped, imagenet_resized/32x32, tinyimagenet, imagenet_crop, "
        "imagenet_resize, lsun_crop, lsun_resize\n"
    )


def test_a_damaged_cache_of_your_own_data_set_says_to_prepare_it_again(tmp_path, mnist_files):
    path = prepare("mine", tmp_path, source=mnist_files[0])
    assert main(["mine", "--data-dir", str(tmp_path)]) == [path]  # prepared: ready
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataNotPreparedError) as err:
        load_source("mine", tmp_path)
    assert str(err.value) == (
        f"the cache {path} of your data set 'mine' is unreadable (damaged or truncated); "
        f"prepare it again from your files: `python -m jacosr.data.prepare mine --from PATH "
        f"--data-dir {tmp_path} --force`"
    )


# --- bad labels and damaged files: one line naming the file, nothing written ----------------


def command_error(argv: list[str], capsys, command=main) -> str:
    """Run ``command`` as ``python -m`` does; check that it stops with exit status 2 and one
    line ``error: <message>``, and return the message."""
    with pytest.raises(SystemExit) as exit_:
        run_command(command, argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.endswith("\n") and err.count("\n") == 1, err
    return err[len("error: ") : -1]


def labelled_npz(path: Path, train_y, test_y, **extra) -> Path:
    """A .npz of 4x4 grey images with these labels (and the ``extra`` arrays)."""
    rng = np.random.default_rng(12)
    train_x, test_x = images(rng, len(train_y), (4, 4)), images(rng, len(test_y), (4, 4))
    np.savez(path, train_x=train_x, train_y=train_y, test_x=test_x, test_y=test_y, **extra)
    return path


def big_npz(folder: Path, save=np.savez) -> Path:
    """``folder/mine.npz`` of 3 classes, whose train_x is larger than 4 KiB: its header is then
    parsed before the zip's checksum of it is read (at the end of the array)."""
    rng = np.random.default_rng(18)
    folder.mkdir()
    save(
        folder / "mine.npz",
        train_x=images(rng, 20, (16, 16)),
        train_y=np.arange(20) % 3,
        test_x=images(rng, 3, (16, 16)),
        test_y=[0, 1, 2],
        num_classes=3,
        class_names=["a", "b", "c"],
    )
    return folder / "mine.npz"


BEYOND = "beyond the int32 labels jacosr keeps; number the classes 0..K-1"
RENUMBER = (
    "number the classes 0..K-1 (np.searchsorted(classes, y) does, with classes the np.unique "
    "of the train and test labels together), or give num_classes to keep classes without images"
)


@pytest.mark.parametrize(
    "train_y, message",
    [
        ([0, 1, 2**32 + 1, 2], f"train_y holds the class index 4294967297, {BEYOND}"),
        ([0, 1, 2**31, 2], f"train_y holds the class index 2147483648, {BEYOND}"),
        (
            [1, 2, 3, 1],
            "the labels are 3 distinct values from 1 to 3, which leaves 1 of the classes 0..3 "
            f"without images (class 0 first); {RENUMBER}",
        ),
        (
            [0, 1, 10**9, 1],
            "the labels are 3 distinct values from 0 to 1000000000, which leaves 999999998 of "
            f"the classes 0..1000000000 without images (class 2 first); {RENUMBER}",
        ),
    ],
    ids=["wraps-to-1", "wraps-negative", "one-based", "sparse"],
)
def test_labels_that_would_wrap_or_leave_classes_empty_are_refused_before_writing(
    tmp_path, capsys, train_y, message
):
    # Cast to int32, 2**32 + 1 became 1 (two classes merged in silence) and 2**31 a negative
    # label that the cache, once written, refused.
    test_y = [1, 2] if train_y[0] == 1 else [0, 1]
    path = labelled_npz(tmp_path / "mine.npz", np.array(train_y, np.int64), test_y)
    err = command_error(["mine", "--from", str(path), "--data-dir", str(tmp_path / "d")], capsys)
    assert err == f"{path}: {message}"
    assert not (tmp_path / "d").exists()


def test_a_known_class_without_training_images_is_refused_before_training(tmp_path, capsys):
    from jacosr.train import main as train_main

    # num_classes keeps classes without images (as an image folder's empty class folder does).
    path = labelled_npz(tmp_path / "mine.npz", np.arange(40) % 4, np.arange(8) % 4, num_classes=300)
    prepare("mine", tmp_path, source=path)
    assert load_source("mine", tmp_path).num_classes == 300
    workdir = tmp_path / "run"
    argv = ["--dataset", "mine", "--known", "0", "299", "--data-dir", str(tmp_path)]
    err = command_error([*argv, "--workdir", str(workdir)], capsys, train_main)
    # The class's own index, not 1, the label it would have had among the known classes.
    assert err == (
        "the known classes [299] of 'mine' have no training images; of its classes 0..299, "
        "these have training images: 0..3"
    )
    assert not workdir.exists()
    grey = np.zeros((5, 2, 2), np.uint8)
    source = source_from_arrays("few", grey, [0, 0, 0, 0, 1], grey[:1], [0])
    with pytest.raises(
        ValueError,
        match=re.escape(
            "the known classes [1] of 'few' have no training images (they are all held out as "
            "known-val: lower val_fraction); of its classes 0..1, these have training images: 0..1"
        ),
    ):
        open_set_split(source, (0, 1), val_fraction=0.6)


def cifar_folder(folder: Path) -> Path:
    """CIFAR-10's files holding one training batch of two images and two test images."""
    rng = np.random.default_rng(13)
    batch = (images(rng, 2, (32, 32, 3)), np.array([0, 1]))
    test = (images(rng, 2, (32, 32, 3)), np.array([1, 0]))
    write_cifar10(folder, [batch], test, [f"c{i}" for i in range(10)])
    return folder


def truncated_npz(folder: Path) -> tuple[Path, Path, str]:
    folder.mkdir()
    path = labelled_npz(folder / "mine.npz", [0, 1], [0, 1])
    path.write_bytes(path.read_bytes()[:300])
    return path, path, r"a \.npz of arrays: File is not a zip file; write it again \(np\.savez, .*"


def garbled_npz_header(folder: Path) -> tuple[Path, Path, str]:
    path = big_npz(folder)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"'shape': (20, 16, 16), }", b"'shape': (20, 16, 16(, }"))
    assert path.read_bytes() != raw
    return path, path, r"a \.npz of arrays: .*EOF in multi-line statement.*; write it again .*"


def damaged_deflate_stream(folder: Path) -> tuple[Path, Path, str]:
    path = big_npz(folder, np.savez_compressed)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        start = z.getinfo("train_x.npy").header_offset
    name, extra = struct.unpack("<HH", raw[start + 26 : start + 30])
    raw[start + 30 + name + extra] = 0b111  # the final deflate block, of the reserved type 3
    path.write_bytes(raw)
    return (
        path,
        path,
        r"a \.npz of arrays: Error -3 while decompressing data: invalid block type; .*",
    )


def pickle_of_2_to_the_62_bytes(folder: Path) -> tuple[Path, Path, str]:
    # A damaged size field of a pickle asks for more memory than there is: MemoryError.
    cifar_folder(folder)
    path = folder / "data_batch_1"
    path.write_bytes(b"\x80\x04" + pickle.BINBYTES8 + struct.pack("<Q", 2**62) + b"ab")
    return folder, path, r"a CIFAR python pickle: MemoryError; replace it by an intact copy .*"


def pickle_frame_beyond_any_size(folder: Path) -> tuple[Path, Path, str]:
    # ... or more than an index can hold: OverflowError.
    cifar_folder(folder)
    path = folder / "test_batch"
    path.write_bytes(b"\x80\x04" + pickle.FRAME + struct.pack("<Q", 2**63) + b"ab")
    return folder, path, r"a CIFAR python pickle: FRAME length exceeds .*; replace it .*"


def png_of_60000_by_60000(folder: Path) -> tuple[Path, Path, str]:
    path = folder / "test" / "cat" / "big.png"
    write_png(path, np.zeros((2, 2, 1), np.uint8))
    raw = bytearray(path.read_bytes())
    raw[16:24] = struct.pack(">II", 60000, 60000)  # IHDR's width and height, then its CRC
    raw[29:33] = struct.pack(">I", zlib.crc32(raw[12:29]))
    path.write_bytes(raw)
    return (
        folder,
        path,
        r"an image: Image size \(3600000000 pixels\) exceeds limit .*; remove it .*",
    )


def truncated_png(folder: Path) -> tuple[Path, Path, str]:
    path = folder / "test" / "cat" / "cut.png"
    write_png(path, images(np.random.default_rng(16), 1, (16, 16, 3))[0])
    path.write_bytes(path.read_bytes()[:400])
    return folder, path, r"an image: image file is truncated.*; remove it or replace it .*"


@pytest.mark.parametrize(
    "damage",
    [
        truncated_npz,
        garbled_npz_header,
        damaged_deflate_stream,
        pickle_of_2_to_the_62_bytes,
        pickle_frame_beyond_any_size,
        png_of_60000_by_60000,
        truncated_png,
    ],
    ids=lambda damage: damage.__name__,
)
def test_damaged_files_are_one_line_naming_the_file(tmp_path, capsys, damage):
    source, damaged, message = damage(tmp_path / "files")
    err = command_error(["mine", "--from", str(source), "--data-dir", str(tmp_path / "d")], capsys)
    assert re.fullmatch(re.escape(f"{damaged} cannot be read as ") + message, err), err
    assert not (tmp_path / "d").exists()


def test_a_stray_file_among_the_cifar_batches_is_ignored_with_a_warning(tmp_path):
    folder = cifar_folder(tmp_path / "cifar-10-batches-py")
    expected = read_files(folder)
    (folder / "data_batch_1.bak").write_bytes(b"an old copy")
    message = f"ignored data_batch_1.bak in {folder}: CIFAR-10's training batches are data_batch_1"
    with pytest.warns(UserWarning, match=re.escape(message)):
        source = read_files(folder)
    np.testing.assert_array_equal(source.train_x, expected.train_x)


@pytest.mark.parametrize(
    "damage",
    [(b"(20, 16, 16, 1), }", b"(20, 16, 16, 1(, }"), (b"(20, 16, 16, 1)", b"(20, 12, 16, 1)")],
    ids=["unbalanced", "shorter"],  # a shorter array leaves its checksum unread
)
def test_a_garbled_cache_header_says_to_prepare_it_again(tmp_path, damage):
    rng = np.random.default_rng(17)
    train_x, test_x = images(rng, 20, (16, 16)), images(rng, 2, (16, 16))  # train_x > 4 KiB
    path = prepare(
        "mine", tmp_path, source=source_from_arrays("m", train_x, np.arange(20) % 2, test_x, [0, 1])
    )
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"'shape': " + damage[0], b"'shape': " + damage[1], 1))
    assert path.read_bytes() != raw
    with pytest.raises(DataNotPreparedError, match=re.escape(f"the cache {path} of your data")):
        load_open_set(DataConfig(dataset="mine", known=(0, 1), data_dir=tmp_path))


# --- fuzzed files -----------------------------------------------------------------------------


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One seeded damage: one to three flipped bits, a truncation, or one to eight inserted
    random bytes."""
    b = bytearray(raw)
    kind = rng.integers(3)
    if kind == 0:
        for at in rng.integers(len(b), size=rng.integers(1, 4)):
            b[at] ^= 1 << int(rng.integers(8))
    elif kind == 1:
        del b[rng.integers(len(b)) :]
    else:
        at = rng.integers(len(b) + 1)
        b[at:at] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
    return bytes(b)


def fuzz_mnist(folder: Path) -> Path:
    write_mnist(folder, mnist_parts(np.random.default_rng(19), 4, 3), gz=False)
    return folder


FUZZED = {
    "npz": big_npz,
    "npz-compressed": lambda folder: big_npz(folder, np.savez_compressed),
    "mnist-idx": fuzz_mnist,
    "cifar10": cifar_folder,
}
FUZZ_COUNT = 100
"""Damaged files tried per format."""


@pytest.mark.parametrize("kind", FUZZED)
def test_fuzzed_files_are_read_or_refused_in_one_line(tmp_path, kind):
    """Seeded damage to one file at a time: prepare either caches data that read back, or
    raises one of USER_ERRORS naming the file (what the command prints as one line ``error:
    ...`` with exit status 2; anything else would print a traceback), and writes nothing."""
    rng = np.random.default_rng(list(FUZZED).index(kind))
    source = FUZZED[kind](tmp_path / "files")
    originals = {p: p.read_bytes() for p in sorted((tmp_path / "files").iterdir())}
    files, refused = list(originals), 0
    for i in range(FUZZ_COUNT):
        damaged = files[rng.integers(len(files))]
        damaged.write_bytes(mutate(originals[damaged], rng))
        data_dir = tmp_path / f"d{i}"
        try:
            path = prepare("mine", data_dir, source=source)
        except USER_ERRORS as err:
            assert str(damaged) in str(err) or str(source) in str(err), err
            assert not data_dir.exists()
            refused += 1
        else:
            assert load_cache(path, "mine") is not None  # what the command describes
        damaged.write_bytes(originals[damaged])
    assert refused > FUZZ_COUNT // 2  # the damage reaches the readers


def test_no_flip_is_recorded_with_your_own_data_and_changes_only_with_force(tmp_path, capsys):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    y = np.repeat(np.arange(2), 10)
    np.savez(tmp_path / "a.npz", train_x=x, train_y=y, test_x=x[:4], test_y=y[:4])
    common = ["--from", str(tmp_path / "a.npz"), "--data-dir", str(tmp_path)]
    main(["letters", *common, "--no-flip"])
    assert "not flipped by the augmentation (--no-flip)" in capsys.readouterr().out
    assert load_cache(cache_path(tmp_path, "letters"), "letters").flips is False
    assert paper_augmentation("letters", tmp_path) == "translate"
    main(["letters", *common, "--no-flip"])  # the same again: nothing to do
    with pytest.raises(
        ValueError, match=r"holds these data, prepared with --no-flip; pass --force"
    ):
        main(["letters", *common])
    main(["letters", *common, "--force"])
    assert paper_augmentation("letters", tmp_path) == "weak"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["mnist", "--no-flip"], r"--no-flip apply to your own files: pass --from PATH"),
        (["cifar10", "--from", "FILES", "--no-flip"], r"--no-flip is for data sets of your own"),
    ],
)
def test_no_flip_is_for_your_own_files(tmp_path, argv, message):
    argv = [str(tmp_path) if a == "FILES" else a for a in argv]
    with pytest.raises(ValueError, match=message):
        main([*argv, "--data-dir", str(tmp_path / "data")])
    assert not (tmp_path / "data").exists()
