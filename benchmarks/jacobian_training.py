"""The cost of the Jacobian training terms (:mod:`jacosr.jacobian.penalties`) per backbone.

Command (from the repository root)::

    .venv/bin/python benchmarks/jacobian_training.py
    .venv/bin/python benchmarks/jacobian_training.py --backbones mlp lenet --steps 5

Prints one table: a row per backbone (the MLP and LeNet at the digits' 8x8x1, VGG32 at
32x32x3; batch 128, m-OvR loss, no augmentation, no rotation task), and the seconds of one
jitted ``value_and_grad`` of the training objective (forward and backward, no optimiser):

* ``plain``: :func:`jacosr.train.make_objective`, the objective as it trains today;
* ``known k``: plus the known-class smoothness term, ``mean_b ||J(x_b)||_F^2`` of the upright
  batch estimated from ``k`` probes per sample in the same forward pass
  (:func:`jacosr.jacobian.batched_sqnorms`, input-side probes: one JVP each), differentiated
  through (reverse mode over the JVPs);
* ``open k``: plus the open-space term instead, one path point per sample appended to the
  batch (:func:`jacosr.jacobian.open_space_points`), its estimates and the known-class ones
  (the hinge's target) from the same pass, :func:`jacosr.jacobian.open_space_hinge`. Both
  terms together cost what this does: they share the pass.
* ``known k output``: ``known k`` with output-side probes (one VJP each, Hoffman, Roberts and
  Yaida's form; double backprop), the comparison behind the estimator's default side.

Each cell is the median of ``--steps`` calls after a compiled warm-up, with its ratio to
``plain``; the machine's load average is printed before and after. The term objective is
:func:`objective_with_terms`, the wiring proposed for ``jacosr.train.make_objective``; once the
objective takes the terms, these rows belong with the training dispatch in
``benchmarks/train.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from jacosr.config import configure_xla

BATCH = 128
# backbone -> (image shape, embed_dim), as in benchmarks/train.py
SHAPES = {"mlp": ((8, 8, 1), 128), "lenet": ((8, 8, 1), 128), "vgg32": ((32, 32, 3), 128)}
CELLS = ("plain", "known 1", "known 4", "open 1", "open 4", "known 1 output", "known 4 output")


def objective_with_terms(
    graphdef, config, *, known: float, open_space: float, num_probes: int, side: str = "input"
):
    """``jacosr.train.make_objective``'s objective plus ``known * mean_b ||J(x_b)||_F^2`` and
    ``open_space * hinge`` (a weight > 0 turns its term on; with both 0 it is
    ``make_objective``'s, bit for bit), from one training-mode forward pass over ``[upright,
    rotated copies, path points]``."""
    import jax
    import jax.numpy as jnp

    from jacosr import jacobian
    from jacosr.losses import loss_rotation, per_sample_loss
    from jacosr.models import ModelState, apply_model
    from jacosr.train import rotated_copies

    def objective(params, batch_stats, x, y, key):
        rot_key, model_key = jax.random.split(key)
        # fold_in(key, 1) would be model_key itself (threefry: split's second counter)
        probe_key, path_key = jax.random.split(jax.random.fold_in(key, 2))
        batch = x.shape[0]
        rows = [x]
        if config.self_sup > 0:
            x_rot, turns = rotated_copies(rot_key, x)
            rows.append(x_rot)
        if open_space > 0:
            paths = jacobian.open_space_points(path_key, x, y)
            rows.append(paths.points)

        def forward(params, x):
            out, new_stats = apply_model(
                graphdef, ModelState(params, batch_stats), x, train=True, key=model_key
            )
            return out.embedding, (out, new_stats)

        x = jnp.concatenate(rows) if len(rows) > 1 else x
        if known > 0 or open_space > 0:
            sqnorms, _, (out, new_stats) = jacobian.batched_sqnorms(
                forward,
                x,
                probe_key,
                params=params,
                num_probes=num_probes,
                side=side,
                has_aux=True,
            )
        else:
            _, (out, new_stats) = forward(params, x)
        upright = jax.tree.map(lambda a: a[:batch], out)
        loss = jnp.mean(per_sample_loss(config.loss, upright, y))
        if config.self_sup > 0:
            rotation = loss_rotation(out.rotation_logits[batch : 2 * batch], turns)
            loss = loss + config.self_sup * jnp.mean(rotation)
        if known > 0:
            loss = loss + known * jnp.mean(sqnorms[:batch])
        if open_space > 0:
            hinge = jacobian.open_space_hinge(sqnorms[-batch:], sqnorms[:batch], paths.valid)
            loss = loss + open_space * hinge
        accuracy = jnp.mean(jnp.argmax(upright.class_scores, -1) == y)
        return loss, (new_stats, accuracy)

    return objective


def time_cells(backbone: str, cells: tuple[str, ...], steps: int) -> dict[str, float]:
    """Median seconds of one jitted value_and_grad of each cell's objective."""
    import jax
    import numpy as np
    from flax import nnx

    from jacosr.losses import loss_spec
    from jacosr.models import ModelConfig, OpenSetNet, split_model
    from jacosr.train import TrainConfig, make_objective, resolve

    image_shape, embed_dim = SHAPES[backbone]
    config = resolve(
        TrainConfig(
            model=ModelConfig(backbone=backbone, embed_dim=embed_dim),
            batch_size=BATCH,
            augment="none",
            self_sup=0.0,
        )
    )
    net = OpenSetNet(
        config.model,
        image_shape=image_shape,
        num_classes=6,
        head=loss_spec(config.loss.loss).head,
        rngs=nnx.Rngs(0),
    )
    graphdef, state = split_model(net)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.uniform(-1, 1, (BATCH, *image_shape)).astype(np.float32))
    y = jax.device_put(rng.integers(0, 6, BATCH).astype(np.int32))
    seconds = {}
    for cell in cells:
        if cell == "plain":
            objective = make_objective(graphdef, config)
        else:
            term, k, *side = cell.split()
            weights = {
                "known": dict(known=1.0, open_space=0.0),
                "open": dict(known=0.0, open_space=1.0),
            }[term]
            objective = objective_with_terms(
                graphdef, config, num_probes=int(k), side=side[0] if side else "input", **weights
            )
        step = jax.jit(jax.value_and_grad(objective, has_aux=True))
        args = (state.params, state.batch_stats, x, y)
        (loss, _), _ = step(*args, jax.random.key(0))
        if not np.isfinite(float(loss)):
            raise FloatingPointError(f"{backbone} {cell}: non-finite loss")
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            jax.block_until_ready(step(*args, jax.random.key(i + 1)))
            times.append(time.perf_counter() - t0)
        seconds[cell] = statistics.median(times)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--steps", type=int, default=5, help="timed calls per cell")
    args = parser.parse_args()
    configure_xla()
    import jax

    cells = tuple(dict.fromkeys(["plain", *args.cells]))
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPU cores; batch {BATCH}; seconds per value_and_grad (median of "
        f"{args.steps}) and x plain; load average before: "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
        + "\n"
    )
    print("| backbone | " + " | ".join(cells) + " |")
    print("|---|" + "---|" * len(cells))
    for backbone in args.backbones:
        seconds = time_cells(backbone, cells, args.steps)
        row = [f"{seconds['plain']:.4f}"]
        row += [f"{seconds[c]:.4f} ({seconds[c] / seconds['plain']:.1f}x)" for c in cells[1:]]
        print(f"| {backbone} | " + " | ".join(row) + " |", flush=True)
    print("\nload average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
