"""Training: one jitted multi-step dispatch over split NNX state, a resumable loop, the CLI.

    python -m jacosr.train --dataset digits --loss movr --steps 2000 --workdir runs/digits-movr
    python -m jacosr.train --loss rpl --self-sup 0.1 --augment strong --workdir runs/rpl-s-a

Runtime on 2 CPU cores: ~15 s for the first command (MLP on digits, compilation and evaluation
included); the rotation task roughly doubles the cost of a step. The workdir receives
``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``results.json`` (the evaluation table,
also printed); re-running the same command resumes from the last checkpoint. A finished run is
never trained again: re-run with the scores results.json holds, it is read back; with others
(``--scores jacobian ...``), only those are evaluated and their rows added to results.json,
which never loses a row (:func:`run`; the evaluation settings are not part of the run's
config). :func:`load_run` opens any kept checkpoint, with or without the data set.

    python -m jacosr.train --steps 2000 --track-points 20 --workdir runs/digits-movr-tracked

also measures the model at step 0 and 19 steps spaced geometrically up to 2,000 (DBI,
inter-class distance, Jacobian norms and their difference, AUROCs; :mod:`jacosr.dynamics`)
and writes one line per step to ``dynamics.jsonl``, kept across kills as ``metrics.jsonl``
is. On digits the 20 points add 60-150% to the 6 s of training (4-8 s on the shared 2 cores:
20 exact Jacobian norms of the 539 test images, and two more compilations; see
``benchmarks/dynamics.py``).

The training objective for a batch of B known images ``x`` with labels ``y`` (all keys folded
from the per-step key):

    x <- augment(x)                                    (--augment: none, weak, strong)
    L = mean_b loss(f(x_b), y_b) + self_sup * mean_b CE(rot(f(rot_{r_b}(x_b))), r_b)

with ``r_b`` uniform in {0, 90, 180, 270} degrees. The rotated copies go only through the
rotation head: the class loss sees upright images only, so the rotation task shares the
representation without adding rotated images to any class or moving the class prototypes
(the paper's caution that the self-supervised task must not collapse the class prototypes).
The upright and rotated images pass through the network as one batch of 2B (one set of
BatchNorm statistics). Weight decay is coupled L2 on every parameter (--weight-decay 0: off).

What survives what (see :mod:`jacosr.workdir` and :mod:`jacosr.checkpoint`): a bad config value
is refused before anything is written; the workdir is locked for the whole run (a second
process on it is refused); a run killed at any moment resumes, from its newest intact
checkpoint, to bit-identical parameters and a ``metrics.jsonl`` without duplicated or missing
lines (a partial last line is dropped); a damaged checkpoint is skipped with a warning, never
restored; a failed checkpoint write (disk full) raises one error naming its cause and the
intact checkpoint to resume from. ``JACOSR_FAULT`` (:mod:`jacosr.checkpoint`) kills the process
at chosen points, for the tests of all this.

A run's identity is its resolved config and the data it trains on (:func:`run_identity`):
``config.json`` and every checkpoint hold the config (a ``--benchmark`` resolved into its data
set, classes and image size) and, under ``trained_on``, the known source and classes, the image
shape and the SHA-256 of the known-train arrays. Other data in an existing workdir (``fit``
with other arrays, a data set prepared again from other files) is refused, naming what differs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jacosr.checkpoint import CHECKPOINTS, CheckpointStore, DamagedCheckpointError, fault_point
from jacosr.config import cli, from_dict, require, to_dict
from jacosr.data import DataConfig, OpenSetData, get_augmentation, load_open_set, to_float
from jacosr.data.augment import paper_augmentation
from jacosr.data.splits import resolve_benchmark
from jacosr.distributed import (
    DistributedConfig,
    barrier,
    batch_sharded,
    check_batch,
    data_mesh,
    initialize,
    is_writer,
    put_replicated,
    replicated,
    to_local,
)
from jacosr.dynamics import (
    DYNAMICS_FILE,
    TrackConfig,
    Tracker,
    track_samples,
    tracked_steps,
)
from jacosr.evaluate import EvalConfig, evaluate, format_table
from jacosr.losses import LossConfig, loss_rotation, loss_spec, per_sample_loss
from jacosr.models import ModelConfig, ModelState, OpenSetNet, apply_model, split_model
from jacosr.workdir import Workdir, WorkdirError, config_diff, open_workdir

# Sources on which the techniques default to off (``augment="auto"``, ``self_sup=None``):
# on 8x8 digits a 4 px shift moves half the image; toy2d's "images" are 1x1 points, which
# neither shift nor rotate. Elsewhere "auto" is the paper's weak augmentation for the source
# (jacosr.data.augment.paper_augmentation: no flip on MNIST).
TECHNIQUES_OFF_BY_DEFAULT = frozenset({"digits", "toy2d"})
# The paper's lambda_self, the weight of the rotation loss when the technique is on.
PAPER_SELF_SUP = 0.1


@dataclass(frozen=True)
class TrainConfig:
    """A training run (paper defaults: SGD momentum 0.9, cosine LR 0.1 -> 1e-5, weight decay
    1e-3, batch 128, 20k steps; weak augmentation and the rotation task with lambda_self 0.1 on
    image data sets).

    Attributes:
      steps: number of optimisation steps.
      batch_size: images per step, drawn without replacement within an epoch.
      lr: initial learning rate of the cosine schedule.
      lr_min: final learning rate of the cosine schedule.
      momentum: SGD momentum.
      weight_decay: L2 weight decay added to the gradient (PyTorch-style coupled decay); 0
        turns it off (the ablation's "W").
      augment: on-device augmentation of the training batches (``jacosr.data.AUGMENTATIONS``:
        none, weak, translate, strong), or ``auto``: the paper's ``weak`` (4 px translation and
        horizontal flip) on image data sets, ``translate`` (no flip) on MNIST, ``none`` on
        digits and toy2d (not flip-invariant, and too small for a 4 px shift). The ablation's
        "A".
      self_sup: lambda_self, the weight of the self-supervised rotation loss; 0 turns the
        rotation task off. None (auto): the paper's 0.1 on image data sets, 0 on digits and
        toy2d. The ablation's "S".
      seed: seed of initialisation, batch order and dropout.
      log_every: steps per metrics.jsonl line (each line holds the means over its steps; the
        last line may cover fewer).
      dispatch_steps: at most this many steps run in one device dispatch (one compiled loop);
        a dispatch also ends at each checkpoint and at the last step. Larger amortises the
        host's work per dispatch; it changes no line of the log.
      checkpoint_every: steps between checkpoints (a multiple of log_every, so that a resumed
        run starts on a log line).
      keep_checkpoints: how many recent checkpoints to keep (at least 1: the run resumes and
        is evaluated from its last checkpoint).
      track: measurements of the model during training, one line of dynamics.jsonl per
        tracked step (off by default; see :mod:`jacosr.dynamics`). Part of the run's
        identity: the rows a resumed run must reproduce depend on it.

    Refused when built (``ValueError`` naming the flag, before any workdir exists): fewer than
    1 step, image per batch, step per log line or dispatch, or checkpoint kept;
    checkpoint_every not a positive multiple of log_every; lr not a positive finite number;
    lr_min outside [0, lr]; momentum outside [0, 1); a negative or infinite weight_decay or
    self_sup; an unknown augmentation; a tracked step beyond steps, or more tracking points
    than steps + 1.

    ``augment="auto"`` and ``self_sup=None`` are decided per data set by :func:`resolve`,
    once, at the entry points (:func:`fit`, :func:`run`); what trains is the
    :class:`ResolvedTrainConfig` it returns.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    steps: int = 20_000
    batch_size: int = 128
    lr: float = 0.1
    lr_min: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = 1e-3
    augment: str = "auto"
    self_sup: float | None = None
    seed: int = 0
    log_every: int = 100
    dispatch_steps: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    track: TrackConfig = field(default_factory=TrackConfig)

    def __post_init__(self):
        for flag, value in (
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--log-every", self.log_every),
            ("--dispatch-steps", self.dispatch_steps),
            ("--keep-checkpoints", self.keep_checkpoints),
        ):
            require(value >= 1, flag, ">= 1", value)
        require(
            self.checkpoint_every >= 1 and self.checkpoint_every % self.log_every == 0,
            "--checkpoint-every",
            f"a positive multiple of --log-every ({self.log_every})",
            self.checkpoint_every,
        )
        require(
            0 < self.lr < math.inf, "--lr", "> 0 and finite (the initial learning rate)", self.lr
        )
        require(
            0 <= self.lr_min <= self.lr,
            "--lr-min",
            f"between 0 and --lr ({self.lr}) (the final learning rate)",
            self.lr_min,
        )
        require(0 <= self.momentum < 1, "--momentum", "in [0, 1)", self.momentum)
        require(
            0 <= self.weight_decay < math.inf,
            "--weight-decay",
            ">= 0 and finite (0: off)",
            self.weight_decay,
        )
        require(
            self.self_sup is None or 0 <= self.self_sup < math.inf,
            "--self-sup",
            ">= 0 and finite (0 turns the rotation task off)",
            self.self_sup,
        )
        if self.augment != "auto":
            get_augmentation(self.augment)
        require(
            all(s <= self.steps for s in self.track.track_steps),
            "--track-steps",
            f"steps between 0 and --steps ({self.steps})",
            self.track.track_steps,
        )
        require(
            self.track.track_points <= self.steps + 1,
            "--track-points",
            f"at most --steps + 1 ({self.steps + 1}) distinct steps",
            self.track.track_points,
        )


