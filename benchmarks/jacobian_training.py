"""The cost of the Jacobian training terms (:class:`jacosr.recipe.JacobianTerms`) per backbone:
the training step with each term against the plain step.

Command (from the repository root)::

    .venv/bin/python benchmarks/jacobian_training.py
    .venv/bin/python benchmarks/jacobian_training.py --backbones mlp lenet --steps 10

Prints one table: a row per backbone (the MLP and LeNet at the digits' 8x8x1, LeNet at MNIST's
28x28x1, VGG32 at 32x32x3; batch 128, m-OvR loss, no augmentation, no rotation task), and the
seconds per step of the training dispatch (:func:`jacosr.step.make_train_dispatch`: ``--steps``
steps in one dispatch, the objective, its gradient and the optimiser; the median of
``--rounds`` dispatches after a compiled warm-up) with:

* ``plain``: no term (``--jacobian-reg 0 --open-space-reg 0``);
* ``known k``: the known-class smoothness term (``--jacobian-reg 1 --jacobian-reg-probes k``),
  the upright batch's ``||J||_F^2`` estimated from ``k`` input-side probes (one JVP each) in
  the same forward pass and differentiated through;
* ``open k``: the open-space term (``--open-space-reg 1``), a path point per sample appended to
  the batch and every row's estimate from ``k`` probes; both terms together cost what this
  does, as they share the pass;
* ``known k output``: ``known k`` with output-side probes (``--jacobian-reg-side output``: one
  VJP each, Hoffman, Roberts and Yaida's form; double backprop), the comparison behind the
  default side;

and each cell's ratio to ``plain``. The machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from jacosr.config import configure_xla

BATCH = 128
# backbone (row) -> (backbone, image shape, embed_dim)
SHAPES = {
    "mlp": ("mlp", (8, 8, 1), 128),
    "lenet": ("lenet", (8, 8, 1), 128),
    "lenet 28x28": ("lenet", (28, 28, 1), 128),
    "vgg32": ("vgg32", (32, 32, 3), 128),
}
CELLS = ("plain", "known 1", "known 4", "open 1", "open 4", "known 1 output", "known 4 output")


def terms_of(cell: str):
    """The :class:`jacosr.recipe.JacobianTerms` of a cell (``"known 4 output"``)."""
    from jacosr.recipe import JacobianTerms

    if cell == "plain":
        return JacobianTerms()
    term, k, *side = cell.split()
    weights = {"known": {"jacobian_reg": 1.0}, "open": {"open_space_reg": 1.0}}[term]
    return JacobianTerms(
        jacobian_reg_probes=int(k), jacobian_reg_side=(side or ["input"])[0], **weights
    )


def time_cells(row: str, cells: tuple[str, ...], steps: int, rounds: int) -> dict[str, float]:
    """Median seconds per training step of each cell, one dispatch of ``steps`` steps."""
    import jax
    import numpy as np

    from jacosr.models import ModelConfig
    from jacosr.recipe import TrainConfig, resolve
    from jacosr.step import ModelInputs, init_train_state, make_train_dispatch

    backbone, image_shape, embed_dim = SHAPES[row]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4 * BATCH, *image_shape), dtype=np.uint8)
    y = np.tile(np.arange(6, dtype=np.int32), len(x) // 6 + 1)[: len(x)]
    x, y = jax.device_put(x), jax.device_put(y)
    seconds = {}
    for cell in cells:
        config = resolve(
            TrainConfig(
                model=ModelConfig(backbone=backbone, embed_dim=embed_dim),
                batch_size=BATCH,
                augment="none",
                self_sup=0.0,
                dispatch_steps=steps,
                jacobian=terms_of(cell),
            )
        )
        graphdef, state = init_train_state(config, ModelInputs(image_shape, 6))
        dispatch = make_train_dispatch(graphdef, config, len(y))
        state, (loss, _, finite) = dispatch(state, x, y, steps)  # compiles
        if not finite.all():
            raise FloatingPointError(f"{row} {cell}: non-finite loss {loss}")
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            state, _ = dispatch(state, x, y, steps)  # reading the values waits for it
            times.append((time.perf_counter() - t0) / steps)
        seconds[cell] = statistics.median(times)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--steps", type=int, default=5, help="steps per timed dispatch")
    parser.add_argument("--rounds", type=int, default=3, help="timed dispatches per cell")
    args = parser.parse_args()
    configure_xla()
    import jax

    cells = tuple(dict.fromkeys(["plain", *args.cells]))
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPU cores; batch {BATCH}; seconds per training step (median of "
        f"{args.rounds} dispatches of {args.steps} steps) and x plain; load average before: "
        + " ".join(f"{v:.2f}" for v in os.getloadavg())
        + "\n"
    )
    print("| backbone | " + " | ".join(cells) + " |")
    print("|---|" + "---|" * len(cells))
    for row in args.backbones:
        seconds = time_cells(row, cells, args.steps, args.rounds)
        cellsx = [f"{seconds['plain']:.4f}"]
        cellsx += [f"{seconds[c]:.4f} ({seconds[c] / seconds['plain']:.1f}x)" for c in cells[1:]]
        print(f"| {row} | " + " | ".join(cellsx) + " |", flush=True)
    print("\nload average after: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
