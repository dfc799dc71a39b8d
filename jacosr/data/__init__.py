"""Open-set data: labelled sources, the open-set split, standard splits, on-device augmentation."""

from jacosr.data.augment import AUGMENTATIONS, get_augmentation
from jacosr.data.config import DataConfig
from jacosr.data.labelled import DataNotPreparedError, resize_source
from jacosr.data.openset import (
    OpenSetData,
    Split,
    load_open_set,
    open_set_split,
    to_float,
)
from jacosr.data.sources import SOURCES, LabelledSource, load_source, toy2d_centres
from jacosr.data.splits import (
    BENCHMARKS,
    protocol_a_classes,
    protocol_a_config,
    protocol_b_config,
)

__all__ = [
    "AUGMENTATIONS",
    "BENCHMARKS",
    "SOURCES",
    "DataConfig",
    "DataNotPreparedError",
    "LabelledSource",
    "OpenSetData",
    "Split",
    "get_augmentation",
    "load_open_set",
    "load_source",
    "open_set_split",
    "protocol_a_classes",
    "protocol_a_config",
    "protocol_b_config",
    "resize_source",
    "to_float",
    "toy2d_centres",
]
