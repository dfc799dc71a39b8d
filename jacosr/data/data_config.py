"""The data configuration: which source, which open-set split, where the data lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jacosr.config import require
from jacosr.data.benchmarks import BENCHMARKS, NUM_SPLITS
from jacosr.data.labelled import DEFAULT_DATA_DIR
from jacosr.data.sources import SOURCES, is_own_name


@dataclass(frozen=True)
class DataConfig:
    """Which data and which open-set split.

    Its fields are flat command-line flags (``--dataset``, ``--known``, ``--benchmark``, ...).

    Attributes:
      dataset: source of the known classes: a built-in data set (``jacosr.data.SOURCES``;
        the image data sets are prepared once, see ``python -m jacosr.data.prepare --help``),
        or your own, prepared from your files under a name of yours with ``python -m
        jacosr.data.prepare NAME --from PATH`` (a .npz, MNIST idx files, CIFAR python
        pickles, SVHN .mat files or class folders of images).
      known: original class indices of the known classes (their order defines labels 0..K-1).
      unknown: original class indices of the unknown classes, in ``unknown_dataset`` when that
        is set; default: every class of the unknown source that is not known.
      split_seed: seed of the known-train / known-val partition.
      val_fraction: fraction of each known class's training images held out as known-val,
        which sets the macro-F1 threshold (Protocol B); 0: none held out, every known training
        image is trained on and no macro-F1 is reported (Protocol A needs no known-val).
      data_dir: where prepared data sets live: TFDS files in tfds/, the decoded caches (your
        own data sets' too) in cache/.
      unknown_dataset: source of the unknown test images when they come from another data set
        (CIFAR+10/+50: ``cifar100``; Protocol B: an OOD folder such as ``lsun_crop``; or one
        of your own, which may hold test images only); default: the unknown classes of
        ``dataset`` itself.
      benchmark: a Protocol A benchmark (``mnist``, ``svhn``, ``cifar10``, ``cifar+10``,
        ``cifar+50``, ``tinyimagenet``); it sets dataset, known, unknown, unknown_dataset (and
        image_size for MNIST) from the standard split ``protocol_split``
        (see :mod:`jacosr.data.splits`).
      protocol_split: which of the benchmark's five standard splits, 0..4.
      image_size: resize every image to this side length (bilinear, as torchvision's
        ``Resize``); default: the known source's native size, to which the unknown source is
        then resized.

    Refused when built (``ValueError`` naming the flag), so before any data is read: a name
    that can name no data set, an unknown benchmark, fewer than two known classes, duplicated
    or negative class indices, an empty unknown list, a val_fraction outside [0, 1), a
    protocol_split outside 0..4, an image_size below 1, a negative split_seed. Building one
    reads nothing: a data set that is neither built in nor prepared in data_dir, class indices
    beyond its classes and known classes without training images are refused where the data
    are loaded (:func:`jacosr.data.check_available` for the command lines, before anything is
    written).
    """

    dataset: str = "digits"
    known: tuple[int, ...] = (0, 1, 2, 3, 4, 5)
    unknown: tuple[int, ...] | None = None
    split_seed: int = 0
    val_fraction: float = 0.1
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    unknown_dataset: str | None = None
    benchmark: str | None = None
    protocol_split: int = 0
    image_size: int | None = None

    def __post_init__(self):
        names = (
            f"one of {', '.join(sorted(SOURCES))}, or the name of a data set prepared from "
            "your own files (letters, digits, '.', '_', '+' and '-'; python -m "
            "jacosr.data.prepare NAME --from PATH)"
        )
        require(_is_name(self.dataset), "--dataset", names, self.dataset)
        require(
            self.unknown_dataset is None or _is_name(self.unknown_dataset),
            "--unknown-dataset",
            f"unset or {names}",
            self.unknown_dataset,
        )
        require(
            len(self.known) >= 2 and _distinct_indices(self.known),
            "--known",
            "at least 2 distinct class indices >= 0 (open-set recognition needs two known classes)",
            self.known,
        )
        require(
            self.unknown is None or (len(self.unknown) >= 1 and _distinct_indices(self.unknown)),
            "--unknown",
            "unset (every class that is not known) or distinct class indices >= 0",
            self.unknown,
        )
        require(self.split_seed >= 0, "--split-seed", ">= 0", self.split_seed)
        require(
            0 <= self.val_fraction < 1,
            "--val-fraction",
            "a fraction in [0, 1) (0: no known-val, and no macro-F1)",
            self.val_fraction,
        )
        require(
            self.benchmark is None or self.benchmark in BENCHMARKS,
            "--benchmark",
            f"unset or one of {', '.join(BENCHMARKS)}",
            self.benchmark,
        )
        require(
            isinstance(self.protocol_split, int) and 0 <= self.protocol_split < NUM_SPLITS,
            "--protocol-split",
            f"one of the standard splits 0..{NUM_SPLITS - 1}",
            self.protocol_split,
        )
        require(
            self.image_size is None or self.image_size >= 1,
            "--image-size",
            "unset (the native size) or >= 1",
            self.image_size,
        )


def _is_name(name: object) -> bool:
    return isinstance(name, str) and (name in SOURCES or is_own_name(name))


def _distinct_indices(classes: tuple[int, ...]) -> bool:
    return len(set(classes)) == len(classes) and all(c >= 0 for c in classes)
