"""The pure JAX programs of training: the network and optimiser a config describes, the
objective, and the jitted multi-step dispatch.

Everything here is a function of a :class:`~jacosr.recipe.ResolvedTrainConfig` (techniques
decided) and arrays; nothing touches the disk. :mod:`jacosr.train` runs these programs in
its resumable loop.

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

Beyond the paper, the Jacobian terms (:class:`~jacosr.recipe.JacobianTerms`, off by default):

    L += jacobian_reg * mean_b ||J_f(x_b)||_F^2
       + open_space_reg * mean_b relu(1 - ||J_f(x_t,b)||_F^2 / (ratio^2 mean ||J_f(x_b)||^2))

with ``x_t,b`` a point mid-path between ``x_b`` and a batch sample of another class
(:mod:`jacosr.jacobian.penalties`). The path points join the same forward pass (after the
rotated copies), so they share the batch's BatchNorm statistics, and one call of
:func:`jacosr.jacobian.batched_sqnorms` gives every row's unbiased estimate of
``||J_f||_F^2`` with ``--jacobian-reg-probes`` projections, differentiated through (double
backprop). Their keys are folded from the step's key, so a resumed run is bit-identical; with
both weights 0 nothing of this is traced, and the step is the plain one.
"""

from __future__ import annotations

import dataclasses
import functools
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jacosr import jacobian
from jacosr.data import OpenSetData, get_augmentation, to_float
from jacosr.distributed import batch_sharded, data_mesh, put_replicated, replicated
from jacosr.losses import loss_rotation, loss_spec, per_sample_loss
from jacosr.models import ModelState, OpenSetNet, apply_model, split_model
from jacosr.recipe import ResolvedTrainConfig


class TrainState(NamedTuple):
    """Everything that changes during training, as one pytree (donated to each dispatch)."""

    step: jax.Array
    model: ModelState
    opt_state: optax.OptState


def lr_schedule(config: ResolvedTrainConfig) -> optax.Schedule:
    """The cosine learning-rate schedule, ``lr`` at step 0 down to ``lr_min`` at ``steps``."""
    return optax.cosine_decay_schedule(config.lr, config.steps, alpha=config.lr_min / config.lr)


def make_optimizer(config: ResolvedTrainConfig) -> optax.GradientTransformation:
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
    return OpenSetNet(
        config.model,
        image_shape=data.image_shape,
        num_classes=data.num_known,
        head=loss_spec(config.loss.loss).head,
        rotation_head=config.self_sup > 0,
        rngs=nnx.Rngs(key),
    )


def init_train_state(
    config: ResolvedTrainConfig, data: OpenSetData | ModelInputs
) -> tuple[nnx.GraphDef, TrainState]:
    """Initialise the model and optimiser of the run ``config`` from ``config.seed``."""
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
    module docstring for the rotation term and the Jacobian terms. ``acc`` is the batch's
    closed-set accuracy.
    """
    terms = config.jacobian

    def objective(params, batch_stats, x, y, key):
        rot_key, model_key = jax.random.split(key)
        # Not fold_in(key, 1): with threefry that is split(key)[1], the model's key.
        probe_key, path_key = jax.random.split(jax.random.fold_in(key, 2))
        batch = x.shape[0]
        rows = [x]
        if config.self_sup > 0:
            x_rot, turns = rotated_copies(rot_key, x)
            rows.append(x_rot)
        if terms.open_space_reg > 0:
            paths = jacobian.open_space_points(path_key, x, y)
            rows.append(paths.points)
        x = jnp.concatenate(rows) if len(rows) > 1 else x

        def forward(params, x):
            out, new_stats = apply_model(
                graphdef, ModelState(params, batch_stats), x, train=True, key=model_key
            )
            return out.embedding, (out, new_stats)

        if terms.enabled:
            sqnorms, _, (out, new_stats) = jacobian.batched_sqnorms(
                forward,
                x,
                probe_key,
                params=params,
                num_probes=terms.jacobian_reg_probes,
                side=terms.jacobian_reg_side,
                has_aux=True,
            )
        else:
            _, (out, new_stats) = forward(params, x)
        upright = jax.tree.map(lambda a: a[:batch], out)
        loss = jnp.mean(per_sample_loss(config.loss, upright, y))
        if config.self_sup > 0:
            rotation = loss_rotation(out.rotation_logits[batch : 2 * batch], turns)
            loss = loss + config.self_sup * jnp.mean(rotation)
        if terms.jacobian_reg > 0:
            loss = loss + terms.jacobian_reg * jnp.mean(sqnorms[:batch])
        if terms.open_space_reg > 0:
            hinge = jacobian.open_space_hinge(
                sqnorms[-batch:], sqnorms[:batch], paths.valid, ratio=terms.open_space_ratio
            )
            loss = loss + terms.open_space_reg * hinge
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
