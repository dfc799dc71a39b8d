"""Open-set data: labelled sources (built in, or from your own arrays and files), the open-set
split, standard splits, on-device augmentation."""

from jacosr.data.arrays import source_from_arrays
from jacosr.data.augment import AUGMENTATIONS, get_augmentation
from jacosr.data.benchmarks import BENCHMARKS, NUM_SPLITS, protocol_a_classes
from jacosr.data.data_config import DataConfig
from jacosr.data.files import FORMATS, read_files
from jacosr.data.labelled import DataNotPreparedError, resize_source
from jacosr.data.openset import (
    OpenSetData,
    Split,
    check_available,
    load_open_set,
    open_set_split,
    to_float,
)
from jacosr.data.sources import (
    SOURCES,
    LabelledSource,
    load_source,
    paper_augmentation,
    toy2d_centres,
)
from jacosr.data.splits import protocol_a_config, protocol_b_config, resolve_benchmark

__all__ = [
    "AUGMENTATIONS",
    "BENCHMARKS",
    "FORMATS",
    "NUM_SPLITS",
    "SOURCES",
    "DataConfig",
    "DataNotPreparedError",
    "LabelledSource",
    "OpenSetData",
    "Split",
    "check_available",
    "get_augmentation",
    "load_open_set",
    "load_source",
    "open_set_split",
    "paper_augmentation",
    "protocol_a_classes",
    "protocol_a_config",
    "protocol_b_config",
    "read_files",
    "resize_source",
    "resolve_benchmark",
    "source_from_arrays",
    "to_float",
    "toy2d_centres",
]
