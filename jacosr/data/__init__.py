"""Open-set data: labelled sources (built in, or from your own arrays and files), the open-set
split, standard splits, on-device augmentation."""

from jacosr.data.augment import AUGMENTATIONS, get_augmentation
from jacosr.data.config import DataConfig
from jacosr.data.files import FORMATS, read_files, source_from_arrays
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
    "FORMATS",
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
    "read_files",
    "resize_source",
    "source_from_arrays",
    "to_float",
    "toy2d_centres",
]
