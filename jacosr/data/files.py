"""Data sets from the files users have, read without TensorFlow: NumPy arrays, ``.npz``, class
folders of images, MNIST/Fashion-MNIST idx files, the CIFAR-10/100 python pickles and SVHN
``.mat`` files.

Two routes, one per use:

- In Python, :func:`jacosr.data.source_from_arrays` (arrays in memory) or :func:`read_files`
  (files on disk) gives a :class:`LabelledSource`; :func:`jacosr.data.open_set_split` makes it the
  :class:`~jacosr.data.OpenSetData` that :func:`jacosr.train.fit` trains on.
- A named data set, for the command line and for runs that read their data again
  (:func:`jacosr.train.run`, :func:`jacosr.runs.load_run`, every experiment):
  ``python -m jacosr.data.prepare NAME --from PATH`` (:func:`jacosr.data.prepare.prepare`, which
  also takes a source made from arrays) reads the files once into the uint8 cache
  ``<data_dir>/cache/NAME.npz``; ``--dataset NAME`` then trains on it. Under a standard name
  (``STANDARD``: ``mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``) the files stand in for
  the TFDS download, and ``--benchmark`` uses them.

The formats (:data:`FORMATS`; ``format="auto"`` tells them apart by their file names, in PATH
and up to two folder levels below it, so the folder torchvision downloaded into works as it is:
``<root>/MNIST/raw``, ``<root>/cifar-10-batches-py``, ``<root>/train_32x32.mat``):

  npz           a ``.npz`` file with train_x, train_y, test_x, test_y (jacosr's cache names)
                or x_train, y_train, x_test, y_test (Keras's ``mnist.npz``): images uint8
                ``[N, H, W]`` or ``[N, H, W, C]``, labels integer ``[N]``; optionally
                num_classes and class_names
  mnist-idx     train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte,
                t10k-labels-idx1-ubyte, each gzipped (``.gz``, as distributed) or not: MNIST or
                Fashion-MNIST, 28x28x1
  cifar10       data_batch_1..5 and test_batch (``cifar-10-batches-py``), class names from
                batches.meta: 32x32x3, 10 classes; other ``data_batch_*`` files (a
                ``data_batch_1.bak``) are ignored, with a warning naming them
  cifar100      train, test and meta (``cifar-100-python``): the 100 fine labels, 32x32x3
  svhn          train_32x32.mat and test_32x32.mat (cropped digits; label 10 is the digit 0,
                as TFDS and torchvision read it; extra_32x32.mat is not read): 32x32x3
  image-folder  train/<class>/ and test/<class>/ holding PNG, JPEG or BMP images (at any depth
                below the class folder); class index = position of the folder name in the
                sorted names of all class folders; only test/: a test-only source (unknowns,
                like Protocol B's out-of-distribution sets). Greyscale when every image is,
                else RGB. Images of different sizes need ``image_size``

Every reader gives uint8 ``[N, H, W, C]`` images and int32 labels, checked by
:func:`jacosr.data.arrays.source_from_arrays`; ``image_size`` resizes the result
(:func:`jacosr.data.resize_source`; image folders crop each image to a centred square first).
A file that is not what its name says (a truncated idx file or .npz, a pickle that is not
CIFAR's, a damaged image) is a ``ValueError`` naming the file and what is wrong with it.

The CIFAR files are pickles, and loading a pickle can run any code it names. They are read with
an unpickler that builds dicts, lists, strings, numbers and NumPy arrays only (all that CIFAR's
files hold) and refuses anything else.
"""

from __future__ import annotations

import gzip
import math
import pickle
import re
import warnings
import zlib
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jacosr.data.arrays import labels_of, source_from_arrays
from jacosr.data.folders import IMAGE_SUFFIXES, decode_images, open_image
from jacosr.data.labelled import CACHE_ERRORS, LabelledSource, resize_source

SEARCH_DEPTH = 2
"""How many folder levels below PATH ``format="auto"`` looks for a format's files."""


