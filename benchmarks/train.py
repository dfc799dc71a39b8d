"""Training throughput (images/s) of every backbone at batch 128, against PyTorch eager.

Command (from the repository root)::

    .venv/bin/python benchmarks/train.py            # about 25 min on 2 CPU cores
    .venv/bin/python benchmarks/train.py --backbones vgg32 --allocators glibc   # about 4 min

Prints one table per allocator (glibc malloc; jemalloc by ``LD_PRELOAD`` of Debian's
``libjemalloc2`` when installed, configured as ``benchmarks/allocators.py`` says) with a row
per backbone -- the MLP and LeNet at the digits' 8x8x1, VGG32, WRN-16-4 and ResNet-18 at
32x32x3 -- and a column per method:

* ``dispatch``: the library's training dispatch (:func:`jacosr.step.make_train_dispatch`
  with ``dispatch_steps`` = ``--steps``: ``--steps`` steps in one ``lax.scan`` of that static
  length, as training runs between checkpoints) with the default convolution
  (``conv_impl="auto"``: the im2col weight gradient on CPU, XLA's on GPU); m-OvR loss, SGD
  momentum, weight decay; no augmentation and no rotation task, so each step is 128 images
  forward and backward.
* ``paper``: the same dispatch with the paper's recipe on image data sets, weak augmentation
  and the rotation task (lambda 0.1): each step is then 256 images forward and backward (the
  128 upright ones and their rotated copies). Its ``s/1k`` column is what one thousand steps
  of ``python -m jacosr.train`` cost on CIFAR-shaped data, evaluation and checkpoints aside.
* ``step-im2col`` / ``step-xla``: one jitted step (the same objective and optimiser, no scan)
  with the backbone's convolutions forced to :mod:`jacosr.models.conv`'s im2col rule or to
  XLA's own gradients. XLA's are not timed inside ``lax.scan``: there its CPU weight gradient
  is about a hundred times slower still (the ``--probe`` table).
* ``torch``: the same architecture in PyTorch eager (``torch`` optional, not a dependency),
  ``nn.CrossEntropyLoss`` and ``torch.optim.SGD`` with momentum and weight decay; on CUDA
  when torch sees a GPU (with ``cudnn.benchmark``, as training scripts set it), else on CPU.

Each cell is ``batch / step time``, the step time after one compiled warm-up (the median of
``--steps`` jitted steps, one dispatch of ``--steps`` steps, or for torch ``--steps`` steps
timed as one block after four warm-up steps), run in a fresh subprocess (so
allocators and compilation caches do not leak between cells) with a ``--timeout``. With
``--rounds R`` every row's cells run R times, interleaved, and the median is shown: other jobs
on a shared machine then slow every column alike. ``dispatch/torch`` is the ratio of the two
throughputs; ``s/1k dispatch`` and ``s/1k paper`` are seconds per 1000 steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from allocators import ENVIRONMENTS, allocator_envs

from jacosr.config import configure_xla

BATCH = 128
# backbone -> (image shape, embed_dim: the projection of MLP/LeNet, the natural width otherwise)
SHAPES = {
    "mlp": ((8, 8, 1), 128),
    "lenet": ((8, 8, 1), 128),
    "vgg32": ((32, 32, 3), 128),
    "wrn16_4": ((32, 32, 3), 256),
    "resnet18": ((32, 32, 3), 512),
}
CONV_IMPL_BACKBONES = ("vgg32", "wrn16_4", "resnet18")  # built on jacosr.models.conv.Conv
TORCH_BACKBONES = ("vgg32", "wrn16_4", "resnet18")
METHODS = ("dispatch", "paper", "step-im2col", "step-xla", "torch")


# ---------------------------------------------------------------------------------------------
# One cell, inside a child process


def _jax_cell(backbone: str, method: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jacosr.losses import loss_spec
    from jacosr.models import BACKBONES, ModelConfig, ModelState, OpenSetNet, split_model
    from jacosr.recipe import PAPER_SELF_SUP, TrainConfig, resolve
    from jacosr.step import TrainState, make_objective, make_optimizer, make_train_dispatch

    image_shape, embed_dim = SHAPES[backbone]
    paper = method == "paper"
    config = resolve(
        TrainConfig(
            model=ModelConfig(backbone=backbone, embed_dim=embed_dim),
            batch_size=BATCH,
            augment="weak" if paper else "none",
            self_sup=PAPER_SELF_SUP if paper else 0.0,
            dispatch_steps=steps,
        )
    )
    net = OpenSetNet(
        config.model,
        image_shape=image_shape,
        num_classes=6,
        head=loss_spec(config.loss.loss).head,
        rotation_head=config.self_sup > 0,
        rngs=nnx.Rngs(0),
    )
    if method.startswith("step-") and backbone in CONV_IMPL_BACKBONES:
        impl = method.removeprefix("step-")
        net.backbone = BACKBONES[backbone](image_shape, embed_dim, conv_impl=impl, rngs=nnx.Rngs(0))
    graphdef, model_state = split_model(net)
    optimizer = make_optimizer(config)
    state = TrainState(jnp.zeros((), jnp.int32), model_state, optimizer.init(model_state.params))
    rng = np.random.default_rng(0)
    n = 4 * BATCH
    train_x = jax.device_put(rng.integers(0, 256, (n, *image_shape), dtype=np.uint8))
    train_y = jax.device_put(rng.integers(0, 6, n).astype(np.int32))

    if method in ("dispatch", "paper"):
        dispatch = make_train_dispatch(graphdef, config, n)
        t0 = time.perf_counter()
        state, (loss, _, _) = dispatch(state, train_x, train_y, steps)  # NumPy: waits for it
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        state, (loss, _, _) = dispatch(state, train_x, train_y, steps)
        times = [(time.perf_counter() - t0) / steps]
    else:
        objective = make_objective(graphdef, config)

        @jax.jit
        def step(state, x, y, key):
            params, stats = state.model
            (loss, (stats, _)), grads = jax.value_and_grad(objective, has_aux=True)(
                params, stats, x, y, key
            )
            updates, opt_state = optimizer.update(grads, state.opt_state, params)
            params = optax.apply_updates(params, updates)
            return TrainState(state.step + 1, ModelState(params, stats), opt_state), loss

        x = (train_x[:BATCH].astype(jnp.float32) / 127.5) - 1.0
        y = train_y[:BATCH]
        t0 = time.perf_counter()
        state, loss = step(state, x, y, jax.random.key(0))
        loss.block_until_ready()
        first = time.perf_counter() - t0
        times = []
        for i in range(steps):
            t0 = time.perf_counter()
            state, loss = step(state, x, y, jax.random.key(i + 1))
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
    if not np.isfinite(float(jnp.ravel(loss)[-1])):
        raise FloatingPointError(f"{backbone} {method}: non-finite loss")
    return {"first_call_s": first, "step_s": statistics.median(times)}


def _torch_model(backbone: str):
    """The reference PyTorch architectures (counts: tests/test_backbones.py)."""
    import torch.nn as nn
    import torch.nn.functional as F

    class VGG32(nn.Module):  # ARPL's classifier32
        def __init__(self):
            super().__init__()
            layers = [(3, 64, 1), (64, 64, 1), (64, 128, 2)] + [(128, 128, 1)] * 2
            layers += [(128, 128, 2)] + [(128, 128, 1)] * 2 + [(128, 128, 2)]
            mods = []
            for i, (a, b, s) in enumerate(layers):
                if i in (0, 3, 6):
                    mods.append(nn.Dropout2d(0.2))
                mods += [nn.Conv2d(a, b, 3, s, 1, bias=False), nn.BatchNorm2d(b)]
                mods.append(nn.LeakyReLU(0.2))
            self.features = nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.fc = nn.Linear(128, 6)

        def forward(self, x):
            return self.fc(self.features(x))

    class PreAct(nn.Module):  # WRN block
        def __init__(self, a, b, s):
            super().__init__()
            self.bn1, self.bn2 = nn.BatchNorm2d(a), nn.BatchNorm2d(b)
            self.conv1 = nn.Conv2d(a, b, 3, s, 1, bias=False)
            self.conv2 = nn.Conv2d(b, b, 3, 1, 1, bias=False)
            proj = a != b or s != 1
            self.short = nn.Conv2d(a, b, 1, s, 0, bias=False) if proj else None

        def forward(self, x):
            a = F.relu(self.bn1(x))
            h = self.conv2(F.relu(self.bn2(self.conv1(a))))
            return h + (self.short(a) if self.short is not None else x)

    class Basic(nn.Module):  # ResNet block
        def __init__(self, a, b, s):
            super().__init__()
            self.conv1 = nn.Conv2d(a, b, 3, s, 1, bias=False)
            self.conv2 = nn.Conv2d(b, b, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(b), nn.BatchNorm2d(b)
            proj = a != b or s != 1
            self.short = (
                nn.Sequential(nn.Conv2d(a, b, 1, s, bias=False), nn.BatchNorm2d(b))
                if proj
                else nn.Identity()
            )

        def forward(self, x):
            h = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(h + self.short(x))

    def residual(stem, block, widths, strides, per_stage, head):
        mods, c = list(stem), stem[0].out_channels
        for w, s in zip(widths, strides, strict=True):
            for i in range(per_stage):
                mods.append(block(c, w, s if i == 0 else 1))
                c = w
        return nn.Sequential(
            *mods, *head(c), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 6)
        )

    if backbone == "vgg32":
        return VGG32()
    if backbone == "wrn16_4":
        stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
        head = lambda c: [nn.BatchNorm2d(c), nn.ReLU()]
        return residual(stem, PreAct, (64, 128, 256), (1, 2, 2), 2, head)
    stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    return residual(stem, Basic, (64, 128, 256, 512), (1, 2, 2, 2), 2, lambda c: [])


def _torch_cell(backbone: str, steps: int) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    model = _torch_model(backbone).train().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    h, w, c = SHAPES[backbone][0]
    x = (torch.rand(BATCH, c, h, w) * 2 - 1).to(device)
    y = torch.randint(0, 6, (BATCH,)).to(device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):  # allocation and cuDNN's algorithm search
        step()
    float(step())
    # One host synchronisation per timed block of steps, as the JAX dispatch has.
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    float(loss)
    return {"first_call_s": None, "step_s": (time.perf_counter() - t0) / steps}


def _probe_cell() -> dict:
    """XLA's and the im2col weight gradient of one 3x3 conv layer, outside and inside scan."""
    import jax
    import jax.numpy as jnp

    from jacosr.models.conv import conv2d

    x = jax.random.normal(jax.random.key(0), (32, 16, 16, 64))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 64, 64)) * 0.05
    out = {}
    for impl in ("xla", "im2col"):
        grad = jax.grad(lambda k, impl=impl: jnp.sum(conv2d(x, k, padding=1, impl=impl) ** 2))
        fns = {
            "jit": jax.jit(grad),
            "scan": jax.jit(
                lambda k, g=grad: jax.lax.scan(lambda c, _: (g(c), None), k, None, 1)[0]
            ),
        }
        for where, fn in fns.items():
            fn(kernel).block_until_ready()
            t0 = time.perf_counter()
            fn(kernel).block_until_ready()
            out[f"{impl}-{where}"] = time.perf_counter() - t0
    return out


