"""The standard open-set splits of Protocol A, verbatim: the benchmarks' class lists.

Provenance: the known-class lists below are copied verbatim from ``split.py`` (``splits_2020``)
of the ARPL code base (Chen et al., "Adversarial Reciprocal Points Learning for Open Set
Recognition", github.com/iCGY96/ARPL), which are also, identical and in the same order, in
``data/open_set_splits/osr_splits.py`` of Vaze et al., "Open-Set Recognition: a Good Closed-Set
Classifier is All You Need" (github.com/sgvaze/osr_closed_set_all_you_need). Both index the five
splits 0..4 in file order, as we do. The lists trace back to Neal et al. (2018).

Protocol A benchmarks:

  mnist, svhn, cifar10  6 known classes; the unknowns are the remaining 4.
  cifar+10, cifar+50    4 known CIFAR10 classes trained on; the unknowns are 10 or 50 CIFAR100
                        classes (CIFAR100 test images), listed per split.
  tinyimagenet          20 known classes; the unknowns are the other 180.

Known quirks, kept as published (do not "fix" them: results would stop being comparable):

* CIFAR10 splits 0 ([0, 6, 4, 9, 1, 7]) and 1 ([7, 6, 4, 9, 0, 1]) are the same set of classes
  in a different order; the five "splits" are four distinct ones.
* CIFAR+N's known classes are usually described as the four non-animal (vehicle) classes of
  CIFAR10, but only split 4 ([1, 0, 9, 8]: automobile, airplane, truck, ship) is. Splits 0-3
  hold two vehicles, automobile and truck, and two animals: deer and horse (split 0), frog and
  horse (1 and 2), frog and deer (3).
* The CIFAR100 unknowns are not all animals either (split 0 of CIFAR+10 has couch, bottle,
  bicycle, apple, oak tree, mountain, sea among its ten), and every CIFAR+10 list is the last ten
  entries of the CIFAR+50 list of the same split.
* MNIST is resized to 32x32 in these benchmarks (``image_size=32``), as ARPL does.

Every results file records the split index and both class lists (``OpenSetData.describe``).
This module imports nothing of jacosr: :mod:`jacosr.data.data_config` checks a config's benchmark
against it, :mod:`jacosr.data.splits` turns a split into a data config.
"""

from __future__ import annotations

from typing import NamedTuple

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

