"""The standard Protocol A splits against lists typed again here, and their documented quirks.

The expected lists below are typed independently of jacosr.data.splits (from the split files of
the ARPL code base and of Vaze et al.); they must never be imported from the module under test.
"""

import dataclasses
import json
import re

import pytest

from jacosr.config import from_dict, to_dict
from jacosr.data import DataConfig, protocol_a_classes, protocol_a_config, protocol_b_config
from jacosr.data.splits import BENCHMARKS, resolve_benchmark

# fmt: off
EXPECTED_KNOWN = {
    "mnist": [[2, 4, 5, 9, 8, 3], [3, 2, 6, 9, 4, 0], [5, 8, 3, 2, 4, 6], [3, 7, 8, 4, 0, 5],
              [6, 3, 4, 9, 8, 2]],
    "svhn": [[5, 3, 7, 2, 8, 6], [3, 8, 7, 6, 2, 5], [8, 9, 4, 7, 2, 1], [3, 8, 2, 5, 0, 6],
             [4, 9, 2, 7, 1, 0]],
    "cifar10": [[0, 6, 4, 9, 1, 7], [7, 6, 4, 9, 0, 1], [1, 5, 7, 3, 9, 4], [8, 6, 1, 9, 0, 7],
                [2, 4, 1, 7, 9, 6]],
    "cifar+10": [[4, 7, 9, 1], [6, 7, 1, 9], [9, 6, 1, 7], [6, 4, 9, 1], [1, 0, 9, 8]],
    "cifar+50": [[4, 7, 9, 1], [6, 7, 1, 9], [9, 6, 1, 7], [6, 4, 9, 1], [1, 0, 9, 8]],
    "tinyimagenet": [
        [108, 147, 17, 58, 193, 123, 72, 144, 75, 167, 134, 14, 81, 171, 44, 197, 152, 66, 1, 133],
        [198, 161, 91, 59, 57, 134, 61, 184, 90, 35, 29, 23, 199, 38, 133, 19, 186, 18, 85, 67],
        [177, 0, 119, 26, 78, 80, 191, 46, 134, 92, 31, 152, 27, 60, 114, 50, 51, 133, 162, 93],
        [98, 36, 158, 177, 189, 157, 170, 191, 82, 196, 138, 166, 43, 13, 152, 11, 75, 174, 193,
         190],
        [95, 6, 145, 153, 0, 143, 31, 23, 189, 81, 20, 21, 89, 26, 36, 170, 102, 177, 108, 169],
    ],
}
EXPECTED_CIFAR_PLUS_UNKNOWN = {
    "cifar+10": [
        [30, 25, 1, 9, 8, 0, 46, 52, 49, 71],
        [41, 9, 49, 40, 73, 60, 48, 30, 95, 71],
        [8, 9, 49, 40, 73, 60, 48, 95, 30, 71],
        [95, 60, 30, 73, 46, 49, 68, 99, 8, 71],
        [33, 2, 3, 97, 46, 21, 64, 63, 88, 43],
    ],
    "cifar+50": [
        [27, 94, 29, 77, 88, 26, 69, 48, 75, 5, 59, 93, 39, 57, 45, 40, 78, 20, 98, 47, 66, 70,
         91, 76, 41, 83, 99, 32, 53, 72, 2, 95, 21, 73, 84, 68, 35, 11, 55, 60, 30, 25, 1, 9, 8,
         0, 46, 52, 49, 71],
        [65, 97, 86, 24, 45, 67, 2, 3, 91, 98, 79, 29, 62, 82, 33, 76, 0, 35, 5, 16, 54, 11, 99,
         52, 85, 1, 25, 66, 28, 84, 23, 56, 75, 46, 21, 72, 55, 68, 8, 69, 41, 9, 49, 40, 73, 60,
         48, 30, 95, 71],
        [20, 83, 65, 97, 94, 2, 93, 16, 67, 29, 62, 33, 24, 98, 5, 86, 35, 54, 0, 91, 52, 66, 85,
         84, 56, 11, 1, 76, 25, 55, 21, 99, 72, 41, 23, 75, 28, 68, 69, 46, 8, 9, 49, 40, 73, 60,
         48, 95, 30, 71],
        [92, 82, 77, 64, 5, 33, 62, 56, 70, 0, 20, 28, 67, 14, 84, 53, 91, 29, 85, 2, 52, 83, 75,
         35, 11, 21, 72, 98, 55, 1, 41, 76, 25, 66, 69, 9, 48, 54, 40, 23, 95, 60, 30, 73, 46, 49,
         68, 99, 8, 71],
        [47, 6, 19, 0, 62, 93, 59, 65, 54, 70, 34, 55, 23, 38, 72, 76, 53, 31, 78, 96, 77, 27, 92,
         18, 82, 50, 98, 32, 1, 75, 83, 4, 51, 35, 80, 11, 74, 66, 36, 42, 33, 2, 3, 97, 46, 21,
         64, 63, 88, 43],
    ],
}
# fmt: on
EXPECTED_SOURCES = {
    "mnist": ("mnist", None, 10),
    "svhn": ("svhn_cropped", None, 10),
    "cifar10": ("cifar10", None, 10),
    "cifar+10": ("cifar10", "cifar100", 10),
    "cifar+50": ("cifar10", "cifar100", 10),
    "tinyimagenet": ("tinyimagenet", None, 200),
}
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
VEHICLES = {"airplane", "automobile", "ship", "truck"}