def _source_from_file(path: Path, name: str, *arrays, **kwargs) -> LabelledSource:
    """:func:`source_from_arrays` of the arrays read from ``path`` (a file or folder); its
    errors name ``path``."""
    try:
        return source_from_arrays(name, *arrays, **kwargs)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err


# --- where each format's files are ---------------------------------------------------------


def _folders(path: Path) -> list[Path]:
    """``path`` and its folders up to :data:`SEARCH_DEPTH` levels below, breadth first, in
    sorted order (hidden folders skipped)."""
    found, level = [], [path] if path.is_dir() else []
    for _ in range(SEARCH_DEPTH + 1):
        found += level
        level = [
            sub
            for folder in level
            for sub in sorted(folder.iterdir())
            if sub.is_dir() and not sub.name.startswith(".")
        ]
    return found


def _has_files(*names: str) -> Callable[[Path], bool]:
    return lambda folder: all((folder / name).is_file() for name in names)


_MNIST_FILE = re.compile(r"(train|t10k)-(images|labels)[-.]idx([13])-ubyte(\.gz)?")


def _is_mnist(folder: Path) -> bool:
    return any(_MNIST_FILE.fullmatch(p.name) for p in folder.iterdir() if p.is_file())


def _is_image_folder(folder: Path) -> bool:
    test = folder / "test"
    return test.is_dir() and any(p.is_dir() for p in test.iterdir())


# --- readers ---------------------------------------------------------------------------------