@dataclass(frozen=True)
class ResolvedTrainConfig(TrainConfig):
    """A :class:`TrainConfig` whose techniques are decided: ``augment`` names an augmentation
    (never ``auto``) and ``self_sup`` is a number (never None); a ``data.benchmark`` is
    resolved into its data set, classes and image size.

    Made by :func:`resolve` (or read back from a workdir's ``config.json``, which holds it);
    the functions that build a run from its config (:func:`build_model`,
    :func:`make_objective`, :func:`make_train_dispatch`) take only this type, so no code path
    can train with the techniques undecided or decide them twice.
    """

    augment: str = field(kw_only=True)
    self_sup: float = field(kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if self.augment == "auto" or self.self_sup is None:
            raise ValueError(
                f"a ResolvedTrainConfig has a concrete augment and self_sup, got "
                f"augment={self.augment!r}, self_sup={self.self_sup!r}; make it with "
                "jacosr.train.resolve(config), which decides them for the data set"
            )


def resolve(config: TrainConfig) -> ResolvedTrainConfig:
    """``config`` with the techniques decided for its data set: ``augment="auto"`` becomes
    the paper's weak augmentation for the images (``weak``; ``translate``, without the flip,
    on the MNIST benchmark; ``none`` on digits and toy2d), ``self_sup=None`` becomes the
    paper's 0.1 (0 on digits and toy2d); values set by hand stay. A ``benchmark`` is
    resolved into the data set, classes and image size it sets
    (:func:`jacosr.data.splits.resolve_benchmark`), so that config.json records them. A
    resolved config is returned as it is."""
    if isinstance(config, ResolvedTrainConfig):
        return config
    data = resolve_benchmark(config.data)
    source = data.dataset
    off = source in TECHNIQUES_OFF_BY_DEFAULT
    paper = "none" if off else paper_augmentation(source)
    augment = paper if config.augment == "auto" else config.augment
    self_sup = (0.0 if off else PAPER_SELF_SUP) if config.self_sup is None else config.self_sup
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    decided = {"data": data, "augment": augment, "self_sup": float(self_sup)}
    return ResolvedTrainConfig(**{**given, **decided})


def _require_resolved(config: TrainConfig, user: str) -> ResolvedTrainConfig:
    if not isinstance(config, ResolvedTrainConfig):
        raise TypeError(
            f"{user} takes a ResolvedTrainConfig, got a {type(config).__name__} whose "
            f"techniques may be undecided (augment={config.augment!r}, "
            f"self_sup={config.self_sup!r}); resolve it first: jacosr.train.resolve(config)"
        )
    return config


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree (donated to each dispatch)."""

    step: jax.Array
    model: ModelState
    opt_state: optax.OptState


def lr_schedule(config: TrainConfig) -> optax.Schedule:
    """The cosine learning-rate schedule, ``lr`` at step 0 down to ``lr_min`` at ``steps``."""
    return optax.cosine_decay_schedule(config.lr, config.steps, alpha=config.lr_min / config.lr)


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """SGD with momentum, coupled weight decay and the cosine learning-rate schedule."""
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(lr_schedule(config), momentum=config.momentum),
    )


class ModelInputs(NamedTuple):
    """What building a run's network takes from its data besides the config (an
    :class:`~jacosr.data.OpenSetData` has both fields): the image shape ``(H, W, C)`` and the
    number of known classes (the class head's outputs). Every checkpoint stores them (its
    ``model`` item, :func:`model_item`), so a run restores without its data set."""

    image_shape: tuple[int, ...]
    num_known: int


def model_item(config: ResolvedTrainConfig, data: OpenSetData | ModelInputs) -> dict:
    """The ``model`` item of the run's checkpoints (JSON; :mod:`jacosr.checkpoint`): the
    :class:`ModelInputs` and, for readers without jacosr, the backbone, the representation's
    size, the class head's kind and whether there is a rotation head."""
    return {
        "image_shape": [int(n) for n in data.image_shape],
        "num_known": int(data.num_known),
        "backbone": config.model.backbone,
        "embed_dim": config.model.embed_dim,
        "head": loss_spec(config.loss.loss).head,
        "rotation_head": config.self_sup > 0,
    }