def child(args) -> None:
    if args.method == "probe":
        result = _probe_cell()
    elif args.method == "torch":
        result = _torch_cell(args.backbone, args.steps)
    else:
        result = _jax_cell(args.backbone, args.method, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per cell, then the tables


def _applies(backbone: str, method: str, have_torch: bool) -> bool:
    if method == "torch":
        return have_torch and backbone in TORCH_BACKBONES
    if method in ("step-im2col", "paper"):
        return backbone in CONV_IMPL_BACKBONES
    if method == "step-xla":
        return backbone in (*CONV_IMPL_BACKBONES, "lenet")  # LeNet's nnx.Conv is XLA's
    return True


def _run_cell(backbone, method, allocator, args) -> dict | str:
    env = os.environ | ENVIRONMENTS[allocator]
    cmd = [sys.executable, __file__, "--child", "--backbone", backbone, "--method", method]
    cmd += ["--steps", str(args.steps)]
    try:
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=args.timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return f">{args.timeout}s"
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line.removeprefix("RESULT "))
    sys.stderr.write(proc.stderr[-2000:])
    return "error"


def _median(results: list) -> dict | str:
    """The median step time of the rounds that finished, or the first failure's text."""
    timed = [r["step_s"] for r in results if isinstance(r, dict)]
    return {"step_s": statistics.median(timed)} if timed else results[0]


