"""Prepare data sets: the only command that downloads data or reads it into jacosr's cache.

    python -m jacosr.data.prepare cifar10
    python -m jacosr.data.prepare cifar10 cifar100 svhn_cropped --data-dir /data/jacosr
    python -m jacosr.data.prepare tinyimagenet lsun_crop --force
    python -m jacosr.data.prepare mnist --from ~/data/MNIST/raw
    python -m jacosr.data.prepare my-flowers --from ~/data/flowers --image-size 64
    python -m jacosr.data.prepare my-digits --from ~/data/digits.npz --no-flip
    python -m jacosr.train --dataset my-flowers --known 0 1 2 --workdir runs/flowers

Three routes, each ending in the uint8 cache ``<data_dir>/cache/<name>.npz`` that training
reads:

- TFDS sources (``mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``,
  ``imagenet_resized/32x32``) are downloaded and built by TFDS as ``array_record`` files under
  ``<data_dir>/tfds`` (needs TensorFlow: ``pip install 'jacosr[data]'``), unless already there.
- Folder sources (``tinyimagenet``, ``imagenet_crop``, ``imagenet_resize``, ``lsun_crop``,
  ``lsun_resize``) must first be unpacked into the data directory by hand (see
  :mod:`jacosr.data.folders`).
- ``--from PATH`` reads your own files, without TensorFlow (:mod:`jacosr.data.files`): a
  ``.npz`` of arrays, MNIST or Fashion-MNIST idx files, the CIFAR-10/100 python pickles, SVHN
  ``.mat`` files, or class folders of images (``train/<class>/``, ``test/<class>/``); the format
  is found from the file names, in PATH or up to two folders below it. Under a standard name
  (``mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``) the files stand in for the TFDS
  download (their image shape and number of classes are checked), and ``--benchmark`` uses them;
  under a name of your own (letters, digits, ``.``, ``_``, ``+``, ``-``) they become a new data
  set: ``--dataset NAME`` trains on it, ``--known`` and ``--unknown`` pick its classes by
  index (printed here, with their names when the files have them).

A data set of your own whose images a horizontal flip moves to another class (handwritten
digits, letters) is prepared with ``--no-flip``: the cache records it, and the paper's weak
augmentation then shifts its images without flipping them
(:func:`jacosr.data.paper_augmentation`; the built-in mnist and digits are known to jacosr).

A data set prepared already is left as it is: ``--force`` rebuilds it; with ``--from``, files
that differ from the cached ones are refused unless ``--force``, since a run trained on the old
data refuses to resume on new ones (the data are part of its identity, see
:func:`jacosr.runs.run_identity`). Runtime: README, "Data".
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import tyro

from jacosr.config import cli, run_command
from jacosr.data.arrays import source_from_arrays
from jacosr.data.files import FORMATS, STANDARD, read_files
from jacosr.data.labelled import (
    CACHE_ERRORS,
    DEFAULT_DATA_DIR,
    DataNotPreparedError,
    LabelledSource,
    cache_path,
    load_cache,
    resize_source,
    save_cache,
)
from jacosr.data.sources import (
    PREPARED_SOURCES,
    SOURCES,
    is_own_name,
    is_prepared,
    load_source,
    paper_augmentation,
)
from jacosr.data.tfds_sources import TFDS_NAMES, build_tfds

FormatName = Literal[("auto", *FORMATS)]  # type: ignore[valid-type]


@dataclass(frozen=True)
class PrepareArgs:
    """Download or read data sets and cache them as uint8 arrays.

    Attributes:
      names: the data sets to prepare: built-in ones (mnist, cifar10, cifar100, svhn_cropped,
        imagenet_resized/32x32, tinyimagenet, imagenet_crop, imagenet_resize, lsun_crop,
        lsun_resize), or, with --from, one name: a standard one of mnist, cifar10, cifar100,
        svhn_cropped (your files stand in for the download), or a name of your own for a new
        data set (then: python -m jacosr.train --dataset NAME).
      source: read your own files, a file or folder: a .npz (train_x, train_y, test_x,
        test_y), MNIST/Fashion-MNIST idx files, cifar-10-batches-py, cifar-100-python, SVHN's
        train_32x32.mat and test_32x32.mat, or class folders of images train/<class>/ and
        test/<class>/ (only test/: unknowns only). Looked for up to two folders below PATH.
      format: the format of --from: auto (found from the file names) or one of these.
      image_size: with --from: resize every image to this side length (bilinear; images of a
        class folder are cropped to a centred square first, so they may differ in size).
      data_dir: jacosr's data directory (TFDS files in tfds/, caches in cache/).
      force: rebuild the cache even if one exists (with --from: replace it by these files).
      no_flip: with --from, a data set of your own whose images a horizontal flip moves to
        another class (handwritten digits or letters, text): recorded with the cache, so the
        paper's augmentation (--augment auto, the ablation's A) shifts them without flipping.
        jacosr cannot tell this from the images.
    """

    names: Annotated[
        tuple[str, ...], tyro.conf.Positional, tyro.conf.arg(metavar="NAME [NAME ...]")
    ]
    source: Annotated[Path | None, tyro.conf.arg(name="from", metavar="PATH")] = None
    format: FormatName = "auto"
    image_size: int | None = None
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    force: bool = False
    no_flip: bool = False


def _check_standard(name: str, source: LabelledSource, origin: str) -> None:
    want = STANDARD[name]
    shape, classes = tuple(source.test_x.shape[1:]), source.num_classes
    if (shape, classes) != (want.image_shape, want.num_classes):
        raise ValueError(
            f"{origin} holds {'x'.join(map(str, shape))} images of {classes} classes, but "
            f"{name} has {'x'.join(map(str, want.image_shape))} images of {want.num_classes} "
            "classes; prepare them under a name of your own instead (then --dataset NAME)"
        )
    if len(source.train_y) == 0:
        raise ValueError(f"{origin} holds test images only, but {name} has a train partition")


def _same(a: LabelledSource, b: LabelledSource) -> bool:
    arrays = ("train_x", "train_y", "test_x", "test_y")
    return a.num_classes == b.num_classes and all(
        np.array_equal(getattr(a, k), getattr(b, k)) for k in arrays
    )


def _flipping(source: LabelledSource) -> str:
    return "as images a flip keeps in their class" if source.flips else "with --no-flip"


def _prepare_from(
    name: str,
    data_dir: Path | None,
    source: Path | LabelledSource,
    format: str,
    image_size: int | None,
    force: bool,
    flips: bool,
) -> Path:
    if name in SOURCES and name not in STANDARD:
        raise ValueError(
            f"{name!r} is built in and is not read from other files (--from reads "
            f"{', '.join(STANDARD)} and data sets of your own); prepare your files under a "
            "name of your own"
        )
    if name not in SOURCES and not is_own_name(name):
        raise ValueError(
            f"{name!r} cannot name a data set: use letters, digits, '.', '_', '+' and '-' "
            "(and not the name of a built-in data set)"
        )
    if name in STANDARD and not flips:
        raise ValueError(
            f"--no-flip is for data sets of your own: jacosr knows whether a flip keeps the "
            f"classes of {name} (augmentation: {paper_augmentation(name)})"
        )
    if isinstance(source, LabelledSource):
        if format != "auto":
            raise ValueError("format applies to files, not to a source made from arrays")
        source = resize_source(source, image_size) if image_size is not None else source
        new = source_from_arrays(
            name,
            source.train_x,
            source.train_y,
            source.test_x,
            source.test_y,
            num_classes=source.num_classes,
            class_names=source.class_names,
        )
    else:
        new = read_files(source, format, name=name, image_size=image_size)
    new = replace(new, flips=flips)
    if name in STANDARD:
        _check_standard(
            name, new, "the source" if isinstance(source, LabelledSource) else str(source)
        )
    path = cache_path(data_dir, name)
    try:
        old = load_cache(path, name)
    except CACHE_ERRORS:
        old = None  # unreadable: replaced
    if old is not None and not force:
        if _same(old, new) and old.flips == new.flips:
            return path
        if _same(old, new):
            raise ValueError(
                f"{path} holds these data, prepared {_flipping(old)}; pass --force to prepare "
                f"them {_flipping(new)} (runs whose --augment auto chose by the old record "
                "then refuse to resume)"
            )
        raise ValueError(
            f"{path} holds other data under the name {name!r} already; pass --force to replace "
            "them (runs trained on the old data then refuse to resume), or choose another name"
        )
    save_cache(new, path)
    return path


def prepare(
    name: str,
    data_dir: Path | None = None,
    *,
    source: Path | str | LabelledSource | None = None,
    format: str = "auto",
    image_size: int | None = None,
    force: bool = False,
    flips: bool = True,
) -> Path:
    """Make the data set ``name`` loadable offline; returns its cache file.

    ``source``: None, the built-in route (TFDS download, or the folder unpacked into
    ``data_dir``); a path, your own files (read by :func:`jacosr.data.files.read_files` in
    ``format``, resized to ``image_size``); or a :class:`LabelledSource`, e.g. from
    :func:`jacosr.data.source_from_arrays`. See the module docstring for the names.
    ``flips=False`` (``--no-flip``) records, for a data set of your own, that a horizontal flip
    moves its images to another class (:func:`jacosr.data.paper_augmentation`).
    """
    if source is not None:
        if isinstance(source, str):
            source = Path(source)
        return _prepare_from(name, data_dir, source, format, image_size, force, flips)
    if format != "auto" or image_size is not None or not flips:
        raise ValueError(
            "--format, --image-size and --no-flip apply to your own files: pass --from PATH"
        )
    if is_prepared(name, data_dir) and not force:
        return cache_path(data_dir, name)  # a data set of your own, prepared already
    if name not in PREPARED_SOURCES:
        own = is_own_name(name) and name not in SOURCES
        raise ValueError(
            f"nothing to prepare for {name!r}; "
            + (
                f"to make your own files a data set named {name!r}, pass --from PATH; "
                if own
                else ""
            )
            + f"built-in data sets that can be prepared are: {', '.join(PREPARED_SOURCES)}"
        )
    path = cache_path(data_dir, name)
    if force:
        path.unlink(missing_ok=True)
    try:
        load_source(name, data_dir)
    except DataNotPreparedError:
        if name not in TFDS_NAMES:
            raise
        build_tfds(name, data_dir)
        load_source(name, data_dir)
    return path


def describe_source(source: LabelledSource) -> str:
    """One line: the partitions' sizes, the image shape and the classes (named, if they are)."""
    shape = "x".join(map(str, source.test_x.shape[1:]))
    classes = f"{source.num_classes} classes"
    if source.class_names is not None:
        named = [f"{i} {n}" for i, n in enumerate(source.class_names)]
        classes += ": " + ", ".join(named[:20]) + (", ..." if len(named) > 20 else "")
    flips = "" if source.flips else "; not flipped by the augmentation (--no-flip)"
    return (
        f"{len(source.train_y)} train and {len(source.test_y)} test images of {shape}, "
        f"{classes}{flips}"
    )


