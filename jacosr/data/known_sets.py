"""Random known sets of classes (Fig. 6's sizes K, and Fig. 12 on a data set without standard
splits): :func:`draw_known_sets` draws them, :func:`with_known` makes a data config of one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from jacosr.data.data_config import DataConfig
from jacosr.data.sources import load_source
from jacosr.data.splits import resolve_benchmark


def draw_known_sets(
    num_classes: int, sizes: Sequence[int], draws: int, seed: int
) -> list[dict[int, tuple[int, ...]]]:
    """``draws`` random, nested known sets of each size: ``[{K: classes}]``, one dict per draw.

    Draw ``d`` is a random order of the ``num_classes`` classes; its known set of size K is the
    first K of them, sorted (so a draw's sets are nested: the K = 3 set holds the K = 2 one,
    which pairs the sizes). Orders are drawn one after another from ``default_rng(seed)``; an
    order that repeats, for some size, the set of an earlier draw is drawn again, so the
    ``draws`` sets of each size are distinct. More draws keep the earlier ones.

    Raises ``ValueError`` when a size is not in ``2 .. num_classes - 1`` or has fewer than
    ``draws`` distinct sets.
    """
    for k in sizes:
        if not 2 <= k < num_classes:
            raise ValueError(
                f"cannot draw {k} known classes of {num_classes} with at least one unknown; "
                f"choose sizes from 2 to {num_classes - 1}"
            )
        if math.comb(num_classes, k) < draws:
            raise ValueError(
                f"only {math.comb(num_classes, k)} distinct sets of {k} of {num_classes} "
                f"classes, fewer than {draws} draws; lower --draws"
            )
    rng = np.random.default_rng(seed)
    chosen: list[dict[int, tuple[int, ...]]] = []
    for _ in range(100_000):
        if len(chosen) == draws:
            return chosen
        order = rng.permutation(num_classes)
        sets = {k: tuple(sorted(int(c) for c in order[:k])) for k in sizes}
        if all(sets[k] != earlier[k] for earlier in chosen for k in sizes):
            chosen.append(sets)
    raise ValueError(f"could not draw {draws} distinct known sets of sizes {list(sizes)}")


def source_classes(data: DataConfig) -> int:
    """The number of classes of ``data``'s (known) data set, a benchmark's included."""
    resolved = resolve_benchmark(data)
    return load_source(resolved.dataset, resolved.data_dir).num_classes


def known_set_name(classes: Sequence[int]) -> str:
    """A run's folder for a known set: ``known0-2-5``."""
    return "known" + "-".join(str(c) for c in classes)


def with_known(data: DataConfig, classes: Sequence[int]) -> DataConfig:
    """``data`` with the known classes ``classes`` and every other class of its data set
    unknown; a benchmark only chooses the data set and image size."""
    resolved = resolve_benchmark(data)
    return dataclasses.replace(
        resolved,
        known=tuple(classes),
        unknown=None,
        unknown_dataset=None,
        benchmark=None,
        protocol_split=DataConfig().protocol_split,
    )