def test_the_six_benchmarks_and_no_others():
    assert set(BENCHMARKS) == set(EXPECTED_KNOWN)


@pytest.mark.parametrize("benchmark", sorted(EXPECTED_KNOWN))
@pytest.mark.parametrize("split", range(5))
def test_split_lists_are_verbatim(benchmark, split):
    known, unknown = protocol_a_classes(benchmark, split)
    assert list(known) == EXPECTED_KNOWN[benchmark][split]
    dataset, unknown_dataset, num_classes = EXPECTED_SOURCES[benchmark]
    if benchmark in EXPECTED_CIFAR_PLUS_UNKNOWN:
        assert list(unknown) == EXPECTED_CIFAR_PLUS_UNKNOWN[benchmark][split]
    else:  # the remaining classes
        assert list(unknown) == sorted(set(range(num_classes)) - set(known))
        assert len(unknown) == {10: 4, 200: 180}[num_classes]
    config = protocol_a_config(benchmark, split)
    assert config.dataset == dataset
    assert config.unknown_dataset == unknown_dataset
    assert config.known == known and config.unknown == unknown
    assert config.benchmark == benchmark and config.protocol_split == split
    assert config.image_size == (32 if benchmark == "mnist" else None)
    assert len(set(known)) == len(known) and len(set(unknown)) == len(unknown)


def test_cifar10_splits_0_and_1_are_the_same_set():
    (k0, _), (k1, _) = protocol_a_classes("cifar10", 0), protocol_a_classes("cifar10", 1)
    assert k0 != k1 and set(k0) == set(k1) == {0, 1, 4, 6, 7, 9}
    distinct = {frozenset(protocol_a_classes("cifar10", i)[0]) for i in range(5)}
    assert len(distinct) == 4


def test_cifar_plus_known_classes_are_not_all_vehicles():
    names = [{CIFAR10[c] for c in protocol_a_classes("cifar+10", i)[0]} for i in range(5)]
    assert [n <= VEHICLES for n in names] == [False, False, False, False, True]
    assert names[0] == {"deer", "horse", "truck", "automobile"}
    assert names[1] == names[2] == {"frog", "horse", "automobile", "truck"}
    assert names[3] == {"frog", "deer", "truck", "automobile"}
    assert names[4] == {"automobile", "airplane", "truck", "ship"}


def test_cifar_plus_10_unknowns_are_the_tail_of_cifar_plus_50():
    for i in range(5):
        assert protocol_a_classes("cifar+50", i)[1][-10:] == protocol_a_classes("cifar+10", i)[1]
        assert protocol_a_classes("cifar+50", i)[0] == protocol_a_classes("cifar+10", i)[0]


@pytest.mark.parametrize("benchmark", ["cifar100", "CIFAR10", "cifar+100", ""])
def test_bad_benchmark_lists_the_valid_ones(benchmark):
    with pytest.raises(
        ValueError, match=re.escape(f"unknown Protocol A benchmark '{benchmark}'")
    ) as err:
        protocol_a_config(benchmark, 0)
    for name in EXPECTED_KNOWN:
        assert name in str(err.value)


@pytest.mark.parametrize("split", [-1, 5, 1.0, "0"])
def test_bad_split_index(split):
    with pytest.raises(ValueError, match=r"split index must be an integer in 0\.\.4, got"):
        protocol_a_config("mnist", split)


def test_overrides_and_round_trip_through_json(tmp_path):
    config = protocol_a_config("cifar+50", 3, split_seed=9, data_dir=tmp_path, image_size=64)
    assert config.split_seed == 9 and config.data_dir == tmp_path and config.image_size == 64
    again = from_dict(DataConfig, json.loads(json.dumps(to_dict(config))))
    assert again == config
    assert resolve_benchmark(again) == config  # resolving is idempotent


def test_benchmark_flags_fill_in_the_classes():
    # what `--benchmark svhn --protocol-split 4` gives on the command line
    config = resolve_benchmark(DataConfig(benchmark="svhn", protocol_split=4))
    assert config == protocol_a_config("svhn", 4)
    assert config.known == (4, 9, 2, 7, 1, 0)


def test_benchmark_conflicting_with_explicit_classes():
    with pytest.raises(ValueError, match=r"sets known=\(1, 0, 9, 8\), but the config also sets"):
        resolve_benchmark(DataConfig(benchmark="cifar+10", protocol_split=4, known=(0, 1)))
    with pytest.raises(ValueError, match="sets dataset='mnist', but the config also sets"):
        resolve_benchmark(DataConfig(benchmark="mnist", dataset="svhn_cropped"))


def test_no_benchmark_leaves_the_config_alone():
    config = DataConfig(known=(1, 2))
    assert resolve_benchmark(config) is config


@pytest.mark.parametrize("ood", ["imagenet_crop", "imagenet_resize", "lsun_crop", "lsun_resize"])
def test_protocol_b(ood):
    config = protocol_b_config(ood, split_seed=2)
    assert config == dataclasses.replace(
        DataConfig(), dataset="cifar10", known=tuple(range(10)), unknown_dataset=ood, split_seed=2
    )


def test_protocol_b_bad_name():
    with pytest.raises(ValueError, match=r"unknown Protocol B .* 'svhn'; valid are: imagenet_crop"):
        protocol_b_config("svhn")