def build_model(
    config: ResolvedTrainConfig, data: OpenSetData | ModelInputs, key: jax.Array
) -> OpenSetNet:
    """The network ``config`` describes, with the head its loss needs and, when the rotation
    task is on, a rotation head; ``data`` gives the image shape and the number of classes."""
    _require_resolved(config, "build_model")
    return OpenSetNet(
        config.model,
        image_shape=data.image_shape,
        num_classes=data.num_known,
        head=loss_spec(config.loss.loss).head,
        rotation_head=config.self_sup > 0,
        rngs=nnx.Rngs(key),
    )


def init_train_state(
    config: TrainConfig, data: OpenSetData | ModelInputs
) -> tuple[nnx.GraphDef, TrainState]:
    """Initialise the model and optimiser of the run ``config`` from ``config.seed``.

    Like :func:`fit` and :func:`run`, an entry point: it takes the config as the user gave it
    (the experiments' untrained "before" model) and resolves it (:func:`resolve`)."""
    config = resolve(config)
    model = build_model(config, data, jax.random.fold_in(jax.random.key(config.seed), 0))
    graphdef, model_state = split_model(model)
    opt_state = make_optimizer(config).init(model_state.params)
    return graphdef, TrainState(jnp.zeros((), jnp.int32), model_state, opt_state)


def batch_indices(key: jax.Array, step: jax.Array, n: int, batch_size: int) -> jax.Array:
    """Indices of the batch at ``step``: epoch-wise permutations, keyed by the epoch number.

    A pure function of (key, step), so a resumed run sees exactly the batches it would have
    seen; the last ``n % batch_size`` images of each epoch's permutation are dropped.
    """
    per_epoch = n // batch_size
    epoch, position = jnp.divmod(step, per_epoch)
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), n)
    return jax.lax.dynamic_slice_in_dim(perm, position * batch_size, batch_size)


