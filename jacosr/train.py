"""Training: one jitted multi-step dispatch over split NNX state, a resumable loop, the CLI.

    python -m jacosr.train --dataset digits --loss movr --steps 2000 --workdir runs/digits-movr

Runtime on 2 CPU cores: ~15 s for the command above (MLP on digits, compilation included).
The workdir receives ``config.json``, ``metrics.jsonl``, ``checkpoints/`` and ``results.json``;
re-running the same command resumes from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
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

from jacosr.checkpoint import CheckpointStore
from jacosr.config import cli, from_dict, to_dict
from jacosr.data import DataConfig, OpenSetData, load_open_set, to_float
from jacosr.evaluate import evaluate
from jacosr.losses import LossConfig, loss_spec, per_sample_loss
from jacosr.models import ModelConfig, ModelState, OpenSetNet, apply_model, split_model


@dataclass(frozen=True)
class TrainConfig:
    """A training run (paper defaults: SGD momentum 0.9, cosine LR 0.1 -> 1e-5, weight decay
    1e-3, batch 128, 20k steps).

    Attributes:
      steps: number of optimisation steps.
      batch_size: images per step, drawn without replacement within an epoch.
      lr: initial learning rate of the cosine schedule.
      lr_min: final learning rate of the cosine schedule.
      momentum: SGD momentum.
      weight_decay: L2 weight decay added to the gradient (PyTorch-style coupled decay).
      seed: seed of initialisation, batch order and dropout.
      log_every: steps per device dispatch (run as one lax.scan) and per metrics.jsonl line.
      checkpoint_every: steps between checkpoints (a multiple of log_every).
      keep_checkpoints: how many recent checkpoints to keep.
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
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree (donated to each dispatch)."""

    step: jax.Array
    model: ModelState
    opt_state: optax.OptState


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """SGD with momentum, coupled weight decay and the cosine learning-rate schedule."""
    schedule = optax.cosine_decay_schedule(config.lr, config.steps, alpha=config.lr_min / config.lr)
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum),
    )


def build_model(config: TrainConfig, data: OpenSetData, key: jax.Array) -> OpenSetNet:
    """The network ``config`` describes, with the head its loss needs."""
    return OpenSetNet(
        config.model,
        image_shape=data.image_shape,
        num_classes=data.num_known,
        head=loss_spec(config.loss.loss).head,
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


def make_train_dispatch(graphdef: nnx.GraphDef, config: TrainConfig, num_train: int):
    """The jitted function that runs ``n`` training steps in one dispatch.

    ``dispatch(state, train_x, train_y, n) -> (state, (loss [n], accuracy [n], finite [n]))``,
    where ``finite`` says the step's loss and updated parameters are all finite. The training
    arrays stay resident on the device; batches are gathered, converted to float and fed to
    the step inside jit; the per-step key is ``fold_in(key, step)``. ``state`` is donated.
    """
    optimizer = make_optimizer(config)
    data_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(config.seed), 1))

    def loss_fn(params, batch_stats, x, y, key):
        out, new_stats = apply_model(
            graphdef, ModelState(params, batch_stats), x, train=True, key=key
        )
        loss = jnp.mean(per_sample_loss(config.loss, out.logits, y))
        accuracy = jnp.mean(jnp.argmax(out.logits, -1) == y)
        return loss, (new_stats, accuracy)

    def one_step(state: TrainState, train_x, train_y):
        idx = batch_indices(data_key, state.step, num_train, config.batch_size)
        x, y = to_float(train_x[idx]), train_y[idx]
        key = jax.random.fold_in(step_key, state.step)
        params, batch_stats = state.model
        (loss, (new_stats, accuracy)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
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


def _prepare_workdir(workdir: Path, config_dict: dict, overwrite: bool) -> None:
    """Create ``workdir`` or check that it holds the same config; ``overwrite`` wipes it."""
    config_path = workdir / "config.json"
    if config_path.exists():
        old = json.loads(config_path.read_text())
        if old != config_dict and not overwrite:
            diff = _config_diff(old, config_dict)
            raise ValueError(
                f"{workdir} holds a run with a different config ({diff}); choose another "
                "--workdir, or pass --overwrite to delete the old run"
            )
        if overwrite and old != config_dict:
            shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config_dict, indent=2) + "\n")


def _config_diff(old: dict, new: dict, prefix: str = "") -> str:
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            inner = _config_diff(a, b, f"{prefix}{key}.")
            changes += [inner] if inner else []
        elif a != b:
            changes.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return "; ".join(changes)


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after ``step`` (by a run that died before its next checkpoint)."""
    if path.exists():
        lines = path.read_text().splitlines()
        kept = [line for line in lines if json.loads(line)["step"] <= step]
        path.write_text("".join(line + "\n" for line in kept))


