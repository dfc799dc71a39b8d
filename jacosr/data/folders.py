"""Image-folder sources: TinyImageNet and the out-of-distribution sets of Protocol B.

Both are unpacked by hand into the data directory and decoded with Pillow into uint8 arrays,
which are cached (see :mod:`jacosr.data.labelled`); ``python -m jacosr.data.prepare <name>``
decodes and caches ahead of time, and the first load does the same.

TinyImageNet (``tinyimagenet``) is read in the layout of ``tiny-imagenet-200.zip``, unchanged::

    <data_dir>/tiny-imagenet-200/wnids.txt
    <data_dir>/tiny-imagenet-200/train/<wnid>/images/*.JPEG
    <data_dir>/tiny-imagenet-200/val/images/*.JPEG
    <data_dir>/tiny-imagenet-200/val/val_annotations.txt  "file<TAB>wnid<TAB>x<TAB>y<TAB>w<TAB>h"

The flat val folder is labelled through ``val_annotations.txt`` directly (no need to move the
images into class folders by hand). Class index = position of the wnid in *sorted*
``wnids.txt``: the order torchvision's ``ImageFolder`` gives the ``train/`` folders, which is
what the standard splits' class indices (ARPL, Vaze et al.) refer to. Train is the train folder
(500 per class), test is the val folder (50 per class); images are 64x64 RGB (the few greyscale
JPEGs are converted to RGB). ``DataConfig.image_size = 32`` resizes them to 32x32.

The out-of-distribution sets are those distributed by the ODIN authors (Liang et al., 2018),
each unpacked into its own folder; images are found at any depth (the archives hold one
subfolder) and sorted by path::

    imagenet_crop    <data_dir>/Imagenet/         random 32x32 crops of TinyImageNet test images
    imagenet_resize  <data_dir>/Imagenet_resize/  TinyImageNet test images downsampled to 32x32
    lsun_crop        <data_dir>/LSUN/             random 32x32 crops of LSUN test images
    lsun_resize      <data_dir>/LSUN_resize/      LSUN test images downsampled to 32x32

They have only a test partition, one class 0. Their native size is 32x32; an image of another
size is centre-cropped to a square of its short side and resized (bilinear) to 32x32, and the
open-set builder resizes the whole set to the known classes' resolution when that differs.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jacosr.data.labelled import (
    DEFAULT_DATA_DIR,
    DataNotPreparedError,
    LabelledSource,
    prepare_command,
)

TINYIMAGENET_DIR = "tiny-imagenet-200"
TINYIMAGENET_SIZE = 64
TINYIMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
OOD_FOLDERS = {
    "imagenet_crop": "Imagenet",
    "imagenet_resize": "Imagenet_resize",
    "lsun_crop": "LSUN",
    "lsun_resize": "LSUN_resize",
}
OOD_SIZE = 32
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp"})
_PROGRESS_MIN = 20_000


@contextmanager
def open_image(path: Path) -> Iterator:
    """``with open_image(path) as img``: Pillow's ``Image.open``, where a file Pillow cannot
    read (truncated, damaged, not an image, or a header claiming more pixels than Pillow
    decodes, its decompression-bomb guard) raises ``ValueError`` naming the file, also when the
    pixels are decoded inside the ``with`` block (Pillow decodes lazily)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            yield img
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as err:
        raise ValueError(
            f"{path} cannot be read as an image: {err}; remove it or replace it by an intact copy"
        ) from err


def decode_image(path: Path, size: int | None, mode: str = "RGB") -> np.ndarray:
    """One image file as ``[size, size, C]`` uint8, in Pillow ``mode`` ``"RGB"`` (C = 3) or
    ``"L"`` (greyscale, C = 1); ``size=None``: ``[H, W, C]``, its own size. A file Pillow cannot
    read is a ``ValueError`` naming it (:func:`open_image`).

    An image of another size is centre-cropped to a square of its short side, then resized with
    Pillow's bilinear filter (antialiased when shrinking).
    """
    from PIL import Image

    with open_image(path) as img:
        img = img.convert(mode)
        if size is not None and img.size != (size, size):
            w, h = img.size
            s = min(w, h)
            left, top = (w - s) // 2, (h - s) // 2
            img = img.crop((left, top, left + s, top + s))
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).reshape(img.height, img.width, -1)


