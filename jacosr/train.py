"""Training: one jitted multi-step dispatch over split NNX state, a resumable loop, the CLI.

    python -m jacosr.train --dataset digits --loss movr --steps 2000 --workdir runs/digits-movr
    python -m jacosr.train --loss rpl --self-sup 0.1 --augment strong --workdir runs/rpl-s-a

Runtime on 2 CPU cores: ~15 s for the first command (MLP on digits, compilation and evaluation
included); the rotation task roughly doubles the cost of a step. The workdir receives
``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``results.json`` (the evaluation table,
also printed); re-running the same command resumes from the last checkpoint, and re-running a
finished run only evaluates it again (so ``--scores jacobian ...`` adds scores without
retraining: the evaluation settings are not part of the run's config).

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
"""

from __future__ import annotations

import dataclasses
import json
import math
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
from tqdm.auto import tqdm

from jacosr.checkpoint import CheckpointStore, DamagedCheckpointError, fault_point
from jacosr.config import cli, from_dict, require, to_dict
from jacosr.data import DataConfig, OpenSetData, get_augmentation, load_open_set, to_float
from jacosr.evaluate import EvalConfig, evaluate, format_table
from jacosr.losses import LossConfig, loss_rotation, loss_spec, per_sample_loss
from jacosr.models import ModelConfig, ModelState, OpenSetNet, apply_model, split_model
from jacosr.workdir import Workdir, WorkdirError, open_workdir

# Sources on which the techniques default to off (``augment="auto"``, ``self_sup=None``):
# 8x8 digits are not flip-invariant and a 4 px shift moves half the image; toy2d's "images"
# are 1x1 points, which neither shift nor rotate.
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
        none, weak, strong), or ``auto``: the paper's ``weak`` (4 px translation and horizontal
        flip) on image data sets, ``none`` on digits and toy2d (not flip-invariant, and too
        small for a 4 px shift). The ablation's "A".
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

    Refused when built (``ValueError`` naming the flag, before any workdir exists): fewer than
    1 step, image per batch, step per log line or dispatch, or checkpoint kept;
    checkpoint_every not a positive multiple of log_every; lr not a positive finite number;
    lr_min outside [0, lr]; momentum outside [0, 1); a negative or infinite weight_decay or
    self_sup; an unknown augmentation.

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


@dataclass(frozen=True)
class ResolvedTrainConfig(TrainConfig):
    """A :class:`TrainConfig` whose techniques are decided: ``augment`` names an augmentation
    (never ``auto``) and ``self_sup`` is a number (never None).

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
    ``weak`` (``none`` on digits and toy2d), ``self_sup=None`` becomes the paper's 0.1 (0 on
    digits and toy2d); values set by hand stay. A resolved config is returned as it is."""
    if isinstance(config, ResolvedTrainConfig):
        return config
    off = config.data.benchmark is None and config.data.dataset in TECHNIQUES_OFF_BY_DEFAULT
    augment = ("none" if off else "weak") if config.augment == "auto" else config.augment
    self_sup = (0.0 if off else PAPER_SELF_SUP) if config.self_sup is None else config.self_sup
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return ResolvedTrainConfig(**{**given, "augment": augment, "self_sup": float(self_sup)})


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


def build_model(config: ResolvedTrainConfig, data: OpenSetData, key: jax.Array) -> OpenSetNet:
    """The network ``config`` describes, with the head its loss needs and, when the rotation
    task is on, a rotation head."""
    _require_resolved(config, "build_model")
    return OpenSetNet(
        config.model,
        image_shape=data.image_shape,
        num_classes=data.num_known,
        head=loss_spec(config.loss.loss).head,
        rotation_head=config.self_sup > 0,
        rngs=nnx.Rngs(key),
    )


def init_train_state(config: TrainConfig, data: OpenSetData) -> tuple[nnx.GraphDef, TrainState]:
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

    Two compiled programs serve every ``n``: ``n == dispatch_steps`` runs a ``lax.scan`` of
    that static length, and any shorter ``n`` (the steps left before a checkpoint or the end)
    one loop whose trip count is an argument, writing into ``[dispatch_steps]`` buffers. A scan
    per ``n`` would compile once per distinct length; the dynamic loop alone would hide the
    trip count from XLA, whose GPU while loops then read their condition back to the host
    after every step.
    """
    _require_resolved(config, "make_train_dispatch")
    length = config.dispatch_steps
    optimizer = make_optimizer(config)
    augment = get_augmentation(config.augment)
    objective = make_objective(graphdef, config)
    data_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))

    def one_step(state: TrainState, train_x, train_y):
        idx = batch_indices(data_key, state.step, num_train, config.batch_size)
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

    @partial(jax.jit, donate_argnums=0)
    def full(state: TrainState, train_x, train_y):
        return jax.lax.scan(lambda s, _: one_step(s, train_x, train_y), state, length=length)

    @partial(jax.jit, donate_argnums=0)
    def shorter(state: TrainState, train_x, train_y, n: jax.Array):
        def body(i, carry):
            state, buffers = carry
            state, values = one_step(state, train_x, train_y)
            return state, tuple(buf.at[i].set(v) for buf, v in zip(buffers, values, strict=True))

        buffers = (jnp.zeros(length), jnp.zeros(length), jnp.zeros(length, bool))
        return jax.lax.fori_loop(0, n, body, (state, buffers))

    def dispatch(state: TrainState, train_x, train_y, n: int):
        if not 1 <= n <= length:
            raise ValueError(f"a dispatch runs 1 to dispatch_steps ({length}) steps, not {n}")
        if n == length:
            state, values = full(state, train_x, train_y)
        else:
            state, values = shorter(state, train_x, train_y, np.int32(n))
        return state, tuple(np.asarray(v)[:n] for v in values)

    return dispatch


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left intact."""


