"""Labelled sources: where the images come from, before any open-set split.

A source is a function ``(data_dir) -> LabelledSource`` in the typed registry ``SOURCES``. It
returns the source's own train and test partitions with its original class indices; the open-set
builder (:mod:`jacosr.data.openset`) chooses known and unknown classes from them.

Images are NHWC. Small in-memory sources (``digits``, ``toy2d``) hold float32 in [-1, 1]; image
sources hold uint8 in [0, 255]. :func:`jacosr.data.to_float` maps both to float32 in [-1, 1], and
is meant to run inside jitted code so uint8 data can stay resident on the device.

Sources and where their data lives (``data_dir`` defaults to ``~/.cache/jacosr``):

  digits, toy2d            in memory, nothing to prepare
  mnist, cifar10, cifar100, svhn_cropped, imagenet_resized/32x32
                           TFDS, built by ``python -m jacosr.data.prepare <name>`` into
                           ``<data_dir>/tfds`` (:mod:`jacosr.data.tfds_sources`)
  tinyimagenet             ``<data_dir>/tiny-imagenet-200`` (:mod:`jacosr.data.folders`)
  imagenet_crop, imagenet_resize, lsun_crop, lsun_resize
                           ODIN's out-of-distribution folders, test only (same module)
  any other name           a data set prepared from the user's own files by
                           ``python -m jacosr.data.prepare NAME --from PATH``
                           (:mod:`jacosr.data.files`); it is its cache, nothing else

Every image source is decoded once and cached as uint8 arrays in ``<data_dir>/cache``
(:mod:`jacosr.data.labelled`); ``prepare mnist --from PATH`` (and ``cifar10``, ``cifar100``,
``svhn_cropped``) writes the cache of a TFDS source from the user's files instead.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from jacosr.data.folders import OOD_FOLDERS, read_ood_folder, read_tinyimagenet
from jacosr.data.labelled import (
    CACHE_ERRORS,
    DEFAULT_DATA_DIR,
    DataNotPreparedError,
    LabelledSource,
    cache_path,
    cached_flips,
    cached_source,
    load_cache,
    prepare_command,
)
from jacosr.data.tfds_sources import TFDS_NAMES, read_tfds

# The digits and toy2d train/test partitions are fixed (not the experiment's seed), so that the
# test set of a source never changes between runs; the experiment seed only picks known-val.
_PARTITION_SEED = 20240501
_DIGITS_TEST_FRACTION = 0.3


def _stratified_partition(y: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of test samples, ``test_fraction`` of each class (rounded), seeded."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_test = round(test_fraction * len(idx))
        is_test[rng.permutation(idx)[:n_test]] = True
    return is_test


def source_digits(data_dir: Path | None = None) -> LabelledSource:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grey images, 10 classes.

    Works offline (the data ships inside scikit-learn). Pixel values 0..16 are mapped to
    [-1, 1]; 30% of each class is held out as the test partition with a fixed seed.
    """
    from sklearn.datasets import load_digits

    del data_dir
    bunch = load_digits()
    x = (bunch.images.astype(np.float32) / 8.0 - 1.0)[..., None]
    y = bunch.target.astype(np.int32)
    is_test = _stratified_partition(y, _DIGITS_TEST_FRACTION, _PARTITION_SEED)
    return LabelledSource("digits", x[~is_test], y[~is_test], x[is_test], y[is_test], 10)


TOY2D_CLASSES = 8
_TOY2D_PER_CLASS = {"train": 300, "test": 100}


def toy2d_centres(num_classes: int = TOY2D_CLASSES) -> np.ndarray:
    """``[num_classes, 2]`` class centres of ``toy2d``: evenly spaced on a circle of radius 0.6."""
    angle = 2 * np.pi * np.arange(num_classes) / num_classes
    return 0.6 * np.stack([np.cos(angle), np.sin(angle)], axis=1)