def _fmt(cell) -> str:
    if isinstance(cell, str):
        return cell
    return f"{BATCH / cell['step_s']:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--allocators", nargs="+", default=list(ENVIRONMENTS), choices=list(ENVIRONMENTS)
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of each row")
    parser.add_argument("--probe", action="store_true", help="also time one layer's gradient")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--backbone", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_xla()  # the entry points' XLA flags, inherited by every child process
    if args.child:
        return child(args)

    try:
        import torch

        have_torch = True
        torch_version = f"{torch.__version__} on {'cuda' if torch.cuda.is_available() else 'cpu'}"
    except ImportError:
        have_torch, torch_version = False, "not installed"
    import jax

    allocators = list(allocator_envs(args.allocators))
    print(
        f"jax {jax.__version__} on {jax.default_backend()} ({jax.devices()[0].device_kind}), "
        f"{os.cpu_count()} CPU cores; torch {torch_version}; batch {BATCH}; images/s "
        f"({args.steps} timed steps per cell, median of {args.rounds} interleaved rounds)\n"
    )
    for allocator in allocators:
        per_1k = [m for m in ("dispatch", "paper") if m in args.methods]
        header = ["backbone", *args.methods, "dispatch/torch", *(f"s/1k {m}" for m in per_1k)]
        print(f"allocator: {allocator}")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for backbone in args.backbones:
            methods = [m for m in args.methods if _applies(backbone, m, have_torch)]
            runs = {m: [] for m in methods}
            for _ in range(args.rounds):
                for m in methods:
                    runs[m].append(_run_cell(backbone, m, allocator, args))
            cells = {m: _median(runs.get(m, ["-"])) for m in args.methods}
            d, t = cells.get("dispatch"), cells.get("torch")
            timed = isinstance(d, dict) and isinstance(t, dict)
            ratio = f"{t['step_s'] / d['step_s']:.2f}" if timed else "-"
            seconds = [
                f"{1000 * cells[m]['step_s']:.1f}" if isinstance(cells[m], dict) else "-"
                for m in per_1k
            ]
            row = [backbone, *(_fmt(cells[m]) for m in args.methods), ratio, *seconds]
            print("| " + " | ".join(row) + " |", flush=True)
        print()
    if args.probe:
        probe = _run_cell("vgg32", "probe", allocators[0], args)
        if isinstance(probe, dict):
            print("one layer's kernel gradient (32x16x16x64, 3x3 -> 64), seconds:")
            for key, seconds in probe.items():
                print(f"  {key:12s} {seconds:.3f}")


if __name__ == "__main__":
    main()