def _check_config(config: TrainConfig, data: OpenSetData) -> None:
    n = len(data.known_train.y)
    if n < config.batch_size:
        raise ValueError(
            f"known_train has {n} images, fewer than batch_size {config.batch_size}; "
            "lower --batch-size or use more known classes"
        )
    if config.steps < 1 or config.log_every < 1:
        raise ValueError(
            f"steps and log_every must be >= 1, got {config.steps}, {config.log_every}"
        )
    if config.checkpoint_every % config.log_every:
        raise ValueError(
            f"checkpoint_every ({config.checkpoint_every}) must be a multiple of log_every "
            f"({config.log_every})"
        )


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
    step, without saving the diverged state.
    """
    _check_config(config, data)
    workdir = Path(workdir)
    config_dict = to_dict(config)
    _prepare_workdir(workdir, config_dict, overwrite)
    graphdef, state = init_train_state(config, data)
    store = CheckpointStore(workdir, keep=config.keep_checkpoints)
    log_path = workdir / "metrics.jsonl"
    try:
        if store.latest_step() is not None:
            state, _ = store.restore(state)
        start = int(state.step)
        _truncate_log(log_path, start)
        dispatch = make_train_dispatch(graphdef, config, len(data.known_train.y))
        train_x = jax.device_put(data.known_train.x)
        train_y = jax.device_put(data.known_train.y)
        schedule = optax.cosine_decay_schedule(
            config.lr, config.steps, alpha=config.lr_min / config.lr
        )
        bar = tqdm(
            total=config.steps, initial=start, disable=not progress, desc="train", unit="step"
        )
        t0 = time.perf_counter()
        with log_path.open("a") as log, bar:
            step = start
            while step < config.steps:
                n = min(config.log_every - step % config.log_every, config.steps - step)
                state, (loss, accuracy, finite) = dispatch(state, train_x, train_y, n)
                loss, accuracy = np.asarray(loss), np.asarray(accuracy)
                bad = np.flatnonzero(~np.asarray(finite))
                if bad.size:
                    last = store.latest_step()
                    kept = (
                        f"the last good checkpoint (step {last}) in {store.directory} is intact"
                        if last is not None
                        else "no checkpoint had been saved yet"
                    )
                    raise NonFiniteLossError(
                        f"training diverged at step {step + int(bad[0])}: the loss "
                        f"({loss[bad[0]]}) or the updated parameters are not finite; {kept}. "
                        "Lower --lr or check the data"
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
                bar.update(n)
                bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}")
                if step % config.checkpoint_every == 0 or step == config.steps:
                    store.save(step, state, config_dict)
    finally:
        store.close()
    return graphdef, state.model


def run(config: TrainConfig, workdir: Path, *, overwrite: bool = False) -> dict:
    """Train ``config`` in ``workdir``, evaluate on the open-set test split, write results.json."""
    data = load_open_set(config.data)
    graphdef, model_state = fit(config, data, workdir, overwrite=overwrite)
    results = {"config": to_dict(config), **evaluate(graphdef, model_state, data, config.loss)}
    (Path(workdir) / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def load_run(workdir: Path) -> tuple[TrainConfig, OpenSetData, nnx.GraphDef, ModelState]:
    """Load a run's config, data and latest model from its workdir (for notebooks)."""
    workdir = Path(workdir)
    config_path = workdir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{workdir} has no config.json; is it a jacosr workdir?")
    config = from_dict(TrainConfig, json.loads(config_path.read_text()))
    data = load_open_set(config.data)
    graphdef, state = init_train_state(config, data)
    store = CheckpointStore(workdir, keep=config.keep_checkpoints)
    try:
        state, _ = store.restore(state)
    finally:
        store.close()
    return config, data, graphdef, state.model


@dataclass(frozen=True)
class TrainArgs:
    """Train an open-set model, evaluate it, and write the workdir.

    Attributes:
      config: the run.
      workdir: where config.json, metrics.jsonl, checkpoints/ and results.json go.
      overwrite: delete a run with a different config in workdir instead of refusing.
    """

    config: TrainConfig = field(default_factory=TrainConfig)
    workdir: Path = Path("runs/train")
    overwrite: bool = False


def main(args: list[str] | None = None) -> dict:
    parsed = cli(TrainArgs, args=args)
    results = run(parsed.config, parsed.workdir, overwrite=parsed.overwrite)
    aurocs = ", ".join(f"{k} {v:.4f}" for k, v in results["auroc"].items())
    print(f"accuracy {results['accuracy']:.4f} | AUROC {aurocs} | workdir {parsed.workdir}")
    return results


if __name__ == "__main__":
    main()