# fmt: off
_MNIST_KNOWN = (
    (2, 4, 5, 9, 8, 3), (3, 2, 6, 9, 4, 0), (5, 8, 3, 2, 4, 6), (3, 7, 8, 4, 0, 5),
    (6, 3, 4, 9, 8, 2),
)
_SVHN_KNOWN = (
    (5, 3, 7, 2, 8, 6), (3, 8, 7, 6, 2, 5), (8, 9, 4, 7, 2, 1), (3, 8, 2, 5, 0, 6),
    (4, 9, 2, 7, 1, 0),
)
_CIFAR10_KNOWN = (
    (0, 6, 4, 9, 1, 7), (7, 6, 4, 9, 0, 1), (1, 5, 7, 3, 9, 4), (8, 6, 1, 9, 0, 7),
    (2, 4, 1, 7, 9, 6),
)
_CIFAR_PLUS_KNOWN = ((4, 7, 9, 1), (6, 7, 1, 9), (9, 6, 1, 7), (6, 4, 9, 1), (1, 0, 9, 8))
_CIFAR_PLUS_10_UNKNOWN = (
    (30, 25, 1, 9, 8, 0, 46, 52, 49, 71),
    (41, 9, 49, 40, 73, 60, 48, 30, 95, 71),
    (8, 9, 49, 40, 73, 60, 48, 95, 30, 71),
    (95, 60, 30, 73, 46, 49, 68, 99, 8, 71),
    (33, 2, 3, 97, 46, 21, 64, 63, 88, 43),
)
_CIFAR_PLUS_50_UNKNOWN = (
    (27, 94, 29, 77, 88, 26, 69, 48, 75, 5, 59, 93, 39, 57, 45, 40, 78, 20, 98, 47,
     66, 70, 91, 76, 41, 83, 99, 32, 53, 72, 2, 95, 21, 73, 84, 68, 35, 11, 55, 60,
     30, 25, 1, 9, 8, 0, 46, 52, 49, 71),
    (65, 97, 86, 24, 45, 67, 2, 3, 91, 98, 79, 29, 62, 82, 33, 76, 0, 35, 5, 16,
     54, 11, 99, 52, 85, 1, 25, 66, 28, 84, 23, 56, 75, 46, 21, 72, 55, 68, 8, 69,
     41, 9, 49, 40, 73, 60, 48, 30, 95, 71),
    (20, 83, 65, 97, 94, 2, 93, 16, 67, 29, 62, 33, 24, 98, 5, 86, 35, 54, 0, 91,
     52, 66, 85, 84, 56, 11, 1, 76, 25, 55, 21, 99, 72, 41, 23, 75, 28, 68, 69, 46,
     8, 9, 49, 40, 73, 60, 48, 95, 30, 71),
    (92, 82, 77, 64, 5, 33, 62, 56, 70, 0, 20, 28, 67, 14, 84, 53, 91, 29, 85, 2,
     52, 83, 75, 35, 11, 21, 72, 98, 55, 1, 41, 76, 25, 66, 69, 9, 48, 54, 40, 23,
     95, 60, 30, 73, 46, 49, 68, 99, 8, 71),
    (47, 6, 19, 0, 62, 93, 59, 65, 54, 70, 34, 55, 23, 38, 72, 76, 53, 31, 78, 96,
     77, 27, 92, 18, 82, 50, 98, 32, 1, 75, 83, 4, 51, 35, 80, 11, 74, 66, 36, 42,
     33, 2, 3, 97, 46, 21, 64, 63, 88, 43),
)
_TINYIMAGENET_KNOWN = (
    (108, 147, 17, 58, 193, 123, 72, 144, 75, 167, 134, 14, 81, 171, 44, 197, 152, 66, 1, 133),
    (198, 161, 91, 59, 57, 134, 61, 184, 90, 35, 29, 23, 199, 38, 133, 19, 186, 18, 85, 67),
    (177, 0, 119, 26, 78, 80, 191, 46, 134, 92, 31, 152, 27, 60, 114, 50, 51, 133, 162, 93),
    (98, 36, 158, 177, 189, 157, 170, 191, 82, 196, 138, 166, 43, 13, 152, 11, 75, 174, 193, 190),
    (95, 6, 145, 153, 0, 143, 31, 23, 189, 81, 20, 21, 89, 26, 36, 170, 102, 177, 108, 169),
)
# fmt: on


class Benchmark(NamedTuple):
    """A Protocol A benchmark: where its images come from and its five class splits.

    ``known[i]``: original class indices of split i's known classes, in published order.
    ``unknown[i]``: split i's unknown classes (in ``unknown_dataset``), or None when they are the
    remaining classes of ``dataset``.
    """

    dataset: str
    num_classes: int
    known: tuple[tuple[int, ...], ...]
    unknown: tuple[tuple[int, ...], ...] | None = None
    unknown_dataset: str | None = None
    image_size: int | None = None


BENCHMARKS: dict[str, Benchmark] = {
    "mnist": Benchmark("mnist", 10, _MNIST_KNOWN, image_size=32),
    "svhn": Benchmark("svhn_cropped", 10, _SVHN_KNOWN),
    "cifar10": Benchmark("cifar10", 10, _CIFAR10_KNOWN),
    "cifar+10": Benchmark("cifar10", 10, _CIFAR_PLUS_KNOWN, _CIFAR_PLUS_10_UNKNOWN, "cifar100"),
    "cifar+50": Benchmark("cifar10", 10, _CIFAR_PLUS_KNOWN, _CIFAR_PLUS_50_UNKNOWN, "cifar100"),
    "tinyimagenet": Benchmark("tinyimagenet", 200, _TINYIMAGENET_KNOWN),
}
NUM_SPLITS = 5


def protocol_a_classes(benchmark: str, split: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(known, unknown)`` original class indices of split ``split`` (0..4) of ``benchmark``."""
    if benchmark not in BENCHMARKS:
        raise ValueError(
            f"unknown Protocol A benchmark {benchmark!r}; valid benchmarks are: "
            f"{', '.join(BENCHMARKS)}"
        )
    if not (isinstance(split, int) and 0 <= split < NUM_SPLITS):
        raise ValueError(
            f"Protocol A split index must be an integer in 0..{NUM_SPLITS - 1}, got {split!r}"
        )
    b = BENCHMARKS[benchmark]
    known = b.known[split]
    if b.unknown is not None:
        return known, b.unknown[split]
    return known, tuple(c for c in range(b.num_classes) if c not in known)