def read_npz(path: Path) -> LabelledSource:
    """A ``.npz`` of arrays (see the module docstring for its keys)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (*CACHE_ERRORS, MemoryError) as err:
        # It fails as a damaged cache does; a damaged header can also claim a huge array.
        raise ValueError(
            f"{path} cannot be read as a .npz of arrays: {str(err) or type(err).__name__}; "
            "write it again (np.savez, of numeric and string arrays only)"
        ) from err
    for keys in (
        ("train_x", "train_y", "test_x", "test_y"),
        ("x_train", "y_train", "x_test", "y_test"),
    ):
        if all(k in arrays for k in keys):
            num_classes, names = arrays.get("num_classes"), arrays.get("class_names")
            if num_classes is not None and not (
                num_classes.size == 1 and np.issubdtype(num_classes.dtype, np.integer)
            ):
                raise ValueError(
                    f"{path}: num_classes is {num_classes.dtype}{list(num_classes.shape)}, "
                    "expected one integer"
                )
            if names is not None and names.ndim != 1:
                raise ValueError(
                    f"{path}: class_names is {names.dtype}{list(names.shape)}, expected one "
                    "name per class [K]"
                )
            return _source_from_file(
                path,
                path.stem,
                *(arrays[k] for k in keys),
                num_classes=None if num_classes is None else int(num_classes.item()),
                class_names=None if names is None else [str(c) for c in names],
            )
    raise ValueError(
        f"{path} holds the arrays {sorted(arrays)}; expected train_x, train_y, test_x, test_y "
        "(or Keras's x_train, y_train, x_test, y_test)"
    )


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An idx file of unsigned bytes with ``ndim`` dimensions (LeCun's MNIST format: the bytes
    0, 0, 0x08, ndim, then ndim big-endian uint32 sizes, then the data), gzipped or not."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":  # gzip's magic number
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as err:
            raise ValueError(f"{path} is a damaged gzip file ({err})") from err
    head = 4 + 4 * ndim
    if len(raw) < head or raw[:4] != bytes([0, 0, 0x08, ndim]):
        raise ValueError(
            f"{path} is not an idx file of unsigned bytes with {ndim} dimensions: it starts "
            f"with the bytes {raw[:4].hex()}, not 000008{ndim:02x}"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    data = np.frombuffer(raw, np.uint8, offset=head)
    if data.size != math.prod(shape):
        raise ValueError(
            f"{path} holds {data.size} bytes of data but its header says "
            f"{'x'.join(map(str, shape))} = {math.prod(shape)}: it is truncated or damaged"
        )
    return data.reshape(shape)


def _mnist_file(folder: Path, part: str, kind: str) -> Path:
    # torchvision keeps both the .gz and its unpacked copy: the same data, either will do.
    found = sorted(
        (
            p
            for p in folder.iterdir()
            if (m := _MNIST_FILE.fullmatch(p.name)) and m.group(1, 2) == (part, kind)
        ),
        key=lambda p: p.suffix == ".gz",
    )
    if not found:
        raise ValueError(
            f"{folder} has no {part}-{kind}-idx{1 if kind == 'labels' else 3}-ubyte[.gz]"
        )
    return found[0]


def read_mnist_idx(folder: Path) -> LabelledSource:
    """MNIST or Fashion-MNIST from the four idx files in ``folder``."""
    arrays = []
    for part in ("train", "t10k"):
        images = read_idx(_mnist_file(folder, part, "images"), 3)
        labels = read_idx(_mnist_file(folder, part, "labels"), 1)
        arrays += [images, labels]
    return _source_from_file(folder, folder.name, *arrays)


_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }
)


class _ArrayUnpickler(pickle.Unpickler):
    """Builds plain Python objects and NumPy arrays, and nothing else (see the module
    docstring)."""

    def find_class(self, module: str, name: str):
        old = module.replace("numpy._core", "numpy.core")
        if (old, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which is not allowed")
        if old.startswith("numpy.core") and hasattr(np, "_core"):
            module = old.replace("numpy.core", "numpy._core")  # renamed in NumPy 2
        return super().find_class(module, name)


def read_pickle(path: Path) -> dict:
    """One CIFAR python pickle as a dict with str keys (the files' keys are Python 2 strings)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except (
        pickle.UnpicklingError,
        EOFError,
        ValueError,
        TypeError,
        AttributeError,
        # A damaged size field asks for an object larger than memory or than an index.
        MemoryError,
        OverflowError,
    ) as err:
        raise ValueError(
            f"{path} cannot be read as a CIFAR python pickle: {str(err) or type(err).__name__}; "
            "replace it by an intact copy of CIFAR's file"
        ) from err
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not CIFAR's dict")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    batch = read_pickle(path)
    if "data" not in batch or label_key not in batch:
        raise ValueError(
            f"{path} has the keys {sorted(batch, key=str)}; expected data and {label_key}"
        )
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(
            f"{path}: data is {data.dtype}{list(data.shape)}, expected uint8 [N, 3072]"
        )
    labels = labels_of(batch[label_key], f"{path}: {label_key}")
    if len(labels) != len(data):
        raise ValueError(f"{path} holds {len(data)} images but {len(labels)} {label_key}")
    # Each row holds the red, green and blue planes of a 32x32 image, each row-major.
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), labels


def _cifar_names(path: Path, key: str) -> list[str] | None:
    if not path.is_file():
        return None
    names = read_pickle(path).get(key)
    if names is None:
        return None
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        raise ValueError(f"{path}: {key} is not a list of names")
    return [n.decode("latin1") if isinstance(n, bytes) else n for n in names]


_CIFAR_BATCH = re.compile(r"data_batch_[0-9]+")


def read_cifar10(folder: Path) -> LabelledSource:
    """CIFAR-10 from ``cifar-10-batches-py``: data_batch_1..5 (train), test_batch."""
    found = sorted(folder.glob("data_batch_*"))
    batches = [p for p in found if _CIFAR_BATCH.fullmatch(p.name)]
    ignored = [p.name for p in found if p not in batches]
    if ignored:
        warnings.warn(
            f"ignored {', '.join(ignored)} in {folder}: CIFAR-10's training batches are "
            "data_batch_1..5",
            stacklevel=2,
        )
    batches.sort(key=lambda p: int(p.name.rpartition("_")[2]))
    train = [_cifar_batch(p, "labels") for p in batches]
    test_x, test_y = _cifar_batch(folder / "test_batch", "labels")
    return _source_from_file(
        folder,
        folder.name,
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test_x,
        test_y,
        num_classes=10,
        class_names=_cifar_names(folder / "batches.meta", "label_names"),
    )