def source_toy2d(data_dir: Path | None = None) -> LabelledSource:
    """Synthetic 2-D classes inside [-1, 1]^2, for drawing the input space.

    Eight isotropic Gaussian blobs (std 0.1) centred on a circle of radius 0.6, clipped to the
    square. A point is stored as a 1x1 "image" with 2 channels, ``[N, 1, 1, 2]``, so every source
    is NHWC; ``x[:, 0, 0, :]`` gives the plane coordinates.
    """
    del data_dir
    rng = np.random.default_rng(_PARTITION_SEED)
    centres = toy2d_centres()

    def draw(per_class: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.repeat(np.arange(TOY2D_CLASSES, dtype=np.int32), per_class)
        x = centres[y] + 0.1 * rng.standard_normal((len(y), 2))
        return np.clip(x, -1.0, 1.0).astype(np.float32)[:, None, None, :], y

    train_x, train_y = draw(_TOY2D_PER_CLASS["train"])
    test_x, test_y = draw(_TOY2D_PER_CLASS["test"])
    return LabelledSource("toy2d", train_x, train_y, test_x, test_y, TOY2D_CLASSES)


def source_tfds(name: str, data_dir: Path | None = None) -> LabelledSource:
    """A TFDS data set (one of ``TFDS_NAMES``) as uint8 images, from the cache or TFDS files."""
    return cached_source(name, data_dir, partial(read_tfds, name, data_dir))


def source_tinyimagenet(data_dir: Path | None = None) -> LabelledSource:
    """TinyImageNet, 200 classes of 64x64 uint8 images, from the cache or its folder."""
    return cached_source("tinyimagenet", data_dir, partial(read_tinyimagenet, data_dir))


def source_ood_folder(name: str, data_dir: Path | None = None) -> LabelledSource:
    """An out-of-distribution test set (one of ``OOD_FOLDERS``), from the cache or its folder."""
    return cached_source(name, data_dir, partial(read_ood_folder, name, data_dir))


SOURCES: dict[str, Callable[[Path | None], LabelledSource]] = {
    "digits": source_digits,
    "toy2d": source_toy2d,
    **{name: partial(source_tfds, name) for name in TFDS_NAMES},
    "tinyimagenet": source_tinyimagenet,
    **{name: partial(source_ood_folder, name) for name in OOD_FOLDERS},
}
# The sources that read files from the data directory (and so have something to prepare).
PREPARED_SOURCES = (*TFDS_NAMES, "tinyimagenet", *OOD_FOLDERS)


_OWN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")


def is_own_name(name: str) -> bool:
    """Whether ``name`` can name a data set of the user's own: letters, digits, ``.``, ``_``,
    ``+``, ``-`` (a file name in the cache folder), and not a built-in source's name or
    cache file."""
    taken = {cache_path(None, s).name for s in SOURCES}
    return bool(_OWN_NAME.fullmatch(name)) and cache_path(None, name).name not in taken


def is_prepared(name: str, data_dir: Path | None) -> bool:
    """Whether ``name`` is a data set of the user's own with a cache in ``data_dir``."""
    return is_own_name(name) and cache_path(data_dir, name).is_file()


def _no_own_source(name: str, data_dir: Path | None) -> DataNotPreparedError:
    command = prepare_command(name, data_dir, from_files=True)
    return DataNotPreparedError(
        f"there is no data set {name!r} in {Path(data_dir or DEFAULT_DATA_DIR)}: it is not "
        f"built in ({', '.join(sorted(SOURCES))}), and {cache_path(data_dir, name)} does not "
        f"exist; to bring your own files under that name run `{command}` (see python -m "
        "jacosr.data.prepare --help)"
    )


def source_own(name: str, data_dir: Path | None = None) -> LabelledSource:
    """A data set prepared from the user's own files (see :mod:`jacosr.data.files`), from its
    cache; :class:`DataNotPreparedError` when there is none, or when it is unreadable (there
    are no raw data to rebuild it from)."""
    path = cache_path(data_dir, name)
    try:
        source = load_cache(path, name)
    except CACHE_ERRORS:
        command = prepare_command(name, data_dir, from_files=True)
        raise DataNotPreparedError(
            f"the cache {path} of your data set {name!r} is unreadable (damaged or "
            f"truncated); prepare it again from your files: `{command} --force`"
        ) from None
    if source is None:
        raise _no_own_source(name, data_dir)
    return source


FLIP_VARIANT = frozenset({"mnist", "digits"})
"""Built-in sources of handwritten digits, whose class a horizontal flip changes (a flipped 2
is no digit; ARPL's MNIST loader does not flip)."""


def paper_augmentation(name: str, data_dir: Path | None = None) -> str:
    """The name of the paper's weak augmentation for the images of the data set ``name``:
    ``translate`` (the 4 px shift without the flip) where a flip changes an image's class,
    the handwritten digits of :data:`FLIP_VARIANT` and a data set of your own prepared with
    ``--no-flip`` (its cache records it: jacosr cannot tell from the images), else ``weak``
    (SVHN's house numbers are flipped, as ARPL does)."""
    if name in SOURCES:
        flips = name not in FLIP_VARIANT
    else:
        try:
            flips = not is_prepared(name, data_dir) or cached_flips(cache_path(data_dir, name))
        except CACHE_ERRORS:
            flips = True  # unreadable: loading it says so
    return "weak" if flips else "translate"


def check_source(name: str, data_dir: Path | None = None) -> None:
    """Refuse ``name`` unless it is a built-in source (``SOURCES``; whether a prepared one
    has its files is found when it is loaded) or a data set of the user's own prepared in
    ``data_dir``, with the message that says how to prepare it. Reads no data: the command
    lines call it before they write anything."""
    if name in SOURCES:
        return
    if not is_own_name(name):
        raise ValueError(
            f"unknown data set {name!r}; built-in data sets are: {', '.join(sorted(SOURCES))}; "
            "a data set of your own is named by letters, digits, '.', '_', '+' and '-'"
        )
    if not is_prepared(name, data_dir):
        raise _no_own_source(name, data_dir)


def load_source(name: str, data_dir: Path | None = None) -> LabelledSource:
    """Load the source ``name``: a built-in one (``SOURCES``) or one prepared from the user's
    files (:func:`source_own`); any other name is refused by :func:`check_source`."""
    check_source(name, data_dir)
    if name in SOURCES:
        return SOURCES[name](data_dir)
    return source_own(name, data_dir)
