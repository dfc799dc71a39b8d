"""The open-set builder on the in-memory sources, and every bad input it must refuse."""

import json
import re

import numpy as np
import pytest

from jacosr.data import (
    SOURCES,
    DataConfig,
    DataNotPreparedError,
    LabelledSource,
    Split,
    check_available,
    load_open_set,
    load_source,
    open_set_split,
    resize_source,
    to_float,
    toy2d_centres,
)
from jacosr.data.openset import split_sha256

DIGITS_TOTAL = 1797  # scikit-learn's load_digits


@pytest.fixture(scope="module")
def digits() -> LabelledSource:
    return load_source("digits")


def _uint8_source(name, num_classes, per_class, size=4, channels=3, seed=0) -> LabelledSource:
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)

    def x():
        return rng.integers(0, 256, (len(y), size, size, channels), dtype=np.uint8)

    return LabelledSource(name, x(), y, x(), y.copy(), num_classes)


# --- digits -------------------------------------------------------------------------------


def test_digits_partitions_hold_all_1797_images(digits):
    assert len(digits.train_y) + len(digits.test_y) == DIGITS_TOTAL
    assert digits.num_classes == 10
    for x, y in ((digits.train_x, digits.train_y), (digits.test_x, digits.test_y)):
        assert x.shape == (len(y), 8, 8, 1)
        assert x.dtype == np.float32
        assert x.min() >= -1.0 and x.max() <= 1.0
        assert x.min() == -1.0 and x.max() == 1.0  # 0..16 grey levels map onto the full range
        assert y.dtype == np.int32
        assert set(np.unique(y)) == set(range(10))


def test_digits_test_partition_is_30_percent_of_each_class(digits):
    for c in range(10):
        n_test = int(np.sum(digits.test_y == c))
        n_all = n_test + int(np.sum(digits.train_y == c))
        assert n_test == round(0.3 * n_all)


def test_digits_open_set_split_uses_every_image_once(digits):
    data = open_set_split(digits, (0, 1, 2, 3, 4, 5))
    sizes = data.describe()["sizes"]
    # the unknown classes' training images are the only ones left out
    n_unknown_train = int(np.isin(digits.train_y, range(6, 10)).sum())
    assert sum(sizes.values()) + n_unknown_train == DIGITS_TOTAL
    assert sizes["known_train"] + sizes["known_val"] == int(np.isin(digits.train_y, range(6)).sum())
    assert sizes["known_test"] == int(np.isin(digits.test_y, range(6)).sum())
    assert sizes["unknown_test"] == int(np.isin(digits.test_y, range(6, 10)).sum())
    for split in (data.known_train, data.known_val, data.known_test, data.unknown_test):
        assert split.x.shape[1:] == (8, 8, 1)
        assert split.x.dtype == np.float32
        assert split.y.dtype == np.int32
        assert len(split.x) == len(split.y)
    assert data.image_shape == (8, 8, 1)
    assert data.num_known == 6


def test_known_labels_are_remapped_in_the_given_order(digits):
    known = (7, 2, 5)
    data = open_set_split(digits, known, (0, 9))
    for split in (data.known_train, data.known_val, data.known_test):
        assert set(np.unique(split.y)) == {0, 1, 2}
    for k, c in enumerate(known):
        # boolean masks keep the source's order, so label k holds exactly class c's images
        np.testing.assert_array_equal(
            data.known_test.x[data.known_test.y == k], digits.test_x[digits.test_y == c]
        )
        n_train = int(np.sum(digits.train_y == c))
        assert np.sum(data.known_train.y == k) + np.sum(data.known_val.y == k) == n_train
    # the unknown split keeps the original labels
    assert set(np.unique(data.unknown_test.y)) == {0, 9}
    np.testing.assert_array_equal(
        data.unknown_test.x, digits.test_x[np.isin(digits.test_y, (0, 9))]
    )