def read_cifar100(folder: Path) -> LabelledSource:
    """CIFAR-100 from ``cifar-100-python``: train, test, meta; the 100 fine labels."""
    train_x, train_y = _cifar_batch(folder / "train", "fine_labels")
    test_x, test_y = _cifar_batch(folder / "test", "fine_labels")
    return _source_from_file(
        folder,
        folder.name,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=100,
        class_names=_cifar_names(folder / "meta", "fine_label_names"),
    )


def _svhn_part(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises its own MatReadError, ValueError, OSError, ...
        raise ValueError(f"{path} cannot be read as a MATLAB file: {err}") from err
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path} has no X and y arrays (SVHN's cropped-digits format)")
    x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
    if x.ndim != 4 or x.shape[2] != 3 or x.shape[3] != len(y):
        raise ValueError(f"{path}: X is {list(x.shape)}, expected [32, 32, 3, N] with N = {len(y)}")
    if len(y) and not (1 <= y.min() and y.max() <= 10):
        raise ValueError(f"{path}: y holds labels outside 1..10 (10 is the digit 0)")
    return np.ascontiguousarray(np.moveaxis(x, -1, 0)), y.astype(np.int64) % 10


def read_svhn(folder: Path) -> LabelledSource:
    """SVHN's cropped digits from train_32x32.mat and test_32x32.mat."""
    return _source_from_file(
        folder,
        folder.name,
        *_svhn_part(folder / "train_32x32.mat"),
        *_svhn_part(folder / "test_32x32.mat"),
        num_classes=10,
    )


_GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})


