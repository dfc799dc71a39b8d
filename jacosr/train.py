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
from typing import NamedTuple

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
      log_every: steps per device dispatch (run as one lax.scan) and per metrics.jsonl line.
      checkpoint_every: steps between checkpoints (a multiple of log_every).
      keep_checkpoints: how many recent checkpoints to keep (at least 1: the run resumes and
        is evaluated from its last checkpoint).

    Refused when built (``ValueError`` naming the flag, before any workdir exists): fewer than
    1 step, image per batch, step per log line or checkpoint kept; checkpoint_every not a
    positive multiple of log_every; lr not a positive finite number; lr_min outside [0, lr];
    momentum outside [0, 1); a negative or infinite weight_decay or self_sup; an unknown
    augmentation.
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
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3

    def __post_init__(self):
        for flag, value in (
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--log-every", self.log_every),
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


def resolve_techniques(config: TrainConfig) -> TrainConfig:
    """Replace ``augment="auto"`` and ``self_sup=None`` by the data set's defaults. Idempotent."""
    off = config.data.benchmark is None and config.data.dataset in TECHNIQUES_OFF_BY_DEFAULT
    augment = ("none" if off else "weak") if config.augment == "auto" else config.augment
    self_sup = (0.0 if off else PAPER_SELF_SUP) if config.self_sup is None else config.self_sup
    return dataclasses.replace(config, augment=augment, self_sup=float(self_sup))


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


def build_model(config: TrainConfig, data: OpenSetData, key: jax.Array) -> OpenSetNet:
    """The network ``config`` describes, with the head its loss needs and, when the rotation
    task is on, a rotation head."""
    config = resolve_techniques(config)
    return OpenSetNet(
        config.model,
        image_shape=data.image_shape,
        num_classes=data.num_known,
        head=loss_spec(config.loss.loss).head,
        rotation_head=config.self_sup > 0,
        rngs=nnx.Rngs(key),
    )


def init_train_state(config: TrainConfig, data: OpenSetData) -> tuple[nnx.GraphDef, TrainState]:
    """Initialise the model and optimiser from ``config.seed``."""
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


def make_objective(graphdef: nnx.GraphDef, config: TrainConfig):
    """The training objective ``(params, batch_stats, x, y, key) -> (loss, (stats, acc))``.

    ``x: [B, H, W, C]`` float32 in [-1, 1] (augmented upright images), ``y: [B]``; see the
    module docstring for the rotation term. ``acc`` is the batch's closed-set accuracy.
    """
    config = resolve_techniques(config)

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


def make_train_dispatch(graphdef: nnx.GraphDef, config: TrainConfig, num_train: int):
    """The jitted function that runs ``n`` training steps in one dispatch.

    ``dispatch(state, train_x, train_y, n) -> (state, (loss [n], accuracy [n], finite [n]))``,
    where ``finite`` says the step's loss and updated parameters are all finite. The training
    arrays stay resident on the device; batches are gathered, converted to float, augmented and
    fed to the objective inside jit; the per-step key is ``fold_in(key, step)``, split into the
    augmentation's key and the objective's. ``state`` is donated.
    """
    config = resolve_techniques(config)
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

    @partial(jax.jit, static_argnames="n", donate_argnums=0)
    def dispatch(state: TrainState, train_x, train_y, n: int):
        return jax.lax.scan(lambda s, _: one_step(s, train_x, train_y), state, length=n)

    return dispatch


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss; the last good checkpoint is left intact."""


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


def _check_config(config: TrainConfig, data: OpenSetData) -> None:
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


def _train(
    config: TrainConfig, data: OpenSetData, wd: Workdir, *, overwrite: bool, progress: bool
) -> tuple[nnx.GraphDef, ModelState]:
    """:func:`fit` in the open workdir ``wd``."""
    graphdef, fresh = init_train_state(config, data)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), fresh)
    state, damaged = _resume(wd, fresh, overwrite)
    start = int(state.step)
    log_path = wd.path / "metrics.jsonl"
    _truncate_log(log_path, start)
    if start >= config.steps:  # finished: the checkpoints were only read
        return graphdef, state.model
    dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
    train_x = jax.device_put(data.known_train.x)
    train_y = jax.device_put(data.known_train.y)
    schedule = lr_schedule(config)
    bar = tqdm(total=config.steps, initial=start, disable=not progress, desc="train", unit="step")
    t0 = time.perf_counter()
    with CheckpointStore(wd.path, keep=config.keep_checkpoints) as store, bar:
        store.delete(damaged)
        with log_path.open("a") as log:
            step = start
            while step < config.steps:
                n = min(config.log_every - step % config.log_every, config.steps - step)
                state, (loss, accuracy, finite) = dispatch(state, train_x, train_y, n)
                loss, accuracy = np.asarray(loss), np.asarray(accuracy)
                bad = np.flatnonzero(~np.asarray(finite))
                if bad.size:
                    raise NonFiniteLossError(
                        f"training diverged at step {step + int(bad[0])}: the loss "
                        f"({loss[bad[0]]}) or the updated parameters are not finite; "
                        f"{store.describe_intact(abstract)}. Lower --lr or check the data"
                    )
                step += n
                record = {
                    "step": step,
                    "loss": float(loss.mean()),
                    "accuracy": float(accuracy.mean()),
                    "lr": float(schedule(step - 1)),
                    "seconds": round(time.perf_counter() - t0, 3),
                }
                log.write(json.dumps(record) + "\n")
                log.flush()
                fault_point("after-step", step)
                bar.update(n)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
                if step % config.checkpoint_every == 0 or step == config.steps:
                    store.save(step, state, wd.config)
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

    Steps run ``log_every`` at a time in one device dispatch; after each dispatch one line
    goes to ``metrics.jsonl``; every ``checkpoint_every`` steps and at the end the state is
    checkpointed. A non-finite loss or parameter raises :class:`NonFiniteLossError` naming the
    step, without saving the diverged state. ``config.json`` holds the config with the
    techniques' defaults resolved (:func:`resolve_techniques`).

    The workdir is opened with :func:`jacosr.workdir.open_workdir` (its lock held throughout;
    a different config is refused unless ``overwrite``); training resumes from the newest
    intact checkpoint (:meth:`jacosr.checkpoint.CheckpointStore.restore`); a finished run
    only reads its last checkpoint (a read-only workdir works).
    """
    config = resolve_techniques(config)
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

    ``evaluation`` defaults to ``EvalConfig()``. Returns ``{"config": the resolved config,
    **evaluate(...)}`` (see :func:`jacosr.evaluate.evaluate`). The workdir stays locked until
    results.json is written; if it cannot be written (a read-only workdir), a warning says so
    and the results are still returned.
    """
    config = resolve_techniques(config)
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


def load_run(workdir: Path) -> tuple[TrainConfig, OpenSetData, nnx.GraphDef, ModelState]:
    """Load a run's config, data and latest model from its workdir (for notebooks).

    Restores the newest intact checkpoint, verified as by :func:`fit` (a damaged one is
    skipped with a warning), read-only and without taking the workdir's lock (a run may be
    training there).
    """
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a jacosr workdir?")
    config = from_dict(TrainConfig, json.loads(config_path.read_text()))
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
