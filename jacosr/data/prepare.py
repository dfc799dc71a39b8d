"""Prepare data sets: the only command that downloads or builds data.

    python -m jacosr.data.prepare cifar10
    python -m jacosr.data.prepare cifar10 cifar100 svhn_cropped --data-dir /data/jacosr
    python -m jacosr.data.prepare tinyimagenet lsun_crop --force

TFDS sources (``mnist``, ``cifar10``, ``cifar100``, ``svhn_cropped``, ``imagenet_resized/32x32``)
are downloaded and built by TFDS as ``array_record`` files under ``<data_dir>/tfds`` (needs
TensorFlow: ``pip install 'jacosr[data]'``), unless already there; folder sources
(``tinyimagenet``, ``imagenet_crop``, ``imagenet_resize``, ``lsun_crop``, ``lsun_resize``) must
first be unpacked into the data directory by hand (see :mod:`jacosr.data.folders`). Either way the
images are then decoded once into the uint8 cache ``<data_dir>/cache/<name>.npz`` that training
reads. Runtime: seconds for the small sets to tens of minutes for ImageNet 32x32 (download and
TFDS build excluded), on 2 CPU cores.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from jacosr.config import cli, run_command
from jacosr.data.labelled import DEFAULT_DATA_DIR, DataNotPreparedError, cache_path
from jacosr.data.sources import PREPARED_SOURCES, load_source
from jacosr.data.tfds_sources import TFDS_NAMES, build_tfds

# The names tyro offers on the command line (and checks); the registry is the source of truth.
PreparedName = Literal[PREPARED_SOURCES]  # type: ignore[valid-type]


@dataclass(frozen=True)
class PrepareArgs:
    """Download or decode data sets and cache them as uint8 arrays.

    Attributes:
      names: one or more data sets to prepare.
      data_dir: jacosr's data directory (TFDS files in tfds/, caches in cache/).
      force: rebuild the cache even if one exists.
    """

    names: Annotated[tuple[PreparedName, ...], tyro.conf.Positional]
    data_dir: Path = field(default_factory=lambda: DEFAULT_DATA_DIR)
    force: bool = False


def prepare(name: str, data_dir: Path | None = None, *, force: bool = False) -> Path:
    """Make source ``name`` loadable offline; returns its cache file."""
    if name not in PREPARED_SOURCES:
        raise ValueError(
            f"nothing to prepare for {name!r}; data sets that can be prepared are: "
            f"{', '.join(PREPARED_SOURCES)}"
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


def main(args: list[str] | None = None) -> list[Path]:
    """Prepare every named data set (``args``: the command line without the program name);
    returns their cache files. Errors propagate (:func:`jacosr.config.run_command` reports
    them as one line)."""
    parsed = cli(
        PrepareArgs,
        description="Download (TFDS, needs pip install 'jacosr[data]') or decode (image "
        "folders) data sets and cache them as uint8 arrays in <data_dir>/cache; see the "
        "module docstring of jacosr.data.prepare.",
        args=args,
    )
    if not parsed.names:
        raise ValueError(
            f"name at least one data set to prepare, out of: {', '.join(PREPARED_SOURCES)}"
        )
    paths = []
    for name in parsed.names:
        paths.append(prepare(name, parsed.data_dir, force=parsed.force))
        print(f"{name}: ready, cached in {paths[-1]}")
    return paths


if __name__ == "__main__":
    run_command(main)
