"""On-device augmentation against closed forms and NumPy references."""

from collections import Counter

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacosr.data import AUGMENTATIONS, DataConfig, get_augmentation, paper_augmentation
from jacosr.data.augment import (
    colour_jitter,
    flip,
    random_flip,
    random_translate,
    sample_shifts,
    translate,
)
from jacosr.recipe import TrainConfig, resolve

NAMES = ["none", "weak", "translate", "strong"]
# One batch shape throughout keeps compilations (the slow part on 2 cores) few.
B, H, W = 8, 8, 9
TRACES: Counter = Counter()


def _jit_counting_traces(name):
    def fn(key, x):
        TRACES[name, x.shape] += 1
        return AUGMENTATIONS[name](key, x)

    return jax.jit(fn)


JITTED = {name: _jit_counting_traces(name) for name in AUGMENTATIONS}
translate_jit = jax.jit(translate)
random_translate_jit = jax.jit(random_translate)
colour_jitter_jit = jax.jit(colour_jitter)


def _images(seed=0, b=B, h=H, w=W, c=3) -> jax.Array:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.uniform(-1, 1, (b, h, w, c)).astype(np.float32))


def _translate_ref(x: np.ndarray, shifts: np.ndarray, fill: float = -1.0) -> np.ndarray:
    """out[b, i, j] = x[b, i - dy, j - dx] where that exists, else fill (a plain loop)."""
    out = np.full_like(x, fill)
    _, h, w, _ = x.shape
    for b, (dy, dx) in enumerate(shifts):
        for i in range(h):
            for j in range(w):
                if 0 <= i - dy < h and 0 <= j - dx < w:
                    out[b, i, j] = x[b, i - dy, j - dx]
    return out


def test_registry():
    assert set(AUGMENTATIONS) == set(NAMES)
    with pytest.raises(ValueError, match="unknown augmentation 'medium'") as err:
        get_augmentation("medium")
    for name in NAMES:
        assert name in str(err.value)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_range_and_determinism(name, channels):
    fn = JITTED[name]
    x = _images(c=channels)
    key = jax.random.key(0)
    out = fn(key, x)
    assert out.shape == x.shape and out.dtype == jnp.float32
    assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    np.testing.assert_array_equal(fn(key, x), out)
    if name == "none":
        np.testing.assert_array_equal(out, x)
    else:
        differs = np.any(fn(jax.random.key(1), x) != out, axis=(1, 2, 3))
        assert differs.sum() >= B // 2  # most images get another draw


def test_compiles_once_for_many_keys():
    x = _images()
    for i in range(5):
        JITTED["strong"](jax.random.fold_in(jax.random.key(0), i), x)
    assert TRACES["strong", x.shape] == 1


def test_flip_reverses_the_width_exactly():
    x = _images()
    np.testing.assert_array_equal(random_flip(jax.random.key(3), x, p=1.0), x[:, :, ::-1, :])
    np.testing.assert_array_equal(random_flip(jax.random.key(3), x, p=0.0), x)
    mask = jnp.array([True, False, True, False, False, True, True, False])
    np.testing.assert_array_equal(
        flip(x, mask), np.where(mask[:, None, None, None], np.asarray(x)[:, :, ::-1], x)
    )


def test_random_flip_flips_about_half_and_nothing_else():
    x = np.asarray(_images())
    flips = []
    for i in range(50):
        out = np.asarray(random_flip(jax.random.key(i), jnp.asarray(x)))
        same = np.all(out == x, axis=(1, 2, 3))
        flipped = np.all(out == x[:, :, ::-1], axis=(1, 2, 3))
        assert np.all(same | flipped)
        flips.append(flipped.sum())
    assert 160 < sum(flips) < 240  # Binomial(400, 1/2): mean 200, sd 10


