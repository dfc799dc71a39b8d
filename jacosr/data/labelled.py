"""The labelled-source type, its on-disk cache, and resizing.

A prepared image source is cached as one uncompressed ``.npz`` of uint8 arrays in
``<data_dir>/cache/<name>.npz`` (a ``/`` in the name becomes ``-``): train_x, train_y, test_x,
test_y, num_classes, format and, when the files name the classes, class_names. The cache is
written to a temporary file and renamed into place, so an interrupted write never leaves a
partial cache under the real name; an unreadable or inconsistent cache is rebuilt from the raw
data, with a warning (a data set prepared from the user's own files has no raw data here: its
unreadable cache is an error saying to prepare it again, see :mod:`jacosr.data.sources`).
"""

from __future__ import annotations

import os
import shlex
import tokenize
import warnings
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

DEFAULT_DATA_DIR = Path("~/.cache/jacosr").expanduser()
CACHE_FORMAT = 1
_ARRAYS = ("train_x", "train_y", "test_x", "test_y")


@dataclass(frozen=True)
class LabelledSource:
    """A labelled data set with a fixed train/test partition.

    Attributes:
      name: registry name, e.g. ``"digits"``.
      train_x, test_x: ``[N, H, W, C]`` float32 in [-1, 1] or uint8 in [0, 255].
      train_y, test_y: ``[N]`` int32 original class indices in ``0..num_classes-1``.
      num_classes: number of classes of the source.
      class_names: the name of each class index, when the files name them (CIFAR's meta files,
        the folders of an image folder); None otherwise.
      flips: whether a horizontal flip keeps an image in its class (False for handwritten
        digits: a flipped 2 is no digit); the paper's weak augmentation flips only where it
        does (:func:`jacosr.data.paper_augmentation`). Recorded in a data set of your own's
        cache (``prepare --no-flip``).

    An out-of-distribution test set (Protocol B) has an empty train partition (``N = 0``) and a
    single class 0.
    """

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    flips: bool = True


class DataNotPreparedError(FileNotFoundError):
    """A data set is not on disk yet; the message says why, how to get it and the exact command
    that prepares it (:func:`prepare_command`)."""


def prepare_command(name: str, data_dir: Path | None = None, *, from_files: bool = False) -> str:
    """The shell command that prepares the source ``name`` in ``data_dir``; ``from_files``:
    from the user's files, ``--from PATH`` (PATH left for the user to fill in).

    It names ``--data-dir`` unless ``data_dir`` is the default, so that following it prepares
    the folder the failing command reads."""
    command = f"python -m jacosr.data.prepare {shlex.quote(name)}"
    if from_files:
        command += " --from PATH"
    if data_dir is not None and Path(data_dir).expanduser().absolute() != DEFAULT_DATA_DIR:
        command += f" --data-dir {shlex.quote(str(data_dir))}"
    return command


def cache_path(data_dir: Path | None, name: str) -> Path:
    """Where the decoded uint8 arrays of source ``name`` are cached."""
    return Path(data_dir or DEFAULT_DATA_DIR) / "cache" / f"{name.replace('/', '-')}.npz"


