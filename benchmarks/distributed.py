"""Data-parallel training and sharded Jacobian norms: throughput on 1, 2, 4, ... devices.

Command (from the repository root)::

    .venv/bin/python benchmarks/distributed.py                     # CPU: 1, 2, 4 forced devices
    .venv/bin/python benchmarks/distributed.py --backbone vgg32 --image-size 32 --channels 3
    python benchmarks/distributed.py --devices 1 2 4 8             # on a machine with 8 GPUs

The first command takes about 25 s on 2 CPU cores (load 1.9; 100 s at load 6). Each device
count runs in a fresh subprocess of this script: on CPU with
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` (the N "devices" share the same cores,
so the table shows the overhead of the mesh -- the gradient all-reduce, the sharded gather --
and never a speed-up); on accelerators with the first N devices visible
(``CUDA_VISIBLE_DEVICES``). One device is the plain path (no mesh).

Rows: ``train img/s``, images per second through :func:`jacosr.step.make_train_dispatch` at
the global ``--batch-size`` (``--steps`` steps per dispatch, compiled first, then ``--repeats``
dispatches timed); ``jacobian samples/s``, exact per-sample Jacobian norms
(:func:`jacosr.jacobian.jacobian_norms`) of ``--samples`` inputs, compiled first (one call),
then timed; and each one's CPU seconds (user + system, all threads, of the subprocess during
the timed part), steadier than wall time when other jobs share the machine. The model is at
initialisation (throughput does not depend on the weights); the data are random images of
``--image-size`` x ``--image-size`` x ``--channels`` with 6 classes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHILD = "--child"


def measure(args: argparse.Namespace) -> dict:
    """In the child: the two throughputs on every visible device."""
    import jax
    import numpy as np

    from jacosr.distributed import data_mesh, put_replicated
    from jacosr.jacobian import jacobian_norms
    from jacosr.models import ModelConfig, embedding_apply
    from jacosr.recipe import TrainConfig
    from jacosr.recipe import resolve as resolve_config
    from jacosr.step import ModelInputs, init_train_state, make_train_dispatch

    shape = (args.image_size, args.image_size, args.channels)
    rng = np.random.default_rng(0)
    n = 50 * args.batch_size
    train_x = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
    train_y = rng.integers(0, 6, n).astype(np.int32)
    config = resolve_config(
        TrainConfig(
            model=ModelConfig(backbone=args.backbone),
            steps=args.steps * (args.repeats + 1),
            batch_size=args.batch_size,
            dispatch_steps=args.steps,
            augment="none",
            self_sup=0.0,
        )
    )
    graphdef, state = init_train_state(config, ModelInputs(shape, 6))
    mesh = data_mesh()
    place = jax.device_put if mesh is None else (lambda t: put_replicated(t, mesh))
    state, train = place(state), (place(train_x), place(train_y))
    dispatch = make_train_dispatch(graphdef, config, n)
    state, _ = dispatch(state, *train, args.steps)  # compiles
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(args.repeats):
        state, _ = dispatch(state, *train, args.steps)
    images = args.repeats * args.steps * args.batch_size
    train_wall, train_cpu = time.perf_counter() - wall, time.process_time() - cpu

    xs = (rng.random((args.samples, *shape), dtype=np.float32) * 2 - 1).astype(np.float32)
    f = embedding_apply(graphdef)
    jacobian_norms(f, xs, params=state.model)  # compiles
    cpu, wall = time.process_time(), time.perf_counter()
    jacobian_norms(f, xs, params=state.model)
    jac_wall, jac_cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "devices": len(jax.devices()),
        "platform": jax.devices()[0].platform,
        "train": images / train_wall,
        "train_cpu": train_cpu / images * 1e3,
        "jacobian": args.samples / jac_wall,
        "jacobian_cpu": jac_cpu / args.samples * 1e3,
    }


def child_env(devices: int, platform: str) -> dict:
    env = dict(os.environ)
    if platform == "cpu":
        env["JAX_PLATFORMS"] = "cpu"
        flag = f"--xla_force_host_platform_device_count={devices}"
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    else:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, range(devices)))
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--backbone", default="mlp")
    parser.add_argument("--image-size", type=int, default=8)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50, help="steps per timed dispatch")
    parser.add_argument("--repeats", type=int, default=4, help="timed dispatches")
    parser.add_argument("--samples", type=int, default=512, help="samples of the Jacobian row")
    parser.add_argument(CHILD, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from jacosr.config import configure_xla

        configure_xla()
        print(json.dumps(measure(args)))
        return
    import jax

    platform = jax.default_backend()
    argv = list(sys.argv[1:])
    rows = []
    for devices in args.devices:
        done = subprocess.run(
            [sys.executable, __file__, *argv, CHILD],
            env=child_env(devices, platform),
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode != 0:
            sys.exit(f"{devices} devices failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load = os.getloadavg()[0]
    print(
        f"{args.backbone}, {args.image_size}x{args.image_size}x{args.channels}, global batch "
        f"{args.batch_size}; {rows[0]['platform']}; load average {load:.1f} on "
        f"{os.cpu_count()} cores\n"
    )
    print(
        "| devices | train img/s | train CPU ms/img | jacobian samples/s | jacobian CPU ms/sample |"
    )
    print("|--:|--:|--:|--:|--:|")
    for r in rows:
        print(
            f"| {r['devices']} | {r['train']:,.0f} | {r['train_cpu']:.3f} | "
            f"{r['jacobian']:,.0f} | {r['jacobian_cpu']:.3f} |"
        )


if __name__ == "__main__":
    main()