def decode_images(paths: list[Path], size: int | None, desc: str, mode: str = "RGB") -> np.ndarray:
    """At least one file -> ``[N, size, size, C]`` uint8 (see :func:`decode_image`).
    ``size=None`` keeps the images' size, ``[N, H, W, C]``, which must then be the same for
    all (else ``ValueError`` naming two files and their sizes)."""
    x = None
    for i, path in enumerate(tqdm(paths, desc=desc, disable=len(paths) < _PROGRESS_MIN)):
        image = decode_image(path, size, mode)
        if x is None:
            x = np.empty((len(paths), *image.shape), dtype=np.uint8)
        elif image.shape != x.shape[1:]:
            h, w = x.shape[1:3]
            raise ValueError(
                f"{path} is {image.shape[1]}x{image.shape[0]} pixels but {paths[0]} is {w}x{h}; "
                "images of different sizes need a common size (--image-size N crops each to a "
                "centred square and resizes it to N x N)"
            )
        x[i] = image
    if x is None:
        raise ValueError(f"{desc}: no image files")
    return x


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _missing_tinyimagenet(root: Path, what: str, data_dir: Path | None) -> DataNotPreparedError:
    cause = (
        f"TinyImageNet is incomplete: {what}"
        if root.is_dir()
        else f"TinyImageNet is not prepared: {root} does not exist"
    )
    return DataNotPreparedError(
        f"{cause}. Unzip {TINYIMAGENET_URL} into {root.parent} (giving {root}/wnids.txt, "
        f"train/, val/), then run `{prepare_command('tinyimagenet', data_dir)}`"
    )


def read_tinyimagenet(data_dir: Path | None) -> LabelledSource:
    """Decode TinyImageNet from its unpacked folder (layout in the module docstring)."""
    root = Path(data_dir or DEFAULT_DATA_DIR) / TINYIMAGENET_DIR
    wnids_file = root / "wnids.txt"
    if not wnids_file.is_file():
        raise _missing_tinyimagenet(root, f"{wnids_file} not found", data_dir)
    wnids = sorted(line.strip() for line in wnids_file.read_text().splitlines() if line.strip())
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{wnids_file} lists a wnid more than once")
    index = {wnid: i for i, wnid in enumerate(wnids)}

    train_paths, train_y = [], []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        files = _image_files(folder) if folder.is_dir() else []
        if not files:
            raise _missing_tinyimagenet(root, f"no training images in {folder}", data_dir)
        train_paths += files
        train_y += [index[wnid]] * len(files)

    annotations = root / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _missing_tinyimagenet(root, f"{annotations} not found", data_dir)
    test_paths, test_y = [], []
    for lineno, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{annotations}:{lineno}: expected 'file<TAB>wnid<TAB>...' with a wnid from "
                f"wnids.txt, got {line!r}"
            )
        path = root / "val" / "images" / fields[0]
        if not path.is_file():
            raise _missing_tinyimagenet(
                root, f"{path} (listed in {annotations.name}) not found", data_dir
            )
        test_paths.append(path)
        test_y.append(index[fields[1]])
    if not test_paths:
        raise _missing_tinyimagenet(root, f"{annotations} lists no images", data_dir)

    return LabelledSource(
        "tinyimagenet",
        decode_images(train_paths, TINYIMAGENET_SIZE, "decoding tinyimagenet train"),
        np.asarray(train_y, dtype=np.int32),
        decode_images(test_paths, TINYIMAGENET_SIZE, "decoding tinyimagenet val"),
        np.asarray(test_y, dtype=np.int32),
        len(wnids),
    )


def read_ood_folder(name: str, data_dir: Path | None) -> LabelledSource:
    """Decode an out-of-distribution folder (``OOD_FOLDERS``) as a test-only source."""
    if name not in OOD_FOLDERS:
        raise ValueError(f"unknown OOD folder {name!r}; valid are: {', '.join(OOD_FOLDERS)}")
    root = Path(data_dir or DEFAULT_DATA_DIR) / OOD_FOLDERS[name]
    paths = (
        sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if root.is_dir()
        else []
    )
    if not paths:
        cause = f"{root} holds no images" if root.is_dir() else f"{root} does not exist"
        raise DataNotPreparedError(
            f"{name} is not prepared: {cause}. Unpack the ODIN authors' "
            f"{OOD_FOLDERS[name]}.tar.gz (linked from github.com/facebookresearch/odin) into "
            f"{root.parent}, then run `{prepare_command(name, data_dir)}`"
        )
    test_x = decode_images(paths, OOD_SIZE, f"decoding {name}")
    return LabelledSource(
        name,
        np.zeros((0, *test_x.shape[1:]), dtype=np.uint8),
        np.zeros(0, dtype=np.int32),
        test_x,
        np.zeros(len(test_x), dtype=np.int32),
        1,
    )