@dataclass(frozen=True)
class Every:
    """The steps ``every, 2 every, 3 every, ...`` below ``last``, and ``last``.

    The training loop's boundaries are such schedules: the metrics.jsonl lines (every
    ``log_every`` steps), the checkpoints (every ``checkpoint_every``) and the end. Another
    kind of boundary (steps at which to evaluate the model, say) is another object with
    :meth:`after`: see :func:`_train`."""

    every: int
    last: int

    def after(self, step: int) -> int:
        """The first of these steps after ``step`` (``last`` when none is before it)."""
        return min((step // self.every + 1) * self.every, self.last)


TRAIN_OUTPUTS = ("checkpoints", "metrics.jsonl", "results.json")
"""What a training run writes in its workdir besides ``config.json`` (all that ``--overwrite``
may delete there)."""


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
    *stop*: a step at which the state itself is needed on the host, here the checkpoints and
    the last step. Stops are ``(schedule, action)`` pairs: a schedule's ``after(step)`` is its
    next step (see :class:`Every`), and ``action(step, state)`` runs there. Every stop falls at
    the same steps in a run and in the same run resumed from any checkpoint (checkpoints are
    stops), so both dispatch the same steps together and reach bit-identical states. Another
    kind of stop (evaluating the model at chosen steps, say) is one more pair, whose output is
    truncated on resumption as ``metrics.jsonl`` is.
    """
    graphdef, fresh = init_train_state(config, data)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
    state, damaged = _resume(wd, fresh, overwrite)
    step = int(state.step)
    log_path = wd.path / "metrics.jsonl"
    _truncate_log(log_path, step)
    if step >= config.steps:  # finished: the checkpoints were only read
        return graphdef, state.model
    dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
    train = jax.device_put(data.known_train.x), jax.device_put(data.known_train.y)
    bar = tqdm(total=config.steps, initial=step, disable=not progress, desc="train", unit="step")
    with (
        CheckpointStore(wd.path, keep=config.keep_checkpoints) as store,
        log_path.open("a") as log_file,
        bar,
    ):
        store.delete(damaged)
        log = _MetricsLog(log_file, config)

        def checkpoint(at: int, state: TrainState) -> None:
            store.save(at, state, wd.config)

        stops = [(Every(config.checkpoint_every, config.steps), checkpoint)]
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
    return graphdef, state.model


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
    with open_workdir(workdir, to_dict(config), outputs=TRAIN_OUTPUTS, overwrite=overwrite) as wd:
        return _train(config, data, wd, overwrite=overwrite, progress=progress)


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
    :func:`jacosr.evaluate.evaluate`). The workdir stays locked until results.json is
    written; if it cannot be written (a read-only workdir), a warning says so and the results
    are still returned.
    """
    config = resolve(config)
    data = load_open_set(config.data)
    _check_config(config, data)
    with open_workdir(workdir, to_dict(config), outputs=TRAIN_OUTPUTS, overwrite=overwrite) as wd:
        graphdef, model_state = _train(config, data, wd, overwrite=overwrite, progress=progress)
        results = {
            "config": to_dict(config),
            **evaluate(graphdef, model_state, data, config.loss, evaluation or EvalConfig()),
        }
        try:
            wd.write_text("results.json", json.dumps(results, indent=2) + "\n")
        except OSError as err:
            warnings.warn(
                f"could not write {wd.path / 'results.json'}: {err.strerror}; the results "
                "above are not saved",
                stacklevel=2,
            )
    return results


def load_run(
    workdir: Path,
) -> tuple[ResolvedTrainConfig, OpenSetData, nnx.GraphDef, ModelState]:
    """Load a run's (resolved) config, data and latest model from its workdir (for notebooks).

    Restores the newest intact checkpoint, verified as by :func:`fit` (a damaged one is
    skipped with a warning), read-only and without taking the workdir's lock (a run may be
    training there).
    """
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a jacosr workdir?")
    config = from_dict(ResolvedTrainConfig, json.loads(config_path.read_text()))
    data = load_open_set(config.data)
    graphdef, template = init_train_state(config, data)
    with CheckpointStore(workdir, read_only=True) as store:
        state, _ = store.restore(template, to_dict(config))
    if state is None:
        raise FileNotFoundError(f"no checkpoint in {store.directory}")
    return config, data, graphdef, state.model


@dataclass(frozen=True)
class TrainArgs:
    """Train an open-set model, evaluate it, and write the workdir.

    Attributes:
      config: the run.
      evaluation: the unknown scores and their settings (not part of the run's identity:
        re-running a finished workdir with other scores only re-evaluates).
      workdir: where config.json, metrics.jsonl, checkpoints/ and results.json go.
      overwrite: instead of refusing a workdir that holds a run with a different config (or
        none of whose checkpoints is intact), delete that run and train this one; deletes
        only what jacosr wrote there (never other files), and never a workdir in use.
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    workdir: Path = Path("runs/train")
    overwrite: bool = False


def main(args: list[str] | None = None) -> dict:
    parsed = cli(TrainArgs, args=args)
    results = run(parsed.config, parsed.workdir, parsed.evaluation, overwrite=parsed.overwrite)
    print(format_table(results))
    print(f"wrote {parsed.workdir / 'results.json'}")
    return results


if __name__ == "__main__":
    from jacosr.config import run_command

    run_command(main)