def rotated_copies(key: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Each image turned by a random multiple of 90 degrees, and that multiple.

    ``x: [B, H, W, C]`` with ``H == W`` -> (``[B, H, W, C]``, ``[B]`` int in 0..3, the number
    of counter-clockwise quarter turns).
    """
    turns = jax.random.randint(key, x.shape[:1], 0, 4)
    every = jnp.stack([jnp.rot90(x, k, axes=(1, 2)) for k in range(4)])
    return every[turns, jnp.arange(x.shape[0])], turns


def make_objective(graphdef: nnx.GraphDef, config: ResolvedTrainConfig):
    """The training objective ``(params, batch_stats, x, y, key) -> (loss, (stats, acc))``.

    ``x: [B, H, W, C]`` float32 in [-1, 1] (augmented upright images), ``y: [B]``; see the
    module docstring for the rotation term. ``acc`` is the batch's closed-set accuracy.
    """
    _require_resolved(config, "make_objective")

    def objective(params, batch_stats, x, y, key):
        rot_key, model_key = jax.random.split(key)
        batch = x.shape[0]
        if config.self_sup > 0:
            x_rot, turns = rotated_copies(rot_key, x)
            x = jnp.concatenate([x, x_rot])
        out, new_stats = apply_model(
            graphdef, ModelState(params, batch_stats), x, train=True, key=model_key
        )
        upright = jax.tree.map(lambda a: a[:batch], out)
        loss = jnp.mean(per_sample_loss(config.loss, upright, y))
        if config.self_sup > 0:
            rotation = loss_rotation(out.rotation_logits[batch:], turns)
            loss = loss + config.self_sup * jnp.mean(rotation)
        accuracy = jnp.mean(jnp.argmax(upright.class_scores, -1) == y)
        return loss, (new_stats, accuracy)

    return objective


def make_train_dispatch(graphdef: nnx.GraphDef, config: ResolvedTrainConfig, num_train: int):
    """The function that runs up to ``config.dispatch_steps`` training steps in one dispatch.

    ``dispatch(state, train_x, train_y, n) -> (state, (loss [n], accuracy [n], finite [n]))``
    for ``1 <= n <= dispatch_steps``, where ``finite`` says the step's loss and updated
    parameters are all finite; the three come back as NumPy arrays (reading them waits for the
    dispatch), ``state`` stays on the device and is donated. The training arrays stay resident
    on the device; batches are gathered, converted to float, augmented and fed to the objective
    inside jit; the per-step key is ``fold_in(key, step)``, split into the augmentation's key
    and the objective's.

    One loop whose trip count is an argument, writing into ``[dispatch_steps]`` buffers, serves
    every ``n`` on the CPU: one compiled program per run, however the boundaries (checkpoints,
    tracking points, the end) cut the steps. On accelerators ``n == dispatch_steps`` runs a
    ``lax.scan`` of that static length instead (XLA's GPU while loops with a trip count that is
    not a compile-time constant read their condition back to the host after every step), and
    only shorter ``n`` take the loop.

    The seed's keys are arguments of the compiled programs, not constants baked into them, and
    the programs of the last few (architecture, config but seed, training set size) are kept
    (:func:`_step_programs`), so the runs of a grid that differ only in ``seed`` compile once.

    On several devices (:func:`jacosr.distributed.data_mesh`; all processes' with
    ``jax.distributed``) the same programs run data parallel: ``state``, ``train_x`` and
    ``train_y`` must be replicated on the mesh (:func:`jacosr.distributed.put_replicated`),
    each step's global batch is split over the devices, and the values come back replicated
    (every process reads them). On one device the programs are exactly the single-device ones.
    """
    _require_resolved(config, "make_train_dispatch")
    length = config.dispatch_steps
    mesh = data_mesh()
    full, shorter = _step_programs(graphdef, dataclasses.replace(config, seed=0), num_train, mesh)
    keys = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))  # data, step
    if mesh is not None:
        keys = put_replicated(keys, mesh)
    scan_full_length = jax.default_backend() != "cpu"

    def dispatch(state: TrainState, train_x, train_y, n: int):
        if not 1 <= n <= length:
            raise ValueError(f"a dispatch runs 1 to dispatch_steps ({length}) steps, not {n}")
        if n == length and scan_full_length:
            state, values = full(state, keys, train_x, train_y)
        else:
            state, values = shorter(state, keys, train_x, train_y, np.int32(n))
        return state, tuple(np.asarray(v)[:n] for v in values)

    return dispatch


@functools.lru_cache(maxsize=8)
def _step_programs(
    graphdef: nnx.GraphDef, config: ResolvedTrainConfig, num_train: int, mesh: Mesh | None
):
    """The two jitted programs of :func:`make_train_dispatch` for ``config`` (whose seed does
    not enter them: the keys are arguments): a ``lax.scan`` of ``dispatch_steps`` steps and a
    loop of ``n`` steps. Cached (a few entries, each holding compiled programs of one
    architecture) so that the seeds of a grid, in one process, share them.

    ``mesh``: None on one device (plain ``jax.jit``); else the programs take and return
    everything replicated on the mesh, and each step's batch indices ``[B]`` are constrained to
    be sharded along its axis, so each device gathers, augments and differentiates its ``B /
    devices`` images; GSPMD all-reduces the gradients and the batch statistics (BatchNorm's
    means are over the global batch), and the random draws of a step do not depend on the
    sharding (jax's threefry is partitionable), so the step is the single-device step up to the
    order of float additions."""
    length = config.dispatch_steps
    optimizer = make_optimizer(config)
    augment = get_augmentation(config.augment)
    objective = make_objective(graphdef, config)

    def one_step(state: TrainState, keys: jax.Array, train_x, train_y):
        data_key, step_key = keys
        idx = batch_indices(data_key, state.step, num_train, config.batch_size)
        if mesh is not None:
            idx = jax.lax.with_sharding_constraint(idx, batch_sharded(mesh))
        augment_key, key = jax.random.split(jax.random.fold_in(step_key, state.step))
        x, y = augment(augment_key, to_float(train_x[idx])), train_y[idx]
        params, batch_stats = state.model
        (loss, (new_stats, accuracy)), grads = jax.value_and_grad(objective, has_aux=True)(
            params, batch_stats, x, y, key
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, params)
        params = optax.apply_updates(params, updates)
        new_state = TrainState(state.step + 1, ModelState(params, new_stats), opt_state)
        finite = jnp.isfinite(loss) & jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(params)])
        )
        return new_state, (loss, accuracy, finite)

    place = (
        {} if mesh is None else dict(in_shardings=replicated(mesh), out_shardings=replicated(mesh))
    )

    @partial(jax.jit, donate_argnums=0, **place)
    def full(state: TrainState, keys, train_x, train_y):
        step = lambda s, _: one_step(s, keys, train_x, train_y)
        return jax.lax.scan(step, state, length=length)

    @partial(jax.jit, donate_argnums=0, **place)
    def shorter(state: TrainState, keys, train_x, train_y, n: jax.Array):
        def body(i, carry):
            state, buffers = carry
            state, values = one_step(state, keys, train_x, train_y)
            return state, tuple(buf.at[i].set(v) for buf, v in zip(buffers, values, strict=True))

        buffers = (jnp.zeros(length), jnp.zeros(length), jnp.zeros(length, bool))
        return jax.lax.fori_loop(0, n, body, (state, buffers))

    return full, shorter


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left intact."""


@dataclass(frozen=True)
class Every:
    """The steps ``every, 2 every, 3 every, ...`` below ``last``, and ``last``.

    The training loop's boundaries are such schedules: the metrics.jsonl lines (every
    ``log_every`` steps), the checkpoints (every ``checkpoint_every``) and the end; the
    tracked steps are an :class:`At` (see :func:`_train`)."""

    every: int
    last: int

    def after(self, step: int) -> int:
        """The first of these steps after ``step`` (``last`` when none is before it)."""
        return min((step // self.every + 1) * self.every, self.last)


@dataclass(frozen=True)
class At:
    """The given ``steps`` (sorted, the last of them the run's last step): a boundary
    schedule like :class:`Every`, for the tracked steps (:func:`jacosr.dynamics.
    tracked_steps`)."""

    steps: tuple[int, ...]

    def after(self, step: int) -> int:
        """The first of these steps after ``step`` (the last one when none is after it)."""
        return next((s for s in self.steps if s > step), self.steps[-1])


TRAIN_OUTPUTS = (CHECKPOINTS, "metrics.jsonl", DYNAMICS_FILE, "results.json")
"""What a training run writes in its workdir besides ``config.json`` (all that ``--overwrite``
may delete there; in ``checkpoints/``, only the checkpoints)."""


def _truncate_log(path: Path, step: int) -> None:
    """Drop the log lines after ``step`` (written by a run that died before its next
    checkpoint) and a partial last line (a kill while writing it). Lines are appended in step
    order, so what goes is a tail; an unchanged log is not rewritten (read-only workdirs)."""
    if not path.exists():
        return
    text = path.read_bytes()
    keep = 0
    for line in text.splitlines(keepends=True):
        try:
            if not line.endswith(b"\n") or json.loads(line)["step"] > step:
                break
        except (ValueError, KeyError, TypeError):
            break
        keep += len(line)
    if keep < len(text):
        with path.open("r+b") as log:
            log.truncate(keep)


def _check_config(config: ResolvedTrainConfig, data: OpenSetData) -> None:
    height, width = data.image_shape[:2]
    if config.self_sup > 0 and height != width:
        raise ValueError(
            f"the rotation task needs square images, got {height}x{width}; "
            "pass --self-sup 0 or --image-size"
        )
    check_batch(config.batch_size)
    n = len(data.known_train.y)
    if n < config.batch_size:
        raise ValueError(
            f"known_train has {n} images, fewer than batch_size {config.batch_size}; "
            "lower --batch-size or use more known classes"
        )


def _resume(wd: Workdir, template: TrainState, overwrite: bool) -> tuple[TrainState, list[int]]:
    """The state to start from: the newest intact checkpoint, or ``template`` (a fresh run);
    and the newer damaged checkpoints (to delete before their steps are saved again).

    A checkpoint of another config (``config.json`` deleted by hand) or none intact is
    refused, unless ``overwrite``: then the old run is deleted and this one starts afresh.
    """
    with CheckpointStore(wd.path, read_only=True) as store:
        try:
            state, damaged = store.restore(template, wd.config)
        except (WorkdirError, DamagedCheckpointError):
            if not overwrite:
                wd.discard_config()
                raise
        else:
            return (template, []) if state is None else (state, damaged)
    barrier("jacosr-resume-overwrite")  # every process has read the old run before it goes
    wd.clear()
    return template, []


class _MetricsLog:
    """Appends to ``metrics.jsonl`` while training: one line per ``log_every`` steps and at the
    last step, ``{"step", "loss", "accuracy", "lr", "seconds"}`` where ``loss`` and
    ``accuracy`` are the means over the steps since the previous line, ``lr`` the rate of the
    line's last step and ``seconds`` the time since training (re)started.

    Lines do not depend on how the steps were dispatched: each dispatch hands over its
    per-step values (:meth:`add`), which may complete several lines or none. Checkpoints fall
    on lines (``checkpoint_every`` is a multiple of ``log_every``), so a resumed run starts
    between two lines, with nothing pending, and writes the same lines again."""

    def __init__(self, file: IO[str], config: ResolvedTrainConfig):
        self.file = file
        self.lines = Every(config.log_every, config.steps)
        self.lr = lr_schedule(config)
        self.pending: list[tuple[np.ndarray, np.ndarray]] = []
        self.t0 = time.perf_counter()

    def add(self, step: int, loss: np.ndarray, accuracy: np.ndarray) -> None:
        """The losses and accuracies ``[n]`` of steps ``step + 1 .. step + n``; writes the
        lines they complete (each flushed, then the ``after-step`` fault point)."""
        done = 0
        while done < len(loss):
            line = self.lines.after(step + done)
            end = min(line - step, len(loss))
            self.pending.append((loss[done:end], accuracy[done:end]))
            done = end
            if step + done == line:
                self._write(line)

    def _write(self, step: int) -> None:
        loss, accuracy = (np.concatenate(values) for values in zip(*self.pending, strict=True))
        self.pending.clear()
        record = {
            "step": step,
            "loss": float(loss.mean()),
            "accuracy": float(accuracy.mean()),
            "lr": float(self.lr(step - 1)),
            "seconds": round(time.perf_counter() - self.t0, 3),
        }
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        fault_point("after-step", step)


def _train(
    config: ResolvedTrainConfig,
    data: OpenSetData,
    wd: Workdir,
    *,
    overwrite: bool,
    progress: bool,
) -> tuple[nnx.GraphDef, ModelState]:
    """:func:`fit` in the open workdir ``wd``.

    The loop dispatches ``dispatch_steps`` steps at a time, ending a dispatch early at each
    *stop*: a step at which the state itself is needed on the host, here the tracked steps
    (when ``config.track`` is on), the checkpoints and the last step. Stops are ``(schedule,
    action)`` pairs: a schedule's ``after(step)`` is its next step (see :class:`Every`), and
    ``action(step, state)`` runs there, in the list's order. Every stop falls at the same
    steps in a run and in the same run resumed from any checkpoint (checkpoints are stops),
    so both dispatch the same steps together and reach bit-identical states.

    On several devices the state and the training set are replicated on the mesh and the
    dispatch runs data parallel (:func:`make_train_dispatch`); the model comes back on this
    thread's default device. With several processes every process runs this loop (the
    dispatches, checkpoints and tracked measurements are collectives), and only the writer
    (``wd.writer``, process 0) writes ``metrics.jsonl``, ``dynamics.jsonl`` and the bar.

    ``dynamics.jsonl`` is kept as ``metrics.jsonl`` is: a tracked step's row is written (and
    flushed) before a checkpoint of the same step is saved, so every row up to a committed
    checkpoint is on disk; a resumed run drops the rows after its checkpoint's step (and a
    partial last line) and measures the later steps again, a fresh run measures step 0.
    """
    graphdef, fresh = init_train_state(config, data)
    mesh = data_mesh()
    place = jax.device_put if mesh is None else partial(put_replicated, mesh=mesh)
    fresh = fresh if mesh is None else place(fresh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
    state, damaged = _resume(wd, fresh, overwrite)
    step = int(state.step)
    log_path, dynamics_path = wd.path / "metrics.jsonl", wd.path / DYNAMICS_FILE
    tracked = tracked_steps(config.track, config.steps)
    if wd.writer:
        _truncate_log(log_path, step)
        if tracked:
            _truncate_log(dynamics_path, step if step > 0 else -1)  # a fresh run: every row
    if step >= config.steps:  # finished: the checkpoints were only read
        return graphdef, to_local(state.model)
    dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
    train = place(data.known_train.x), place(data.known_train.y)
    # Every process computes the logged values and tracked rows (they take collectives);
    # only the writer's reach the files.
    log_target = log_path if wd.writer else Path(os.devnull)
    dynamics_target = dynamics_path if wd.writer else Path(os.devnull)
    bar = tqdm(
        total=config.steps,
        initial=step,
        disable=not (progress and wd.writer),
        desc="train",
        unit="step",
    )
    with (
        CheckpointStore(wd.path, keep=config.keep_checkpoints) as store,
        log_target.open("a") as log_file,
        dynamics_target.open("a") if tracked else contextlib.nullcontext() as dynamics_file,
        bar,
    ):
        store.delete(damaged)
        log = _MetricsLog(log_file, config)

        def checkpoint(at: int, state: TrainState) -> None:
            store.save(at, state, wd.config, model=model_item(config, data))

        stops = [(Every(config.checkpoint_every, config.steps), checkpoint)]
        if tracked:
            samples = track_samples(data, config.track.track_samples, config.track.track_seed)
            tracker = Tracker(graphdef, samples, config.loss, config.track, dynamics_file)
            stops.insert(
                0, (At(tracked), lambda at, state: tracker.write(at, to_local(state.model)))
            )
            if step == 0:
                tracker.write(0, to_local(state.model))
        while step < config.steps:
            stop = min(schedule.after(step) for schedule, _ in stops)
            n = min(stop - step, config.dispatch_steps)
            state, (loss, accuracy, finite) = dispatch(state, *train, n)
            if not finite.all():
                bad = int(np.flatnonzero(~finite)[0])
                raise NonFiniteLossError(
                    f"training diverged at step {step + bad}: the loss ({loss[bad]}) or the "
                    f"updated parameters are not finite; {store.describe_intact(abstract)}. "
                    "Lower --lr or check the data"
                )
            log.add(step, loss, accuracy)
            step += n
            bar.update(n)
            bar.set_postfix(loss=f"{loss.mean():.4f}", acc=f"{accuracy.mean():.3f}")
            for schedule, action in stops:
                if schedule.after(step - 1) == step:
                    action(step, state)
    return graphdef, to_local(state.model)


def fit(
    config: TrainConfig,
    data: OpenSetData,
    workdir: Path,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> tuple[nnx.GraphDef, ModelState]:
    """Train (or resume) the run ``config`` describes in ``workdir``; return the final model.

    Steps run up to ``dispatch_steps`` at a time in one device dispatch; every ``log_every``
    steps one line goes to ``metrics.jsonl``; every ``checkpoint_every`` steps and at the end
    the state is checkpointed. A non-finite loss or parameter raises
    :class:`NonFiniteLossError` naming the step, without saving the diverged state. ``config``
    is resolved here (:func:`resolve`), once: ``config.json`` and the checkpoints hold the
    :class:`ResolvedTrainConfig`.

    The workdir is opened with :func:`jacosr.workdir.open_workdir` (its lock held throughout;
    a different config is refused unless ``overwrite``); training resumes from the newest
    intact checkpoint (:meth:`jacosr.checkpoint.CheckpointStore.restore`); a finished run
    only reads its last checkpoint (a read-only workdir works).
    """
    config = resolve(config)
    _check_config(config, data)
    identity = run_identity(config, data)
    with open_workdir(workdir, identity, outputs=TRAIN_OUTPUTS, overwrite=overwrite) as wd:
        return _train(config, data, wd, overwrite=overwrite, progress=progress)


TRAINED_ON = "trained_on"
"""The key of a run's identity (``config.json``, each checkpoint) that records its data."""


def run_identity(config: ResolvedTrainConfig, data: OpenSetData) -> dict:
    """A run's identity, as ``config.json`` and each checkpoint hold it: the resolved config's
    dict and, under :data:`TRAINED_ON`, what the model depends on in ``data``
    (:meth:`jacosr.data.OpenSetData.training_identity`: source, known classes, image shape
    and dtype, size and SHA-256 of known-train). The data are what was trained on, whatever
    ``config.data`` says: :func:`fit` takes data built from arrays too."""
    return {**to_dict(config), TRAINED_ON: data.training_identity()}


RESULTS = "results.json"


def _saved_results(workdir: Path, config: ResolvedTrainConfig) -> dict | None:
    """The workdir's ``results.json`` when it holds results of ``config`` (else None: none
    yet, unreadable, or of another run)."""
    try:
        results = json.loads((Path(workdir) / RESULTS).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(results, dict) and {"config", "eval", "scores"} <= set(results)
    return results if ok and results["config"] == to_dict(config) else None


def _settings(evaluation: dict) -> dict:
    """The evaluation settings shared by every row of a results table (all but the names)."""
    return {k: v for k, v in evaluation.items() if k != "scores"}


def _covers(results: dict, evaluation: EvalConfig) -> bool:
    """Whether ``results`` (a ``results.json``) holds every score of ``evaluation``, evaluated
    under its settings (reject rate, the scores' settings)."""
    same = _settings(results["eval"]) == _settings(to_dict(evaluation))
    return same and set(evaluation.scores) <= set(results["scores"])


def run(
    config: TrainConfig,
    workdir: Path,
    evaluation: EvalConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Train ``config`` in ``workdir``, evaluate on the open-set split, write results.json.

    ``evaluation`` defaults to ``EvalConfig()``. ``config`` is resolved here, as in
    :func:`fit`. Returns ``{"config": the resolved config, **evaluate(...)}`` (see
    :func:`jacosr.evaluate.evaluate`), with every score row results.json holds.

    results.json only grows: a finished run asked for scores it has not evaluated evaluates
    those alone and adds their rows to the ones there (``eval.scores`` lists them all); one
    whose results.json already holds every score asked for (under the same settings) is
    read back when the data it holds are still those it was computed on (the split's classes
    and the SHA-256 of every split, ``results["split"]``): nothing is trained, evaluated or
    written. The rows of a results.json share one
    set of settings (``eval``: reject rate, the scores' settings): when they change, every
    row there is evaluated again under the new ones, with a warning, rather than kept under a
    label it was not computed with (reject_rate changes every row's macro-F1) or dropped.

    The workdir stays locked until results.json is written; if it cannot be written (a
    read-only workdir), a warning says so and the results are still returned.
    """
    config = resolve(config)
    evaluation = evaluation or EvalConfig()
    data = load_open_set(config.data)
    saved = _saved_results(workdir, config)
    if saved is not None and _covers(saved, evaluation) and saved["split"] == data.describe():
        return saved  # else: the data changed under their name, which open_workdir refuses
    _check_config(config, data)
    identity = run_identity(config, data)
    with open_workdir(workdir, identity, outputs=TRAIN_OUTPUTS, overwrite=overwrite) as wd:
        graphdef, model_state = _train(config, data, wd, overwrite=overwrite, progress=progress)
        saved = _saved_results(wd.path, config)  # again, under the lock
        kept = saved["scores"] if saved else {}
        names = [*kept, *(name for name in evaluation.scores if name not in kept)]
        if saved and _settings(saved["eval"]) != _settings(to_dict(evaluation)):
            changed = config_diff(_settings(saved["eval"]), _settings(to_dict(evaluation)))
            warnings.warn(
                f"the evaluation settings differ from those of the scores in "
                f"{wd.path / RESULTS} ({changed}); evaluating all of them again under the new "
                f"ones ({', '.join(names)}), so that its rows share one set of settings",
                stacklevel=2,
            )
            kept = {}
        todo = dataclasses.replace(
            evaluation, scores=tuple(name for name in names if name not in kept)
        )
        fresh = evaluate(
            graphdef, model_state, data, config.loss, todo, progress=progress and wd.writer
        )
        results = {
            "config": to_dict(config),
            **fresh,
            "eval": to_dict(dataclasses.replace(evaluation, scores=tuple(names))),
            "scores": {
                name: kept[name] if name in kept else fresh["scores"][name] for name in names
            },
        }
        try:
            wd.write_json(RESULTS, results)
        except OSError as err:
            warnings.warn(
                f"could not write {wd.path / RESULTS}: {err.strerror}; the results "
                "above are not saved",
                stacklevel=2,
            )
    return results


def load_run(
    workdir: Path, step: int | None = None, *, data: bool = True
) -> tuple[ResolvedTrainConfig, OpenSetData | None, nnx.GraphDef, ModelState]:
    """A run's (resolved) config, data and model, from its workdir: ``(config, data,
    graphdef, model_state)`` (for notebooks and analyses).

    ``step``: which checkpoint (default: the newest intact one; the run keeps its last
    ``keep_checkpoints``, :meth:`jacosr.checkpoint.CheckpointStore.steps` lists them).
    ``data=False`` skips loading the data set (``data`` is then None): the network is built
    from the ``model`` item stored in the checkpoint (image shape, number of known classes),
    so a checkpoint opens without its data set (a checkpoint saved before that item existed
    needs the data set, which is then loaded anyway).

    The checkpoint is verified as by :func:`fit`: without ``step`` a damaged one is skipped
    with a warning; with ``step`` (an int), a missing one is an error naming the steps there
    are, a damaged one an error naming the intact ones. A ``config.json`` that does not hold a
    training run's config is a ``ValueError`` naming it. Read-only, without taking the
    workdir's lock (a run may be training there).
    """
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a jacosr workdir?")
    try:
        identity = json.loads(config_path.read_text())
        trained_on = identity.get(TRAINED_ON)  # None: a run older than the record
        config = {k: v for k, v in identity.items() if k != TRAINED_ON}
        config = from_dict(ResolvedTrainConfig, config)
    except (ValueError, TypeError, AttributeError) as err:
        fix = (
            "each checkpoint keeps a copy of the run's config (checkpoints/<step>/config/"
            "metadata): copy one over it"
            if (workdir / CHECKPOINTS.name).is_dir()
            else "is it a training run's workdir? (find_runs lists those below a folder)"
        )
        raise ValueError(
            f"{config_path} is not the config of a training run ({type(err).__name__}: "
            f"{err}); {fix}"
        ) from None
    with CheckpointStore(workdir, read_only=True) as store:
        if not store.steps():
            raise FileNotFoundError(f"no checkpoint in {store.directory}")
        item = store.model(step)
        loaded = load_open_set(config.data) if data or item is None else None
        inputs = (
            loaded if item is None else ModelInputs(tuple(item["image_shape"]), item["num_known"])
        )
        graphdef, template = init_train_state(config, inputs)
        if loaded is not None and trained_on not in (None, loaded.training_identity()):
            raise WorkdirError(
                f"{workdir} was trained on other data than its config loads now ("
                f"{config_diff(trained_on, loaded.training_identity())}): the data set was "
                "prepared again from other files, or the run was trained from Python on data "
                "of its own; load_run(..., data=False) opens the model without its data"
            )
        state, _ = store.restore(template, identity, step=step)
    return config, loaded, graphdef, state.model


def find_runs(path: Path) -> list[Path]:
    """The training runs at or below ``path`` (folders holding ``config.json`` and
    ``checkpoints/``), sorted: ``[path]`` for a training run, the runs of an experiment's
    workdir (``train/``, ``runs/<row>/seed<i>``, ``seed<i>/``) otherwise."""
    found = []
    for folder, subfolders, files in os.walk(path):
        if "config.json" in files and "checkpoints" in subfolders:
            found.append(Path(folder))
        subfolders[:] = sorted(d for d in subfolders if d != "checkpoints")
    return sorted(found)


@dataclass(frozen=True)
class TrainArgs:
    """Train an open-set model, evaluate it, and write the workdir.

    Your own data: python -m jacosr.data.prepare NAME --from PATH reads a .npz, MNIST idx
    files, the CIFAR python pickles, SVHN .mat files or class folders of images into a data
    set named NAME; then train with --dataset NAME --known ... (--data-dir as there).

    Attributes:
      config: the run.
      evaluation: the unknown scores and their settings (not part of the run's identity:
        re-running a finished workdir with other scores evaluates only those and adds their
        rows to results.json; with the scores it has, it reads results.json back).
      workdir: where config.json, metrics.jsonl, checkpoints/ and results.json go.
      overwrite: instead of refusing a workdir that holds a run with a different config (or
        none of whose checkpoints is intact), delete that run and train this one; deletes
        only what jacosr wrote there (never other files), and never a workdir in use.
      distributed: several processes (see :mod:`jacosr.distributed`); the devices of one
        process need no flag: the run is data parallel over all of them.
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    workdir: Path = Path("runs/train")
    overwrite: bool = False
    distributed: DistributedConfig = field(default_factory=DistributedConfig)


def main(args: list[str] | None = None) -> dict:
    parsed = cli(TrainArgs, args=args)
    initialize(parsed.distributed)
    path = parsed.workdir / RESULTS

    def stamp() -> tuple[int, int] | None:  # an atomic write gives the file a new inode
        try:
            found = path.stat()
        except OSError:
            return None
        return found.st_ino, found.st_mtime_ns

    before = stamp()
    results = run(parsed.config, parsed.workdir, parsed.evaluation, overwrite=parsed.overwrite)
    if is_writer():
        print(format_table(results))
        if stamp() != before:  # not when run read it back or could not write it
            print(f"wrote {path}")
    return results


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
