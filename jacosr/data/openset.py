"""The open-set split: known classes for training and testing, unknown classes for testing only."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from dataclasses import dataclass
from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from jacosr.data.data_config import DataConfig
from jacosr.data.labelled import LabelledSource, resize_source
from jacosr.data.sources import check_source, load_source
from jacosr.data.splits import resolve_benchmark

__all__ = [
    "DataConfig",
    "OpenSetData",
    "Split",
    "load_open_set",
    "open_set_split",
    "split_sha256",
    "to_float",
]


class Split(NamedTuple):
    """Images and labels of one split.

    ``x``: ``[N, H, W, C]`` float32 in [-1, 1] or uint8 in [0, 255] (see :func:`to_float`).
    ``y``: ``[N]`` int32. Known splits carry labels remapped to ``0..K-1``; the unknown split
    carries the source's original class indices (useful for per-class analysis).
    """

    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class OpenSetData:
    """An open-set split of a labelled source.

    Attributes:
      known_train, known_val, known_test: known-class splits, labels in ``0..K-1``.
      unknown_test: unknown-class test images, original labels.
      known_classes, unknown_classes: original class indices; ``known_classes[k]`` is label k;
        the unknown ones index ``unknown_source``'s classes.
      seed: the split seed.
      source: the name of the known classes' source.
      unknown_source: the name of the unknown classes' source; None: the same as ``source``.
      benchmark, protocol_split: the Protocol A benchmark and split index the classes come
        from, or None.
    """

    known_train: Split
    known_val: Split
    known_test: Split
    unknown_test: Split
    known_classes: tuple[int, ...]
    unknown_classes: tuple[int, ...]
    seed: int
    source: str
    unknown_source: str | None = None
    benchmark: str | None = None
    protocol_split: int | None = None

    @property
    def num_known(self) -> int:
        return len(self.known_classes)

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.known_train.x.shape[1:])

    @functools.cached_property
    def fingerprints(self) -> dict[str, str]:
        """SHA-256 of each split's arrays (:func:`split_sha256`), by split name; computed once
        per object (hashing an image data set's arrays is not free)."""
        return {name: split_sha256(getattr(self, name)) for name in SPLITS}

    def describe(self) -> dict:
        """JSON-serialisable description of the split, for every results file: the sources,
        classes, sizes, image shape and dtype, and each split's SHA-256."""
        return {
            "source": self.source,
            "unknown_source": self.unknown_source or self.source,
            "benchmark": self.benchmark,
            "protocol_split": self.protocol_split,
            "known_classes": list(self.known_classes),
            "unknown_classes": list(self.unknown_classes),
            "seed": self.seed,
            "sizes": {name: len(getattr(self, name).y) for name in SPLITS},
            "image_shape": list(self.image_shape),
            "dtype": self.known_train.x.dtype.name,
            "sha256": dict(self.fingerprints),
        }

    def training_identity(self) -> dict:
        """What a model trained on these data depends on, JSON-serialisable: the known source
        and classes (in label order), the image shape and dtype, and the size and SHA-256 of
        known-train. A run records it (:func:`jacosr.runs.run_identity`) and refuses to
        resume on data with another one. The test splits are not part of it: evaluating a
        trained model on other test data is not another run (they are in :meth:`describe`)."""
        return {
            "source": self.source,
            "known_classes": list(self.known_classes),
            "image_shape": list(self.image_shape),
            "dtype": self.known_train.x.dtype.name,
            "known_train": {
                "size": len(self.known_train.y),
                "sha256": self.fingerprints["known_train"],
            },
        }


SPLITS = ("known_train", "known_val", "known_test", "unknown_test")
"""The splits of :class:`OpenSetData`, in the order of every description."""


def split_sha256(split: Split) -> str:
    """SHA-256 of a split: the dtype and shape of its images and labels, then their bytes
    (C order). Equal digests mean equal arrays, the same images in the same order with the
    same labels."""
    digest = hashlib.sha256()
    for array in split:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype.str}{list(array.shape)}|".encode())
        digest.update(array)
    return digest.hexdigest()


