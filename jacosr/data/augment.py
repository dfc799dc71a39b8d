"""On-device augmentation: pure JAX functions of an explicit PRNG key, run inside the jitted step.

Every augmentation has the signature ``(key, x) -> x'`` with ``x: [B, H, W, C]`` float32 in
[-1, 1] (apply :func:`jacosr.data.to_float` first); the output has the same shape, dtype and
range, and each image of the batch gets its own random draw. Look one up by name in the typed
registry ``AUGMENTATIONS`` (:func:`get_augmentation` lists the valid names on a typo).

* ``none``: the identity.
* ``weak``: the paper's training augmentation, that of the ARPL code base: a random translation
  by up to 4 px in each direction (torchvision's ``RandomCrop(32, padding=4)``: pad by 4 px,
  crop a random window back to the original size), then a random horizontal flip with
  probability 1/2. Padding is black (-1, what ``RandomCrop`` pads a [0, 1] image with).
* ``translate``: ``weak`` without the flip, for handwritten digits (see below).
* ``strong``: ``weak`` followed by colour jitter: brightness, contrast and saturation factors
  each drawn uniformly from [0.6, 1.4] (torchvision's ``ColorJitter(0.4, 0.4, 0.4)``), applied
  in that fixed order (torchvision shuffles the order) on [0, 1] intensities and clipped. The
  crop is the same pad-4 crop as ``weak``, not a random-resized crop: at 32x32 a
  random-resized crop throws away most of an image. For 1-channel images saturation is a no-op.

Flips are part of the paper's weak augmentation ("image flipping and translation", Sec. VI-A),
but handwritten digits are not flip-invariant (a flipped 2 or 5 is no digit): which
augmentation is the paper's for a data set is :func:`jacosr.data.paper_augmentation`'s call
(``translate`` where a flip changes the class).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]

MAX_SHIFT = 4
PAD_VALUE = -1.0
JITTER = 0.4
# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale.
_LUMA = (0.299, 0.587, 0.114)


def flip(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Reverse the width axis of the images where ``mask: [B]`` bool is True."""
    return jnp.where(mask[:, None, None, None], x[:, :, ::-1, :], x)


def random_flip(key: jax.Array, x: jax.Array, p: float = 0.5) -> jax.Array:
    """Flip each image horizontally with probability ``p``."""
    return flip(x, jax.random.bernoulli(key, p, (x.shape[0],)))


def sample_shifts(key: jax.Array, batch: int, max_shift: int = MAX_SHIFT) -> jax.Array:
    """``[batch, 2]`` int32 shifts (rows, columns), each uniform in ``-max_shift..max_shift``."""
    return jax.random.randint(key, (batch, 2), -max_shift, max_shift + 1)


def translate(
    x: jax.Array, shifts: jax.Array, max_shift: int = MAX_SHIFT, fill: float = PAD_VALUE
) -> jax.Array:
    """Move image ``b``'s content by ``shifts[b] = (dy, dx)`` pixels, filling with ``fill``.

    ``out[b, i, j] = x[b, i - dy, j - dx]`` where that pixel exists, else ``fill``; the shifts
    must lie in ``-max_shift..max_shift``. This is the pad-and-crop of ``RandomCrop(padding)``:
    pad by ``max_shift`` and take the window starting at ``max_shift - shift``.
    """
    _, h, w, c = x.shape
    m = max_shift
    padded = jnp.pad(x, ((0, 0), (m, m), (m, m), (0, 0)), constant_values=fill)

    def crop(img, shift):
        start = (m - shift[0], m - shift[1], 0)
        return jax.lax.dynamic_slice(img, start, (h, w, c))

    return jax.vmap(crop)(padded, shifts)


def random_translate(key: jax.Array, x: jax.Array, max_shift: int = MAX_SHIFT) -> jax.Array:
    """Translate each image by a random shift of up to ``max_shift`` px per axis."""
    return translate(x, sample_shifts(key, x.shape[0], max_shift), max_shift)


def _grey(u: jax.Array) -> jax.Array:
    """``[B, H, W, 1]`` luma of ``[B, H, W, C]`` intensities, C in {1, 3}."""
    c = u.shape[-1]
    if c == 1:
        return u
    if c != 3:
        raise ValueError(f"colour jitter needs 1- or 3-channel images, got {c} channels")
    return jnp.tensordot(u, jnp.asarray(_LUMA, u.dtype), axes=([-1], [0]))[..., None]


def colour_jitter(key: jax.Array, x: jax.Array, strength: float = JITTER) -> jax.Array:
    """Random brightness, contrast and saturation, each factor uniform in ``1 +- strength``.

    On intensities ``u = (x + 1) / 2`` in [0, 1], per image: brightness ``u * b``; contrast
    ``(u - mean grey) * c + mean grey``; saturation ``(u - grey) * s + grey`` (a no-op for one
    channel); each step clipped to [0, 1], as torchvision does.
    """
    b, c, s = jax.random.uniform(
        key, (3, x.shape[0], 1, 1, 1), minval=1 - strength, maxval=1 + strength
    )
    u = (x + 1.0) / 2.0
    u = jnp.clip(u * b, 0.0, 1.0)
    mean = jnp.mean(_grey(u), axis=(1, 2, 3), keepdims=True)
    u = jnp.clip((u - mean) * c + mean, 0.0, 1.0)
    grey = _grey(u)
    u = jnp.clip((u - grey) * s + grey, 0.0, 1.0)
    return u * 2.0 - 1.0


def augment_none(key: jax.Array, x: jax.Array) -> jax.Array:
    """The identity."""
    del key
    return x


def augment_weak(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random translation by up to 4 px (black padding), then a random horizontal flip."""
    k_shift, k_flip = jax.random.split(key)
    return random_flip(k_flip, random_translate(k_shift, x))


def augment_translate(key: jax.Array, x: jax.Array) -> jax.Array:
    """Random translation by up to 4 px (black padding), no flip: ``weak`` for digits."""
    return random_translate(key, x)


def augment_strong(key: jax.Array, x: jax.Array) -> jax.Array:
    """``weak``, then colour jitter (brightness, contrast, saturation, strength 0.4)."""
    k_weak, k_colour = jax.random.split(key)
    return colour_jitter(k_colour, augment_weak(k_weak, x))


AUGMENTATIONS: dict[str, Augmentation] = {
    "none": augment_none,
    "weak": augment_weak,
    "translate": augment_translate,
    "strong": augment_strong,
}


def get_augmentation(name: str) -> Augmentation:
    """The augmentation ``name`` from ``AUGMENTATIONS``; an unknown name lists the valid ones."""
    if name not in AUGMENTATIONS:
        raise ValueError(
            f"unknown augmentation {name!r}; valid augmentations are: {', '.join(AUGMENTATIONS)}"
        )
    return AUGMENTATIONS[name]