@pytest.mark.parametrize("val_fraction", [0.1, 0.25])
def test_known_val_is_stratified(digits, val_fraction):
    known = (1, 3, 5, 7)
    data = open_set_split(digits, known, val_fraction=val_fraction, seed=3)
    for k, c in enumerate(known):
        n_c = int(np.sum(digits.train_y == c))
        assert np.sum(data.known_val.y == k) == round(val_fraction * n_c)
        assert np.sum(data.known_train.y == k) == n_c - round(val_fraction * n_c)
    # train and val are disjoint: together they are a permutation of the class's images
    for k, c in enumerate(known):
        both = np.concatenate(
            [data.known_train.x[data.known_train.y == k], data.known_val.x[data.known_val.y == k]]
        )
        ref = digits.train_x[digits.train_y == c]
        np.testing.assert_array_equal(
            np.sort(both.reshape(len(both), -1), axis=0), np.sort(ref.reshape(len(ref), -1), axis=0)
        )


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_split_is_deterministic_by_seed(digits, seed):
    a = open_set_split(digits, (0, 1, 2, 3), seed=seed)
    b = open_set_split(digits, (0, 1, 2, 3), seed=seed)
    c = open_set_split(digits, (0, 1, 2, 3), seed=seed + 100)
    for name in ("known_train", "known_val", "known_test", "unknown_test"):
        np.testing.assert_array_equal(getattr(a, name).x, getattr(b, name).x)
        np.testing.assert_array_equal(getattr(a, name).y, getattr(b, name).y)
    assert not np.array_equal(a.known_val.x, c.known_val.x)
    # the test sets do not depend on the split seed
    np.testing.assert_array_equal(a.known_test.x, c.known_test.x)


def test_describe_is_json_and_complete(digits):
    data = load_open_set(DataConfig(known=(4, 2, 0), unknown=(9, 8), split_seed=5))
    desc = json.loads(json.dumps(data.describe()))
    assert desc == {
        "source": "digits",
        "unknown_source": "digits",
        "benchmark": None,
        "protocol_split": None,
        "known_classes": [4, 2, 0],
        "unknown_classes": [9, 8],
        "seed": 5,
        "sizes": {
            "known_train": len(data.known_train.y),
            "known_val": len(data.known_val.y),
            "known_test": len(data.known_test.y),
            "unknown_test": len(data.unknown_test.y),
        },
        "image_shape": [8, 8, 1],
        "dtype": "float32",
        "sha256": {name: split_sha256(getattr(data, name)) for name in desc["sizes"]},
    }
    assert all(v > 0 for v in desc["sizes"].values())
    assert data.training_identity() == {
        "source": "digits",
        "known_classes": [4, 2, 0],
        "image_shape": [8, 8, 1],
        "dtype": "float32",
        "known_train": {
            "size": desc["sizes"]["known_train"],
            "sha256": desc["sha256"]["known_train"],
        },
    }


def test_split_fingerprint_changes_with_any_image_label_order_or_shape():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (6, 4, 4, 3), dtype=np.uint8), np.arange(6, dtype=np.int32)
    digest = split_sha256(Split(x, y))
    assert digest == split_sha256(Split(x.copy(), y.copy()))
    assert digest == split_sha256(Split(np.asfortranarray(x), y))  # the values, not the layout
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    pixel = x.copy()
    pixel[5, 3, 3, 2] ^= 1
    others = [
        Split(pixel, y),
        Split(x, np.where(y == 5, 4, y).astype(np.int32)),
        Split(x[::-1], y[::-1]),
        Split(x.reshape(6, 4, 12, 1), y),
        Split(x.astype(np.int16), y),
    ]
    assert len({digest, *(split_sha256(s) for s in others)}) == 1 + len(others)


def test_default_unknown_is_every_other_class(digits):
    data = open_set_split(digits, (3, 1))
    assert data.unknown_classes == (0, 2, 4, 5, 6, 7, 8, 9)


# --- toy2d --------------------------------------------------------------------------------