def _class_files(part: Path, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for index, name in enumerate(classes):
        folder = part / name
        if folder.is_dir():
            found = sorted(
                p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            paths += found
            labels += [index] * len(found)
    return paths, labels


def read_image_folder(folder: Path, image_size: int | None = None) -> LabelledSource:
    """Class folders of images under ``folder/train`` and ``folder/test`` (``train`` may be
    absent: a test-only source); see the module docstring."""
    parts = [folder / "train", folder / "test"]
    classes = sorted(
        {p.name for part in parts if part.is_dir() for p in part.iterdir() if p.is_dir()}
    )
    (train, train_y), (test, test_y) = (_class_files(part, classes) for part in parts)
    if not test:
        raise ValueError(f"{folder / 'test'} holds no PNG, JPEG or BMP images in class folders")
    files = train + test
    modes = set()
    for path in files:
        with open_image(path) as img:
            modes.add(img.mode)
    mode = "L" if modes <= _GREY_MODES else "RGB"
    test_x = decode_images(test, image_size, f"decoding {folder / 'test'}", mode)
    if train:
        train_x = decode_images(train, image_size, f"decoding {folder / 'train'}", mode)
        if train_x.shape[1:] != test_x.shape[1:]:
            h, w = train_x.shape[1:3]
            raise ValueError(
                f"the train images are {w}x{h} pixels, the test images "
                f"{test_x.shape[2]}x{test_x.shape[1]}; pass an image size to give them one size"
            )
    else:
        train_x = np.zeros((0, *test_x.shape[1:]), np.uint8)
    return source_from_arrays(
        folder.name, train_x, train_y, test_x, test_y, num_classes=len(classes), class_names=classes
    )


class Format(NamedTuple):
    """One kind of data files.

    ``here(path)``: whether the file or folder ``path`` holds them; ``read(path)``: the source
    they hold; ``files``: what they are, for messages and ``--help``.
    """

    here: Callable[[Path], bool]
    read: Callable[[Path], LabelledSource]
    files: str


FORMATS: dict[str, Format] = {
    "npz": Format(
        lambda p: p.is_file() and p.suffix == ".npz",
        read_npz,
        ".npz of train_x, train_y, test_x, test_y",
    ),
    "mnist-idx": Format(
        lambda p: p.is_dir() and _is_mnist(p),
        read_mnist_idx,
        "idx files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, .gz or not",
    ),
    "cifar10": Format(
        lambda p: p.is_dir() and _has_files("data_batch_1", "test_batch")(p),
        read_cifar10,
        "cifar-10-batches-py: data_batch_1..5, test_batch, batches.meta",
    ),
    "cifar100": Format(
        lambda p: p.is_dir() and _has_files("train", "test", "meta")(p),
        read_cifar100,
        "cifar-100-python: train, test, meta",
    ),
    "svhn": Format(
        lambda p: p.is_dir() and _has_files("train_32x32.mat", "test_32x32.mat")(p),
        read_svhn,
        "train_32x32.mat and test_32x32.mat",
    ),
    "image-folder": Format(
        lambda p: p.is_dir() and _is_image_folder(p),
        read_image_folder,
        "class folders of images in train/ and test/",
    ),
}


class Standard(NamedTuple):
    """What the files of a standard data set must hold to stand in for its TFDS download."""

    format: str
    image_shape: tuple[int, int, int]
    num_classes: int


STANDARD: dict[str, Standard] = {
    "mnist": Standard("mnist-idx", (28, 28, 1), 10),
    "cifar10": Standard("cifar10", (32, 32, 3), 10),
    "cifar100": Standard("cifar100", (32, 32, 3), 100),
    "svhn_cropped": Standard("svhn", (32, 32, 3), 10),
}
"""The built-in data sets that ``prepare NAME --from PATH`` can read from the user's files."""


def find_format(path: Path) -> tuple[str, Path]:
    """``(format name, the file or folder to read)`` of the data files at or below ``path``.

    Raises ``FileNotFoundError`` when ``path`` does not exist, ``ValueError`` when it holds
    none of the formats or more than one data set (naming them: pass a narrower path or a
    format)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    candidates = [path] if path.is_file() else _folders(path)
    found = [(name, p) for p in candidates for name, fmt in FORMATS.items() if fmt.here(p)]
    if not found and path.is_file():
        raise ValueError(
            f"{path} is a file jacosr does not read: of single files it reads a .npz; for "
            f"the other formats give the folder that holds the files ({path.parent})"
        )
    if not found:
        kinds = "; ".join(f"{name}: {fmt.files}" for name, fmt in FORMATS.items())
        raise ValueError(
            f"found no data files in {path} (looked {SEARCH_DEPTH} folder levels deep); jacosr "
            f"reads {kinds}"
        )
    if len(found) > 1:
        listed = ", ".join(f"{name} in {p}" for name, p in found)
        raise ValueError(f"{path} holds several data sets ({listed}); give the path of one")
    return found[0]


def read_files(
    path: Path | str,
    format: str = "auto",
    *,
    name: str | None = None,
    image_size: int | None = None,
) -> LabelledSource:
    """The labelled source the data files at ``path`` hold, as uint8 images.

    ``format``: one of :data:`FORMATS`, or ``"auto"`` (:func:`find_format`, which also finds
    the files up to :data:`SEARCH_DEPTH` folders below ``path``). ``name``: the source's name
    (default: the name of the file or folder read). ``image_size``: resize every image to
    ``image_size`` x ``image_size`` (bilinear; an image folder's images are cropped to a
    centred square first, so they may differ in size)."""
    path = Path(path).expanduser()
    if format == "auto":
        format, path = find_format(path)
    elif format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; valid are: auto, {', '.join(FORMATS)}")
    elif not FORMATS[format].here(path):
        raise ValueError(f"{path} does not hold {format} files ({FORMATS[format].files})")
    if format == "image-folder":
        source = read_image_folder(path, image_size)
    else:
        source = FORMATS[format].read(path)
        if image_size is not None:
            source = resize_source(source, image_size)
    return replace(source, name=name or source.name)