def to_float(x):
    """Map images to float32 in [-1, 1]: uint8 [0, 255] is rescaled, floats pass through.

    Works on numpy and jax arrays and inside jit, so uint8 data can stay on the device.
    """
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 127.5 - 1.0
    return x.astype(jnp.float32)


def _check_classes(
    source: LabelledSource,
    known: tuple[int, ...],
    unknown: tuple[int, ...] | None,
    unknown_source: LabelledSource,
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    same = unknown_source is source
    for role, classes, src in (
        ("known", known, source),
        ("unknown", unknown or (), unknown_source),
    ):
        n = src.num_classes
        bad = [c for c in classes if not 0 <= c < n]
        if bad:
            raise ValueError(
                f"{role} class index {bad} out of range for {src.name!r}, "
                f"which has classes 0..{n - 1}"
            )
        if len(set(classes)) != len(classes):
            raise ValueError(f"{role} classes {list(classes)} contain duplicates")
    if len(known) < 2:
        raise ValueError(
            f"need at least 2 known classes for open-set recognition, got {list(known)}"
        )
    if unknown is None:
        excluded = known if same else ()
        unknown = tuple(c for c in range(unknown_source.num_classes) if c not in excluded)
    overlap = sorted(set(known) & set(unknown)) if same else []
    if overlap:
        raise ValueError(
            f"classes {overlap} are listed as both known and unknown; "
            "the known and unknown lists must be disjoint"
        )
    return tuple(known), tuple(unknown)


def _check_compatible(source: LabelledSource, unknown_source: LabelledSource) -> None:
    if len(source.train_y) == 0:
        raise ValueError(
            f"{source.name!r} has no training images (an out-of-distribution test set); "
            "use it as the unknown source (unknown_dataset), not as the known one"
        )
    known_kind = (source.test_x.dtype, source.test_x.shape[1:])
    unknown_kind = (unknown_source.test_x.dtype, unknown_source.test_x.shape[1:])
    if known_kind != unknown_kind:
        raise ValueError(
            f"the unknown source {unknown_source.name!r} holds {unknown_kind[0]} images of shape "
            f"{list(unknown_kind[1])} but the known source {source.name!r} holds "
            f"{known_kind[0]} images of shape {list(known_kind[1])}; they must match "
            "(image_size resizes both, the channel counts must agree)"
        )


def _remap(y: np.ndarray, classes: tuple[int, ...]) -> np.ndarray:
    lookup = np.full(max(max(classes), int(y.max(initial=0))) + 1, -1, dtype=np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
    return lookup[y]


def _ranges(classes: np.ndarray) -> str:
    """Sorted distinct class indices in short: ``[0, 1, 2, 5]`` -> ``"0..2, 5"``."""
    starts = np.flatnonzero(np.diff(classes, prepend=-2) != 1)
    ends = np.append(starts[1:], len(classes)) - 1
    return ", ".join(
        f"{classes[a]}..{classes[b]}" if b > a else f"{classes[a]}"
        for a, b in zip(starts, ends, strict=True)
    )


def open_set_split(
    source: LabelledSource,
    known: tuple[int, ...],
    unknown: tuple[int, ...] | None = None,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    unknown_source: LabelledSource | None = None,
) -> OpenSetData:
    """Split any labelled source into known-train/val/test and unknown-test.

    Known-val takes ``val_fraction`` of each known class's training images (seeded by ``seed``;
    none when it is 0, and then known-val is empty); known-test comes from the source's test
    partition, unknown-test from the test partition of ``unknown_source`` (default: ``source``
    itself), whose class indices ``unknown`` then refers to; by default every class of
    ``unknown_source`` that is not known. Another unknown source gives CIFAR+10/+50 (unknowns
    from ``cifar100``) and Protocol B (an OOD folder); its images must have the known source's
    shape and dtype. Raises ``ValueError`` with what is wrong and
    what is valid for out-of-range, duplicated or overlapping classes, fewer than two known
    classes, mismatched images, a test-only known source, a known class without training
    images, and any empty split (known-val only when ``val_fraction`` asks for some).
    """
    other = unknown_source if unknown_source is not None else source
    _check_compatible(source, other)
    known, unknown = _check_classes(
        source, tuple(known), None if unknown is None else tuple(unknown), other
    )
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    is_val = np.zeros(len(source.train_y), dtype=bool)
    for c in known:
        idx = np.flatnonzero(source.train_y == c)
        is_val[rng.permutation(idx)[: round(val_fraction * len(idx))]] = True
    in_known_train = np.isin(source.train_y, known)
    in_known_test = np.isin(source.test_y, known)
    in_unknown_test = np.isin(other.test_y, unknown)

    def take(x, y, mask, classes=None) -> Split:
        return Split(x[mask], _remap(y[mask], classes) if classes else y[mask].astype(np.int32))

    data = OpenSetData(
        known_train=take(source.train_x, source.train_y, in_known_train & ~is_val, known),
        known_val=take(source.train_x, source.train_y, in_known_train & is_val, known),
        known_test=take(source.test_x, source.test_y, in_known_test, known),
        unknown_test=take(other.test_x, other.test_y, in_unknown_test),
        known_classes=known,
        unknown_classes=unknown,
        seed=seed,
        source=source.name,
        unknown_source=None if other is source else other.name,
    )
    # A known class without training images would be trained on as if it were there.
    counts = np.bincount(data.known_train.y, minlength=len(known))
    untrained = [c for c, n in zip(known, counts, strict=True) if n == 0]
    if untrained:
        having = np.unique(source.train_y)
        raise ValueError(
            f"the known classes {untrained} of {source.name!r} have no training images"
            + (
                " (they are all held out as known-val: lower val_fraction)"
                if np.isin(untrained, having).any()
                else ""
            )
            + f"; of its classes 0..{source.num_classes - 1}, these have training images: "
            f"{_ranges(having)}"
        )
    for name in SPLITS:
        size = len(getattr(data, name).y)
        if size == 0 and not (name == "known_val" and val_fraction == 0):
            hint = {
                "known_val": "raise val_fraction",
                "unknown_test": "name at least one unknown class that has test images",
            }.get(name, "choose classes that have images in this split")
            of = f"{other.name!r}" if name == "unknown_test" else f"{source.name!r}"
            raise ValueError(
                f"the {name} split of {of} with known classes {list(known)} and "
                f"unknown classes {list(unknown)} is empty; {hint}"
            )
    return data


def check_available(config: object) -> None:
    """Refuse ``config`` (a :class:`DataConfig`, or any config dataclass holding some, e.g. an
    experiment's) when one of its data sets is neither built in nor prepared
    (:func:`jacosr.data.sources.check_source`: the message says how to prepare it). Reads no
    data; the command lines call it before they write anything."""
    if isinstance(config, DataConfig):
        resolved = resolve_benchmark(config)
        for name in (resolved.dataset, resolved.unknown_dataset):
            if name is not None:
                check_source(name, resolved.data_dir)
    elif dataclasses.is_dataclass(config):
        for f in dataclasses.fields(config):
            check_available(getattr(config, f.name))


def load_open_set(config: DataConfig) -> OpenSetData:
    """Build the :class:`OpenSetData` a :class:`DataConfig` describes.

    Resolves a Protocol A ``benchmark`` into its classes, loads the known source and, when
    ``unknown_dataset`` is set, the unknown one, and resizes images to ``image_size`` (default:
    the unknown source to the known source's size).
    """
    config = resolve_benchmark(config)
    source = load_source(config.dataset, config.data_dir)
    unknown_source = None
    if config.unknown_dataset is not None and config.unknown_dataset != config.dataset:
        unknown_source = load_source(config.unknown_dataset, config.data_dir)
    size = config.image_size
    if size is not None:
        source = resize_source(source, size)
    if unknown_source is not None:
        height, width = source.test_x.shape[1:3]
        if size is None and height == width and source.test_x.dtype == np.uint8:
            size = height
        if size is not None:
            unknown_source = resize_source(unknown_source, size)
    data = open_set_split(
        source,
        config.known,
        config.unknown,
        seed=config.split_seed,
        val_fraction=config.val_fraction,
        unknown_source=unknown_source,
    )
    if config.benchmark is None:
        return data
    return dataclasses.replace(
        data, benchmark=config.benchmark, protocol_split=config.protocol_split
    )