def test_toy2d_lies_in_the_square_around_its_centres():
    s = load_source("toy2d")
    assert s.num_classes == 8
    for x, y, per_class in ((s.train_x, s.train_y, 300), (s.test_x, s.test_y, 100)):
        assert x.shape == (8 * per_class, 1, 1, 2)
        assert x.dtype == np.float32
        assert np.abs(x).max() <= 1.0
        assert np.bincount(y).tolist() == [per_class] * 8
        pts = x[:, 0, 0, :]
        # nearly every point is nearest to its own centre (std 0.1, neighbours 0.46 apart:
        # about 2% fall past a midpoint)
        centres = toy2d_centres()
        nearest = np.argmin(np.linalg.norm(pts[:, None] - centres[None], axis=-1), axis=1)
        assert np.mean(nearest == y) > 0.95
    np.testing.assert_allclose(np.linalg.norm(toy2d_centres(), axis=1), 0.6)


def test_toy2d_through_the_config():
    data = load_open_set(DataConfig(dataset="toy2d", known=(0, 2, 4, 6)))
    assert data.image_shape == (1, 1, 2)
    assert data.unknown_classes == (1, 3, 5, 7)


# --- bad inputs ---------------------------------------------------------------------------


def test_unknown_source_name_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown data set 'no pe'") as err:
        load_source("no pe")  # cannot name a data set of the user's own either
    for name in SOURCES:
        assert name in str(err.value)
    with pytest.raises(DataNotPreparedError, match=r"no data set 'nope' .*prepare nope --from"):
        load_source("nope")  # could: how to prepare it
    with pytest.raises(ValueError, match=r"^--dataset must be one of cifar10, .*; got 'no pe'"):
        DataConfig(dataset="no pe")
    config = DataConfig(dataset="cifar11")  # builds without looking at the disk
    with pytest.raises(DataNotPreparedError, match=r"no data set 'cifar11' .*prepare cifar11"):
        check_available(config)  # where the data are needed, before anything is written


@pytest.mark.parametrize(
    ("known", "unknown", "role", "bad"),
    [((0, 10), None, "known", "[10]"), ((0, 1), (2, -1), "unknown", "[-1]")],
)
def test_class_index_out_of_range(digits, known, unknown, role, bad):
    with pytest.raises(ValueError, match=rf"{role} class index \{bad}\ out of range") as err:
        open_set_split(digits, known, unknown)
    assert "'digits', which has classes 0..9" in str(err.value)


def test_known_and_unknown_must_not_overlap(digits):
    with pytest.raises(ValueError, match=r"classes \[2, 3\] are listed as both known and unknown"):
        open_set_split(digits, (0, 1, 2, 3), (2, 3, 4))


def test_duplicated_classes(digits):
    with pytest.raises(ValueError, match=r"known classes \[1, 1, 2\] contain duplicates"):
        open_set_split(digits, (1, 1, 2))


@pytest.mark.parametrize("known", [(), (4,)])
def test_fewer_than_two_known_classes(digits, known):
    with pytest.raises(ValueError, match=r"need at least 2 known classes .* got \[4?\]"):
        open_set_split(digits, known)


def test_val_fraction_zero_trains_on_every_known_training_image(digits):
    """Protocol A: no known-val; known-train is every training image of the known classes, in
    the source's order."""
    known = (3, 0, 7)
    data = open_set_split(digits, known, val_fraction=0.0)
    assert data.known_val.x.shape == (0, *digits.train_x.shape[1:]) and len(data.known_val.y) == 0
    mask = np.isin(digits.train_y, known)
    np.testing.assert_array_equal(data.known_train.x, digits.train_x[mask])
    np.testing.assert_array_equal(
        data.known_train.y, [known.index(c) for c in digits.train_y[mask]]
    )
    via_config = load_open_set(DataConfig(known=known, val_fraction=0.0))
    np.testing.assert_array_equal(via_config.known_train.y, data.known_train.y)
    assert via_config.describe()["sizes"]["known_val"] == 0


def test_empty_known_val(digits):
    """A known-val asked for but empty (too small a fraction of a class) is still refused."""
    with pytest.raises(ValueError, match=r"the known_val split of 'digits' .* is empty; raise"):
        open_set_split(digits, (0, 1), val_fraction=0.001)