def test_translate_moves_content_by_the_shift():
    x = _images()
    s = np.array([[0, 0], [4, -4], [-4, 4], [1, 3], [-2, -1], [3, 0], [0, -3], [4, 4]], np.int32)
    np.testing.assert_array_equal(
        translate_jit(x, jnp.asarray(s)), _translate_ref(np.asarray(x), s)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_translate_uses_the_sampled_offsets(seed):
    x = _images(seed=seed)
    key = jax.random.key(seed)
    shifts = np.asarray(sample_shifts(key, B))
    np.testing.assert_array_equal(
        random_translate_jit(key, x), _translate_ref(np.asarray(x), shifts)
    )


def test_sampled_offsets_cover_minus_4_to_4():
    shifts = np.asarray(sample_shifts(jax.random.key(0), 200))
    assert set(shifts.ravel()) == set(range(-4, 5))


def test_weak_is_a_translation_then_maybe_a_flip():
    x = np.asarray(_images())
    out = np.asarray(JITTED["weak"](jax.random.key(2), jnp.asarray(x)))
    for b in range(len(x)):
        candidates = [
            t[:, ::-1] if f else t
            for dy in range(-4, 5)
            for dx in range(-4, 5)
            for t in [_translate_ref(x[b : b + 1], np.array([[dy, dx]]))[0]]
            for f in (False, True)
        ]
        assert any(np.array_equal(out[b], c) for c in candidates)


def test_translate_is_weak_without_the_flip():
    """The same key draws the same shifts as ``weak``, and the images are never flipped."""
    x = np.asarray(_images())
    key = jax.random.key(5)
    k_shift, _ = jax.random.split(key)
    shifts = np.asarray(sample_shifts(k_shift, B))
    weak = np.asarray(JITTED["weak"](key, jnp.asarray(x)))
    # weak's shift key is the first half of its split; translate's is the key itself
    np.testing.assert_array_equal(
        JITTED["translate"](k_shift, jnp.asarray(x)), _translate_ref(x, shifts)
    )
    moved = _translate_ref(x, shifts)
    assert all(
        np.array_equal(weak[b], moved[b]) or np.array_equal(weak[b], moved[b, :, ::-1])
        for b in range(B)
    )


def test_the_papers_augmentation_per_source_and_benchmark():
    """Handwritten digits are translated, never flipped (ARPL's MNIST loader does not flip);
    every other source gets the paper's weak augmentation. ``auto`` follows it on image data
    (the benchmark's source decides) and stays off on digits and toy2d."""
    assert {s: paper_augmentation(s) for s in ("mnist", "digits", "svhn_cropped", "cifar10")} == {
        "mnist": "translate",
        "digits": "translate",
        "svhn_cropped": "weak",
        "cifar10": "weak",
    }
    auto = {
        name: resolve(TrainConfig(data=DataConfig(benchmark=name))).augment
        for name in ("mnist", "svhn", "cifar10", "cifar+50", "tinyimagenet")
    }
    assert auto == {
        "mnist": "translate",
        "svhn": "weak",
        "cifar10": "weak",
        "cifar+50": "weak",
        "tinyimagenet": "weak",
    }
    assert resolve(TrainConfig(data=DataConfig(dataset="mnist"))).augment == "translate"
    assert resolve(TrainConfig()).augment == "none"  # digits
    assert resolve(TrainConfig(data=DataConfig(dataset="toy2d"))).augment == "none"
    assert resolve(TrainConfig(data=DataConfig(benchmark="mnist"), augment="weak")).augment == (
        "weak"
    )  # set by hand: kept


def _jitter_ref(key, x: np.ndarray, strength: float) -> np.ndarray:
    b, c, s = np.asarray(
        jax.random.uniform(key, (3, len(x), 1, 1, 1), minval=1 - strength, maxval=1 + strength)
    )
    luma = np.array([0.299, 0.587, 0.114])

    def grey(u):
        return u if u.shape[-1] == 1 else (u @ luma)[..., None]

    u = np.clip((x + 1) / 2 * b, 0, 1)
    m = grey(u).mean(axis=(1, 2, 3), keepdims=True)
    u = np.clip((u - m) * c + m, 0, 1)
    if x.shape[-1] == 3:
        g = grey(u)
        u = np.clip((u - g) * s + g, 0, 1)
    return u * 2 - 1


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("strength", [0.4, 0.9])
def test_colour_jitter_matches_its_formula(channels, strength):
    x = _images(c=channels)
    key = jax.random.key(4)
    np.testing.assert_allclose(
        colour_jitter_jit(key, x, strength), _jitter_ref(key, np.asarray(x), strength), atol=1e-5
    )


def test_colour_jitter_of_strength_zero_is_the_identity():
    x = _images()
    np.testing.assert_allclose(colour_jitter_jit(jax.random.key(0), x, 0.0), x, atol=1e-6)


def test_colour_jitter_needs_one_or_three_channels():
    with pytest.raises(ValueError, match="1- or 3-channel images, got 2 channels"):
        jax.eval_shape(AUGMENTATIONS["strong"], jax.random.key(0), _images(c=2))
