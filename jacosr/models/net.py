"""The open-set network: backbone -> representation f -> class head (+ rotation head)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jacosr.config import require
from jacosr.models.heads import NORMALISED_HEADS, ClassHead, unit_normalise
from jacosr.models.lenet import LeNet
from jacosr.models.mlp import MLP
from jacosr.models.resnet import ResNet18
from jacosr.models.vgg32 import VGG32
from jacosr.models.wrn import WRN

BACKBONES: dict[str, Callable[..., nnx.Module]] = {
    "mlp": MLP,
    "lenet": LeNet,
    "vgg32": VGG32,
    "wrn16_4": WRN,
    "resnet18": ResNet18,
}
# The conv backbones' representation is their pooled last feature map, so its size is fixed.
FIXED_EMBED_DIM = {"vgg32": 128, "wrn16_4": 256, "resnet18": 512}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture.

    Attributes:
      backbone: backbone name (see ``jacosr.models.BACKBONES``).
      embed_dim: size of the representation f. The MLP and LeNet project to it; the conv
        backbones' f is their pooled last feature map, so it must be 128 (vgg32), 256 (wrn16_4)
        or 512 (resnet18).
      width: hidden width of the MLP and of LeNet's dense layer.

    Refused when built (``ValueError`` naming the flag): an unknown backbone, a width or
    embed_dim below 1, and a conv backbone's embed_dim other than its fixed size.
    """

    backbone: str = "mlp"
    embed_dim: int = 128
    width: int = 256

    def __post_init__(self):
        require(
            self.backbone in BACKBONES,
            "--backbone",
            f"one of {', '.join(sorted(BACKBONES))}",
            self.backbone,
        )
        require(self.width >= 1, "--width", ">= 1", self.width)
        require(self.embed_dim >= 1, "--embed-dim", ">= 1", self.embed_dim)
        fixed = FIXED_EMBED_DIM.get(self.backbone)
        require(
            fixed is None or self.embed_dim == fixed,
            "--embed-dim",
            f"{fixed} with --backbone {self.backbone} (its representation is its pooled last "
            "feature map)",
            self.embed_dim,
        )


class Outputs(NamedTuple):
    """What the network computes for a batch.

    ``embedding``: ``[B, D]`` the representation f (unit-normalised for normalised heads).
    ``class_scores``: ``[B, K]`` the class head's scores, of the head's kind (see
      :mod:`jacosr.models.heads`): linear logits, cosines in [-1, 1], negative or positive
      squared distances. Not logits in general: the loss turns them into logits
      (``jacosr.losses.LossSpec.softmax_logits``); their argmax is the predicted class.
    ``rotation_logits``: ``[B, 4]`` rotation-head logits (0, 90, 180, 270 degrees), or None
      without a rotation head.
    ``radius``: ``[B]`` the reciprocal head's learnable radius R repeated per sample (so every
      field is per-sample and batches concatenate), or None for the other heads.
    """

    embedding: jax.Array
    class_scores: jax.Array
    rotation_logits: jax.Array | None = None
    radius: jax.Array | None = None


class OpenSetNet(nnx.Module):
    """Backbone, optional unit normalisation (the paper's "N"), class head, rotation head.

    The rotation head (``rotation_head=True``, for the self-supervised rotation task) is a
    linear map ``f -> [4]`` on the same representation f the class head sees.
    """

    def __init__(
        self,
        config: ModelConfig,
        *,
        image_shape: tuple[int, ...],
        num_classes: int,
        head: str,
        rotation_head: bool = False,
        rngs: nnx.Rngs,
    ):
        kwargs = {"width": config.width} if config.backbone in ("mlp", "lenet") else {}
        self.backbone = BACKBONES[config.backbone](
            tuple(image_shape), config.embed_dim, rngs=rngs, **kwargs
        )
        dim = self.backbone.out_dim
        self.normalise = head in NORMALISED_HEADS
        self.head = ClassHead(dim, num_classes, head, rngs=rngs)
        self.rotation = nnx.Linear(dim, 4, rngs=rngs) if rotation_head else None

    def __call__(
        self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None
    ) -> Outputs:
        """``x: [B, H, W, C]`` float32 in [-1, 1]; ``key`` drives dropout when ``train``."""
        f = self.backbone(x, train=train, key=key)
        if self.normalise:
            f = unit_normalise(f)
        rot = self.rotation(f) if self.rotation is not None else None
        radius = self.head.radius
        radius = None if radius is None else jnp.broadcast_to(radius[...], f.shape[:1])
        return Outputs(f, self.head(f), rot, radius)


class ModelState(NamedTuple):
    """The arrays of an :class:`OpenSetNet`: ``params`` (trained) and ``batch_stats`` (BN)."""

    params: nnx.State
    batch_stats: nnx.State


def split_model(model: OpenSetNet) -> tuple[nnx.GraphDef, ModelState]:
    """Split a model into its static graph and its arrays (a pytree for jit, optax, Orbax)."""
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, ModelState(params, batch_stats)


def apply_model(
    graphdef: nnx.GraphDef,
    state: ModelState,
    x: jax.Array,
    *,
    train: bool = False,
    key: jax.Array | None = None,
) -> tuple[Outputs, nnx.State]:
    """Pure forward pass: ``(graphdef, state, x) -> (Outputs, new batch_stats)``.

    In train mode BatchNorm uses batch statistics and updates its running averages (returned);
    in eval mode it uses the running averages and the returned batch_stats equal the input.
    """
    model = nnx.merge(graphdef, state.params, state.batch_stats, copy=True)
    out = model(x, train=train, key=key)
    return out, nnx.state(model, nnx.BatchStat)


@dataclass(frozen=True)
class _EmbeddingApply:
    """``f(state, x) -> z`` of one architecture; equal (and of equal hash) for equal graphdefs,
    so that jit's caches, keyed on static arguments, serve every model of the architecture."""

    graphdef: nnx.GraphDef

    def __call__(self, state: ModelState, x: jax.Array) -> jax.Array:
        return apply_model(self.graphdef, state, x[None], train=False)[0].embedding[0]


def embedding_apply(graphdef: nnx.GraphDef) -> Callable[[ModelState, jax.Array], jax.Array]:
    """The representation as a pure function of the model's arrays and ONE unbatched input.

    ``f(state: ModelState, x: [H, W, C]) -> [D]``, in eval mode (BatchNorm running statistics,
    no dropout): what the Jacobian engine differentiates with respect to ``x``, with the state
    as a traced argument, ``jacobian.jacobian_norms(embedding_apply(graphdef), xs,
    params=state)``. Two calls with equal graphdefs (the same architecture) give equal
    functions, so the engine's compiled programs serve every state of the architecture
    without tracing or compiling again (checkpoints, before and after training).
    """
    return _EmbeddingApply(graphdef)


def embedding_fn(graphdef: nnx.GraphDef, state: ModelState) -> Callable[[jax.Array], jax.Array]:
    """The representation of one model state as a pure function of ONE unbatched input.

    ``f(x: [H, W, C]) -> [D]`` = ``embedding_apply(graphdef)(state, x)``, eval mode. Handy for
    a single state; the Jacobian engine compiles it with the state's arrays as constants, so
    for several states pass ``embedding_apply(graphdef)`` and ``params=state`` instead.
    """
    return partial(embedding_apply(graphdef), state)
