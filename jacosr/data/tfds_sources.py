"""TensorFlow Datasets sources, read without TensorFlow.

Building a TFDS data set (download, decode, write ``array_record`` files) needs TensorFlow and is
the explicit command ``python -m jacosr.data.prepare <name>`` (install it with
``pip install 'jacosr[data]'``). Reading a prepared one does not: :func:`read_tfds` goes through
``tfds.data_source(..., download=False)``, which decodes with NumPy and Pillow. It is read once,
then cached as uint8 arrays (see :mod:`jacosr.data.labelled`). Nothing downloads on import or on
read.

TFDS files live in ``<data_dir>/tfds`` (TFDS's own layout, ``<name>/<version>/...``).

Images are stored at their native size: MNIST 28x28x1, the others 32x32x3. The paper's VGG32
takes 32x32 inputs; ``DataConfig.image_size = 32`` resizes MNIST to 32x32 bilinearly, as the ARPL
code base does (``Resize((32, 32))``), rather than zero-padding it by 2 px as LeNet-5 did. The
Protocol A config for MNIST sets it (:func:`jacosr.data.splits.protocol_a_config`). ARPL also
replicates MNIST to 3 channels; we keep the single channel, which carries the same information.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from jacosr.data.files import FORMATS, STANDARD
from jacosr.data.labelled import (
    DEFAULT_DATA_DIR,
    DataNotPreparedError,
    LabelledSource,
    prepare_command,
)

TFDS_NAMES = ("mnist", "cifar10", "cifar100", "svhn_cropped", "imagenet_resized/32x32")
_PROGRESS_MIN = 20_000  # show a progress bar only when reading this many images or more


def tfds_dir(data_dir: Path | None) -> Path:
    """TFDS's data directory inside jacosr's data directory."""
    return Path(data_dir or DEFAULT_DATA_DIR) / "tfds"


@contextlib.contextmanager
def _quiet_absl():
    """Silence TFDS's absl warnings for the duration (restoring the level after)."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _not_prepared(name: str, data_dir: Path | None, folder: Path) -> DataNotPreparedError:
    """The error for a TFDS data set TFDS cannot open: absent, or not an array_record build.

    It gives the command that downloads it, and for the data sets that can be read from the
    user's files (:data:`jacosr.data.files.STANDARD`) the command that reads them."""
    command = f"`{prepare_command(name, data_dir)}`"
    if not has_tensorflow():
        command += " (it needs TensorFlow: pip install 'jacosr[data]')"
    if name in STANDARD:
        files = FORMATS[STANDARD[name].format].files
        command += (
            f", or, from your own copy ({files}), "
            f"`{prepare_command(name, data_dir, from_files=True)}` with PATH the folder that "
            "holds it"
        )
    if not folder.exists():
        return DataNotPreparedError(
            f"the TFDS data set {name!r} is not prepared: {folder} does not exist; run {command}"
        )
    return DataNotPreparedError(
        f"the TFDS data set {name!r} in {folder} cannot be read: it holds no finished "
        f"array_record build (it was built as TFRecord, or its build stopped); delete {folder}, "
        f"then run {command}"
    )


def _read_split(name: str, data_dir: Path | None, split: str) -> tuple[np.ndarray, np.ndarray, int]:
    import tensorflow_datasets as tfds

    folder = tfds_dir(data_dir) / name
    # Asked for a data set that is not there at all, TFDS warns about the missing files of a
    # "variant folder" before failing; the error below says what is wrong instead.
    quiet = _quiet_absl() if not folder.exists() else contextlib.nullcontext()
    try:
        with quiet:
            ds = tfds.data_source(
                name, split=split, data_dir=str(tfds_dir(data_dir)), download=False
            )
    except (NotImplementedError, FileNotFoundError) as err:
        # TFDS reports a data set that is absent, or prepared as TFRecord, as an unsupported
        # file format.
        raise _not_prepared(name, data_dir, folder) from err
    n = len(ds)
    if n == 0:
        raise ValueError(f"the {split} split of TFDS data set {name!r} is empty")
    num_classes = int(ds.dataset_info.features["label"].num_classes)
    first = ds[0]
    x = np.empty((n, *np.shape(first["image"])), dtype=np.uint8)
    y = np.empty(n, dtype=np.int32)
    # Item by item: the mocked data source of tfds.testing.mock_data supports __getitem__ but
    # not __getitems__, and batching gains little here because decoding dominates.
    bar = tqdm(range(n), desc=f"reading {name} {split}", disable=n < _PROGRESS_MIN)
    for i in bar:
        example = ds[i]
        x[i] = example["image"]
        y[i] = example["label"]
    return x, y, num_classes


def read_tfds(name: str, data_dir: Path | None) -> LabelledSource:
    """Read the train and test splits of a prepared TFDS data set into uint8 arrays."""
    if name not in TFDS_NAMES:
        raise ValueError(f"unknown TFDS source {name!r}; valid are: {', '.join(TFDS_NAMES)}")
    train_x, train_y, num_classes = _read_split(name, data_dir, "train")
    # imagenet_resized calls its test partition "validation".
    test_split = "validation" if name.startswith("imagenet_resized") else "test"
    test_x, test_y, _ = _read_split(name, data_dir, test_split)
    return LabelledSource(name, train_x, train_y, test_x, test_y, num_classes)


def has_tensorflow() -> bool:
    """Whether TensorFlow, needed only to build TFDS data sets, is installed."""
    return importlib.util.find_spec("tensorflow") is not None


def build_tfds(name: str, data_dir: Path | None) -> None:
    """Download and prepare a TFDS data set as ``array_record`` files (needs TensorFlow)."""
    if not has_tensorflow():
        raise ModuleNotFoundError(
            f"building the TFDS data set {name!r} needs TensorFlow, which is not installed; "
            "install it with: pip install 'jacosr[data]'",
            name="tensorflow",
        )
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(tfds_dir(data_dir)), file_format="array_record")
    builder.download_and_prepare()