def save_cache(source: LabelledSource, path: Path) -> None:
    """Write ``source`` to ``path`` atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                format=np.int64(CACHE_FORMAT),
                num_classes=np.int64(source.num_classes),
                **{k: getattr(source, k) for k in _ARRAYS},
                **({} if source.class_names is None else {"class_names": source.class_names}),
                flips=np.bool_(source.flips),
            )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _check_cache(arrays: dict[str, np.ndarray], num_classes: int) -> None:
    for part in ("train", "test"):
        x, y = arrays[f"{part}_x"], arrays[f"{part}_y"]
        if x.ndim != 4 or x.dtype != np.uint8:
            raise ValueError(f"{part}_x is {x.dtype}{list(x.shape)}, expected uint8 [N, H, W, C]")
        if y.shape != (len(x),) or y.dtype != np.int32:
            raise ValueError(f"{part}_y is {y.dtype}{list(y.shape)}, expected int32 [{len(x)}]")
        if len(y) and not (0 <= y.min() and y.max() < num_classes):
            raise ValueError(f"{part}_y has labels outside 0..{num_classes - 1}")
    # A damaged shape in an array's header can make it shorter (its checksum then goes unread).
    train, test = arrays["train_x"].shape[1:], arrays["test_x"].shape[1:]
    if len(arrays["train_x"]) and train != test:
        raise ValueError(f"train_x holds images of shape {list(train)}, test_x {list(test)}")


CACHE_ERRORS = (
    OSError,
    EOFError,
    KeyError,
    ValueError,
    NotImplementedError,
    zipfile.BadZipFile,
    zlib.error,
    tokenize.TokenError,
)
"""What reading a damaged ``.npz`` raises, a cache or the user's own (truncated, not a zip, a
damaged compression method or deflate stream, a garbled array header, missing or malformed
arrays)."""


def load_cache(path: Path, name: str) -> LabelledSource | None:
    """The cached source at ``path``, or None when there is no cache; a damaged cache raises one
    of :data:`CACHE_ERRORS`."""
    if not path.exists():
        return None
    with np.load(path, allow_pickle=False) as z:
        if int(z["format"]) != CACHE_FORMAT:
            raise ValueError(f"cache format {int(z['format'])}, expected {CACHE_FORMAT}")
        num_classes = int(z["num_classes"])
        arrays = {k: z[k] for k in _ARRAYS}
        names = tuple(str(c) for c in z["class_names"]) if "class_names" in z else None
        flips = bool(z["flips"]) if "flips" in z else True  # a cache older than the record
    _check_cache(arrays, num_classes)
    if names is not None and len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} classes")
    return LabelledSource(name, num_classes=num_classes, class_names=names, flips=flips, **arrays)


def cached_flips(path: Path) -> bool:
    """Whether the cache at ``path`` records that flips keep its images' classes (True when it
    records nothing: a cache older than the record); reads that one entry."""
    with np.load(path, allow_pickle=False) as z:
        return bool(z["flips"]) if "flips" in z else True


def cached_source(
    name: str, data_dir: Path | None, build: Callable[[], LabelledSource]
) -> LabelledSource:
    """Read source ``name`` from its cache, or ``build()`` it from the raw data and cache it.

    A damaged cache is rebuilt, with a warning once that has worked; when the raw data are
    missing too, the :class:`DataNotPreparedError` of ``build`` says that the cache is damaged.
    """
    path = cache_path(data_dir, name)
    try:
        source = load_cache(path, name)
        damaged = False
    except CACHE_ERRORS:
        # What numpy says about a damaged file can mislead (a garbled header "contains pickled
        # data"), so the messages say only that the cache is unreadable.
        source, damaged = None, True
    if source is not None:
        return source
    try:
        source = build()
    except DataNotPreparedError as err:
        if not damaged:
            raise
        raise DataNotPreparedError(f"{err} (its cache {path} is unreadable too)") from err
    save_cache(source, path)
    if damaged:
        warnings.warn(f"rebuilt the unreadable cache {path} from the raw data", stacklevel=2)
    return source


def resize_images(x: np.ndarray, size: int) -> np.ndarray:
    """``[N, H, W, C]`` uint8 -> ``[N, size, size, C]`` uint8 with Pillow's bilinear filter.

    This is what torchvision's ``Resize((size, size))`` does to PIL images (the ARPL code base's
    preprocessing): antialiased when shrinking, plain bilinear when enlarging.
    """
    from PIL import Image

    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(f"resizing needs uint8 [N, H, W, C] images, got {x.dtype}{list(x.shape)}")
    if x.shape[1:3] == (size, size):
        return x
    out = np.empty((len(x), size, size, x.shape[3]), dtype=np.uint8)
    for i, img in enumerate(x):
        pil = Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img)
        out[i] = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR)).reshape(
            size, size, -1
        )
    return out


def resize_source(source: LabelledSource, size: int) -> LabelledSource:
    """``source`` with every image resized to ``size x size`` (see :func:`resize_images`)."""
    if source.train_x.shape[1:3] == (size, size) and source.test_x.shape[1:3] == (size, size):
        return source
    if source.test_x.dtype != np.uint8:
        raise ValueError(
            f"{source.name!r} holds {source.test_x.dtype} points, not uint8 images; "
            "only image sources can be resized (leave image_size unset)"
        )
    return replace(
        source,
        train_x=resize_images(source.train_x, size),
        test_x=resize_images(source.test_x, size),
    )
