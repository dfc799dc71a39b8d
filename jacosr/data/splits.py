"""The data configs of the standard open-set splits: Protocol A (a benchmark's split, from the
class lists of :mod:`jacosr.data.benchmarks`) and Protocol B.

Protocol B trains on all ten CIFAR10 classes and tests against an out-of-distribution folder
(``imagenet_crop``, ``imagenet_resize``, ``lsun_crop``, ``lsun_resize``): :func:`protocol_b_config`.
"""

from __future__ import annotations

import dataclasses

from jacosr.data.benchmarks import BENCHMARKS, protocol_a_classes
from jacosr.data.data_config import DataConfig
from jacosr.data.folders import OOD_FOLDERS


def resolve_benchmark(config: DataConfig) -> DataConfig:
    """``config`` with the fields its ``benchmark`` and ``protocol_split`` determine filled in.

    A config without a benchmark is returned unchanged. The benchmark sets dataset, known,
    unknown and unknown_dataset, and image_size when that is unset; a field the config sets to
    something else than both its default and the benchmark's value is a conflict (ValueError).
    """
    if config.benchmark is None:
        return config
    known, unknown = protocol_a_classes(config.benchmark, config.protocol_split)
    b = BENCHMARKS[config.benchmark]
    wanted = {
        "dataset": b.dataset,
        "known": known,
        "unknown": unknown,
        "unknown_dataset": b.unknown_dataset,
    }
    defaults = DataConfig()
    for name, value in wanted.items():
        given = getattr(config, name)
        if given not in (value, getattr(defaults, name)):
            raise ValueError(
                f"benchmark {config.benchmark!r} split {config.protocol_split} sets "
                f"{name}={value!r}, but the config also sets {name}={given!r}; "
                f"leave {name} out, or drop the benchmark"
            )
    image_size = config.image_size if config.image_size is not None else b.image_size
    return dataclasses.replace(config, **wanted, image_size=image_size)


def protocol_a_config(benchmark: str, split: int, **overrides) -> DataConfig:
    """The :class:`DataConfig` of Protocol A split ``split`` (0..4) of ``benchmark``.

    ``benchmark``: one of ``mnist``, ``svhn``, ``cifar10``, ``cifar+10``, ``cifar+50``,
    ``tinyimagenet``. ``overrides``: other DataConfig fields (split_seed, data_dir, ...).
    """
    protocol_a_classes(benchmark, split)  # its messages name the benchmarks and the splits
    return resolve_benchmark(DataConfig(benchmark=benchmark, protocol_split=split, **overrides))


def protocol_b_config(ood: str, **overrides) -> DataConfig:
    """Protocol B: all ten CIFAR10 classes known, unknowns from the OOD folder ``ood``."""
    if ood not in OOD_FOLDERS:
        raise ValueError(
            f"unknown Protocol B out-of-distribution set {ood!r}; valid are: "
            f"{', '.join(OOD_FOLDERS)}"
        )
    return DataConfig(dataset="cifar10", known=tuple(range(10)), unknown_dataset=ood, **overrides)