def test_empty_unknown_test(digits):
    with pytest.raises(ValueError, match=r"the unknown_test split .* is empty; name at least"):
        open_set_split(digits, tuple(range(10)))


def test_empty_known_split_of_a_class_without_images():
    src = _uint8_source("tiny", 4, 3)
    src = LabelledSource("tiny", src.train_x, src.train_y, src.test_x[:6], src.test_y[:6], 4)
    with pytest.raises(ValueError, match=r"the unknown_test split of 'tiny' .* is empty"):
        open_set_split(src, (0, 1), (2, 3), val_fraction=0.34)


def test_val_fraction_out_of_range(digits):
    with pytest.raises(ValueError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        open_set_split(digits, (0, 1), val_fraction=1.0)


# --- unknowns from another source (CIFAR+N, Protocol B) -----------------------------------


def test_unknown_source_supplies_the_unknown_test_split():
    known_src = _uint8_source("a", 5, 10, seed=1)
    other = _uint8_source("b", 7, 4, seed=2)
    data = open_set_split(known_src, (0, 1, 2), (1, 5), unknown_source=other)
    # the same indices may be known in one source and unknown in the other
    assert data.unknown_classes == (1, 5)
    np.testing.assert_array_equal(data.unknown_test.x, other.test_x[np.isin(other.test_y, (1, 5))])
    np.testing.assert_array_equal(data.unknown_test.y, other.test_y[np.isin(other.test_y, (1, 5))])
    np.testing.assert_array_equal(
        data.known_test.x, known_src.test_x[np.isin(known_src.test_y, (0, 1, 2))]
    )
    assert data.describe()["unknown_source"] == "b"
    # default: every class of the other source
    assert open_set_split(known_src, (0, 1), unknown_source=other).unknown_classes == tuple(
        range(7)
    )


def test_unknown_source_class_range_is_its_own():
    with pytest.raises(ValueError, match=r"unknown class index \[7\] out of range for 'b'"):
        open_set_split(
            _uint8_source("a", 10, 3), (0, 1), (7,), unknown_source=_uint8_source("b", 7, 3)
        )


@pytest.mark.parametrize(("size", "channels"), [(8, 3), (4, 1)])
def test_unknown_source_images_must_match(size, channels):
    other = _uint8_source("b", 2, 3, size=size, channels=channels)
    with pytest.raises(ValueError, match=r"unknown source 'b' holds uint8 images of shape"):
        open_set_split(_uint8_source("a", 3, 3), (0, 1), unknown_source=other)


def test_test_only_source_cannot_hold_the_known_classes():
    ood = _uint8_source("ood", 1, 5)
    ood = LabelledSource("ood", ood.train_x[:0], ood.train_y[:0], ood.test_x, ood.test_y, 1)
    with pytest.raises(ValueError, match="'ood' has no training images"):
        open_set_split(ood, (0, 1))


# --- images -------------------------------------------------------------------------------


def test_to_float_maps_uint8_onto_minus_one_one():
    x = np.array([0, 127, 255], dtype=np.uint8)
    np.testing.assert_allclose(np.asarray(to_float(x)), [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-7)
    f = np.array([-0.5, 0.5], dtype=np.float32)
    np.testing.assert_array_equal(np.asarray(to_float(f)), f)


def test_resize_source():
    src = _uint8_source("a", 2, 3, size=28, channels=1)
    const = src.train_x.copy()
    const[:] = 77
    src = LabelledSource("a", const, src.train_y, src.test_x, src.test_y, 2)
    out = resize_source(src, 32)
    assert out.train_x.shape == (6, 32, 32, 1) and out.test_x.shape == (6, 32, 32, 1)
    assert out.train_x.dtype == np.uint8
    assert np.all(out.train_x == 77)  # a constant image stays constant
    assert resize_source(out, 32) is out
    with pytest.raises(ValueError, match="only image sources can be resized"):
        resize_source(load_source("digits"), 32)
