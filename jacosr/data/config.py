"""The data configuration: which source, which open-set split, where the data lives."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from jacosr.data.labelled import DEFAULT_DATA_DIR


@dataclass(frozen=True)
class DataConfig:
    """Which data and which open-set split.

    Its fields are flat command-line flags (``--dataset``, ``--known``, ``--benchmark``, ...).

    Attributes:
      dataset: source of the known classes (see ``jacosr.data.SOURCES``).
      known: original class indices of the known classes (their order defines labels 0..K-1).
      unknown: original class indices of the unknown classes, in ``unknown_dataset`` when that
        is set; default: every class of the unknown source that is not known.
      split_seed: seed of the known-train / known-val partition.
      val_fraction: fraction of each known class's training images held out as known-val.
      data_dir: where prepared data sets live (image sources only).
      unknown_dataset: source of the unknown test images when they come from another data set
        (CIFAR+10/+50: ``cifar100``; Protocol B: an OOD folder such as ``lsun_crop``); default:
        the unknown classes of ``dataset`` itself.
      benchmark: a Protocol A benchmark (``mnist``, ``svhn``, ``cifar10``, ``cifar+10``,
        ``cifar+50``, ``tinyimagenet``); it sets dataset, known, unknown, unknown_dataset (and
        image_size for MNIST) from the standard split ``protocol_split``
        (see :mod:`jacosr.data.splits`).
      protocol_split: which of the benchmark's five standard splits, 0..4.
      image_size: resize every image to this side length (bilinear, as torchvision's
        ``Resize``); default: the known source's native size, to which the unknown source is
        then resized.
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