def main(args: list[str] | None = None) -> list[Path]:
    """Prepare every named data set (``args``: the command line without the program name);
    returns their cache files. Errors propagate (:func:`jacosr.config.run_command` reports
    them as one line)."""
    parsed = cli(
        PrepareArgs,
        description="Download (TFDS, needs pip install 'jacosr[data]'), decode (image folders "
        "in --data-dir) or read your own files (--from PATH) into uint8 arrays cached in "
        "<data_dir>/cache, which training reads; see the module docstring of "
        "jacosr.data.prepare.",
        args=args,
    )
    if not parsed.names:
        raise ValueError(
            "name at least one data set to prepare, out of: "
            f"{', '.join(PREPARED_SOURCES)}; or your own: NAME --from PATH"
        )
    if parsed.source is not None and len(parsed.names) != 1:
        raise ValueError(f"--from reads one data set; got the names {list(parsed.names)}")
    paths = []
    for name in parsed.names:
        path = prepare(
            name,
            parsed.data_dir,
            source=parsed.source,
            format=parsed.format,
            image_size=parsed.image_size,
            force=parsed.force,
            flips=not parsed.no_flip,
        )
        paths.append(path)
        print(f"{name}: ready, cached in {path}")
        if parsed.source is not None:
            print(f"  {describe_source(load_cache(path, name))}")
            flags = f"--dataset {shlex.quote(name)}"
            if Path(parsed.data_dir).expanduser().absolute() != DEFAULT_DATA_DIR:
                flags += f" --data-dir {shlex.quote(str(parsed.data_dir))}"
            print(f"  train on it: python -m jacosr.train {flags} --workdir runs/{name}")
    return paths


if __name__ == "__main__":
    run_command(main)
