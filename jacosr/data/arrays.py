"""A labelled data set from arrays in memory (:func:`source_from_arrays`): the checks every
route into jacosr's data passes (the file readers of :mod:`jacosr.data.files` end here too):
uint8 images ``[N, H, W, C]``, integer labels in 0..2**31-1 numbering the classes 0..K-1.
"""

from __future__ import annotations

import numpy as np

from jacosr.data.labelled import LabelledSource


def labels_of(y, what: str) -> np.ndarray:
    """``y`` as ``[N]`` int32 class indices (``[N, 1]`` squeezed), refused with a message
    starting with ``what`` when they are not integers in 0..2**31-1."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise ValueError(
            f"{what} must be integer class indices [N], got {y.dtype}{list(y.shape)}"
            + (
                "; for whole numbers stored as floats pass y.astype(np.int64)"
                if np.issubdtype(y.dtype, np.floating)
                else ""
            )
        )
    if y.size and y.min() < 0:
        raise ValueError(f"{what} holds the negative class index {int(y.min())}")
    # Checked before the cast, which would wrap a larger label into another class.
    if y.size and y.max() > np.iinfo(np.int32).max:
        raise ValueError(
            f"{what} holds the class index {int(y.max())}, beyond the int32 labels jacosr "
            "keeps; number the classes 0..K-1"
        )
    return y.astype(np.int32)


def _images(x, what: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(
            f"{what} must be images [N, H, W, C] or greyscale [N, H, W], got shape {list(x.shape)}"
        )
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer) and (x.size == 0 or 0 <= x.min() <= x.max() <= 255):
        return x.astype(np.uint8)
    raise ValueError(
        f"{what} must be uint8 images in [0, 255], got {x.dtype}"
        + (
            "; for floats in [0, 1] pass (x * 255).round().astype(np.uint8)"
            if np.issubdtype(x.dtype, np.floating)
            else ""
        )
    )


def source_from_arrays(
    name: str,
    train_x,
    train_y,
    test_x,
    test_y,
    *,
    num_classes: int | None = None,
    class_names: tuple[str, ...] | list[str] | None = None,
    flips: bool = True,
) -> LabelledSource:
    """A :class:`LabelledSource` from arrays (NumPy, or anything ``np.asarray`` takes).

    ``train_x, test_x``: ``[N, H, W, C]`` or greyscale ``[N, H, W]`` uint8 in [0, 255] (integer
    arrays within 0..255 are converted); an empty train partition (``N = 0``) makes a test-only
    source, for unknowns. ``train_y, test_y``: ``[N]`` (or ``[N, 1]``) integer class indices
    in 0..2**31-1 (checked before they become int32). ``num_classes``: default the largest
    label + 1, and then every class 0..K-1 must have an image (1-based or sparse labels are
    refused rather than guessed at; give ``num_classes`` for classes without images).
    ``class_names``: one per class, or None. ``flips``: whether a horizontal flip keeps an
    image in its class (False for handwritten digits; the paper's augmentation then does not
    flip them). Raises ``ValueError`` naming the array and what is
    wrong with it.
    """
    train_x, test_x = _images(train_x, "train_x"), _images(test_x, "test_x")
    train_y, test_y = labels_of(train_y, "train_y"), labels_of(test_y, "test_y")
    for part, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        if len(x) != len(y):
            raise ValueError(f"{part}_x holds {len(x)} images but {part}_y {len(y)} labels")
    if len(test_y) == 0:
        raise ValueError("the test partition holds no images (test_x is empty)")
    if len(train_y) and train_x.shape[1:] != test_x.shape[1:]:
        raise ValueError(
            f"train images are {'x'.join(map(str, train_x.shape[1:]))} but test images "
            f"{'x'.join(map(str, test_x.shape[1:]))}; they must have one shape"
        )
    largest = int(max(train_y.max(initial=0), test_y.max(initial=0)))
    if num_classes is None:
        _check_dense(np.unique(np.concatenate([train_y, test_y])))
    num_classes = largest + 1 if num_classes is None else int(num_classes)
    if num_classes <= largest:
        raise ValueError(f"num_classes is {num_classes}, but a label is {largest}")
    if class_names is not None:
        class_names = tuple(str(c) for c in class_names)
        if len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names for {num_classes} classes")
    return LabelledSource(
        name, train_x, train_y, test_x, test_y, num_classes, class_names, flips=bool(flips)
    )


def _check_dense(labels: np.ndarray) -> None:
    """Refuse sorted distinct ``labels`` that leave a class of 0..max without images: the
    number of classes is then guessed as max + 1, and 1-based or sparse labels would make
    classes no image has (a range of empty classes, for labels such as 10**9)."""
    gaps = np.flatnonzero(labels != np.arange(len(labels)))
    if len(gaps):
        largest = int(labels[-1])
        raise ValueError(
            f"the labels are {len(labels)} distinct values from {int(labels[0])} to {largest}, "
            f"which leaves {largest + 1 - len(labels)} of the classes 0..{largest} without images "
            f"(class {gaps[0]} first); number the classes 0..K-1 (np.searchsorted("
            "classes, y) does, with classes the np.unique of the train and test labels "
            "together), or give num_classes to keep classes without images"
        )
