"""Training throughput (images/s) of every backbone at batch 128, against PyTorch eager.

Command (from the repository root)::

    .venv/bin/python benchmarks/train.py            # every method, both allocators
    .venv/bin/python benchmarks/train.py --methods dispatch torch --allocators glibc --rounds 3
    .venv/bin/python benchmarks/train.py --backbones lenet28 vgg32 --methods dispatch torch

Prints one table per allocator (glibc malloc; jemalloc by ``LD_PRELOAD`` of Debian's
``libjemalloc2`` when installed, configured as ``benchmarks/allocators.py`` says) with a row
per backbone and image shape -- the MLP and LeNet at the digits' 8x8x1, LeNet at MNIST's
28x28x1 and at 32x32x1 (MNIST resized, as the paper's protocol has it), VGG32, WRN-16-4 and
ResNet-18 at 32x32x3 -- and a column per method:

* ``dispatch``: the library's training dispatch (:func:`jacosr.step.make_train_dispatch`
  with ``dispatch_steps`` = ``--steps``: ``--steps`` steps in one ``lax.scan`` of that static
  length, as training runs between checkpoints) with the default convolution
  (``conv_impl="auto"``: :mod:`jacosr.models.conv`'s derivatives on CPU, XLA's on GPU) and
  the entry points' XLA flags (:func:`jacosr.config.configure_xla`); m-OvR loss, SGD
  momentum, weight decay; no augmentation and no rotation task, so each step is 128 images
  forward and backward.
* ``paper``: the same dispatch with the paper's recipe on image data sets, weak augmentation
  and the rotation task (lambda 0.1): each step is then 256 images forward and backward (the
  128 upright ones and their rotated copies). Its ``s/1k`` column is what one thousand steps
  of ``python -m jacosr.train`` cost on CIFAR-shaped data, evaluation and checkpoints aside.
* ``step-im2col`` / ``step-xla``: one jitted step (the same objective and optimiser, no scan)
  with the backbone's convolutions forced to :mod:`jacosr.models.conv`'s rule or to XLA's own
  derivatives. XLA's are not timed inside the dispatch's loop, where XLA runs its CPU weight
  gradient on a slow generic path (the ``--probe`` table).
* ``torch``: the same architecture in PyTorch eager (``torch`` optional, not a dependency),
  ``nn.CrossEntropyLoss`` and ``torch.optim.SGD`` with momentum and weight decay; on CUDA
  when torch sees a GPU (with ``cudnn.benchmark``, as training scripts set it), else on CPU
  with as many threads as there are cores.

Each cell is ``batch / step time``, the step time after one compiled warm-up (the median of
``--steps`` jitted steps, one dispatch of ``--steps`` steps, or for torch ``--steps`` steps
timed as one block after four warm-up steps), run in a fresh subprocess (so
allocators and compilation caches do not leak between cells) with a ``--timeout``. With
``--rounds R`` every row's cells run R times, interleaved, and the median is shown: other jobs
on a shared machine then slow every column alike. ``dispatch/torch`` is the median over the
rounds of the ratio of the two throughputs in the same round; ``s/1k dispatch`` and ``s/1k
paper`` are seconds per 1000 steps. The load average at the start and the end is printed: on
a loaded machine torch's OpenMP threads lose far more than XLA's, so compare on an idle one.

How close the step comes to the machine: ``% peak`` is XLA's FLOP count of one training step
(``cost_analysis`` of the jitted step: forward, both gradients, the update) over the step
time of ``dispatch`` and of ``torch`` (the same architecture, so the same FLOPs), against a
float32 2048x2048 matrix product timed in the dispatch cell's process (``peak.py``, shared
with ``benchmarks/jacobian.py``); in brackets the dispatch's rate per CPU-second. ``CPU ms``
is the CPU time of one step, all threads: steadier than wall time when other jobs share the
cores (torch's OpenMP threads spin while they wait, which counts here too).
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
from peak import matmul_peak

from jacosr.config import configure_xla

BATCH = 128
# row -> (backbone, image shape, embed_dim: the projection of MLP/LeNet, the width otherwise)
ROWS = {
    "mlp": ("mlp", (8, 8, 1), 128),
    "lenet": ("lenet", (8, 8, 1), 128),
    "lenet28": ("lenet", (28, 28, 1), 128),
    "lenet32": ("lenet", (32, 32, 1), 128),
    "vgg32": ("vgg32", (32, 32, 3), 128),
    "wrn16_4": ("wrn16_4", (32, 32, 3), 256),
    "resnet18": ("resnet18", (32, 32, 3), 512),
}
CONV_IMPL_BACKBONES = ("vgg32", "wrn16_4", "resnet18")  # take a conv_impl argument
TORCH_BACKBONES = ("lenet", "vgg32", "wrn16_4", "resnet18")
METHODS = ("dispatch", "paper", "step-im2col", "step-xla", "torch")


# ---------------------------------------------------------------------------------------------
# One cell, inside a child process


def _jax_cell(row: str, method: str, steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    from flax import nnx

    from jacosr.losses import loss_spec
    from jacosr.models import BACKBONES, ModelConfig, ModelState, OpenSetNet, split_model
    from jacosr.recipe import PAPER_SELF_SUP, TrainConfig, resolve
    from jacosr.step import TrainState, make_objective, make_optimizer, make_train_dispatch

    backbone, image_shape, embed_dim = ROWS[row]
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
    if method.startswith("step-"):
        kwargs = {"width": config.model.width} if backbone == "lenet" else {}
        impl = method.removeprefix("step-")
        net.backbone = BACKBONES[backbone](
            image_shape, embed_dim, conv_impl=impl, rngs=nnx.Rngs(0), **kwargs
        )
    graphdef, model_state = split_model(net)
    optimizer = make_optimizer(config)
    state = TrainState(jnp.zeros((), jnp.int32), model_state, optimizer.init(model_state.params))
    rng = np.random.default_rng(0)
    n = 4 * BATCH
    train_x = jax.device_put(rng.integers(0, 256, (n, *image_shape), dtype=np.uint8))
    train_y = jax.device_put(rng.integers(0, 6, n).astype(np.int32))
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
    out = {}
    if method in ("dispatch", "paper"):
        dispatch = make_train_dispatch(graphdef, config, n)
        t0 = time.perf_counter()
        state, (loss, _, _) = dispatch(state, train_x, train_y, steps)  # NumPy: waits for it
        out["first_call_s"] = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        state, (loss, _, _) = dispatch(state, train_x, train_y, steps)
        out["step_s"] = (time.perf_counter() - t0) / steps
        out["cpu_s"] = (time.process_time() - c0) / steps
        if method == "dispatch":
            # the FLOPs of one step (the dispatch runs exactly this step, plus a batch gather)
            lowered = step.lower(state, x, y, jax.random.key(0))
            out["flops"] = float(lowered.cost_analysis()["flops"])
            out["peak_wall"], out["peak_cpu"] = matmul_peak()
    else:
        t0 = time.perf_counter()
        state, loss = step(state, x, y, jax.random.key(0))
        loss.block_until_ready()
        out["first_call_s"] = time.perf_counter() - t0
        times, cpu = [], []
        for i in range(steps):
            t0, c0 = time.perf_counter(), time.process_time()
            state, loss = step(state, x, y, jax.random.key(i + 1))
            loss.block_until_ready()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
        out["step_s"], out["cpu_s"] = statistics.median(times), statistics.median(cpu)
    if not np.isfinite(float(jnp.ravel(loss)[-1])):
        raise FloatingPointError(f"{row} {method}: non-finite loss")
    return out


def _torch_model(backbone: str, image_shape: tuple[int, int, int]):
    """The reference PyTorch architectures (counts: tests/test_backbones.py), and
    jacosr.models.LeNet's for ``image_shape``."""
    import torch.nn as nn
    import torch.nn.functional as F

    def lenet():  # jacosr.models.LeNet: its 2x2 max-pool pads odd sides, as ceil_mode does
        h, w, c = image_shape
        flat = 64 * ((h + 3) // 4) * ((w + 3) // 4)
        mods = []
        for a, b in ((c, 32), (32, 64)):
            mods += [nn.Conv2d(a, b, 5, 1, 2, bias=False), nn.BatchNorm2d(b), nn.ReLU()]
            mods.append(nn.MaxPool2d(2, ceil_mode=True))
        mods += [nn.Flatten(), nn.Linear(flat, 256), nn.BatchNorm1d(256), nn.ReLU()]
        return nn.Sequential(*mods, nn.Linear(256, 128), nn.Linear(128, 6))

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

    if backbone == "lenet":
        return lenet()
    if backbone == "vgg32":
        return VGG32()
    if backbone == "wrn16_4":
        stem = [nn.Conv2d(3, 16, 3, 1, 1, bias=False)]
        head = lambda c: [nn.BatchNorm2d(c), nn.ReLU()]
        return residual(stem, PreAct, (64, 128, 256), (1, 2, 2), 2, head)
    stem = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
    return residual(stem, Basic, (64, 128, 256, 512), (1, 2, 2, 2), 2, lambda c: [])


def _torch_cell(row: str, steps: int) -> dict:
    import torch

    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    backbone, (h, w, c), _ = ROWS[row]
    model = _torch_model(backbone, (h, w, c)).train().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
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
    float(step().detach())
    # One host synchronisation per timed block of steps, as the JAX dispatch has.
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        loss = step()
    float(loss.detach())
    return {
        "first_call_s": None,
        "step_s": (time.perf_counter() - t0) / steps,
        "cpu_s": (time.process_time() - c0) / steps,
    }


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
        result = _torch_cell(args.row, args.steps)
    else:
        result = _jax_cell(args.row, args.method, args.steps)
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: one subprocess per cell, then the tables


def _applies(row: str, method: str, have_torch: bool) -> bool:
    backbone = ROWS[row][0]
    if method == "torch":
        return have_torch and backbone in TORCH_BACKBONES
    if method == "paper":
        return backbone in CONV_IMPL_BACKBONES
    if method.startswith("step-"):
        return backbone != "mlp"
    return True


def _run_cell(row, method, allocator, args) -> dict | str:
    env = os.environ | ENVIRONMENTS[allocator]
    cmd = [sys.executable, __file__, "--child", "--row", row, "--method", method]
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
    """Each number's median over the rounds that finished, or the first failure's text."""
    done = [r for r in results if isinstance(r, dict)]
    if not done:
        return results[0]
    keys = [k for k, v in done[0].items() if isinstance(v, float)]
    return {k: statistics.median(r[k] for r in done) for k in keys}


def _ratio(dispatch: list, torch: list) -> str:
    """The median over rounds of torch's step time over the dispatch's in the same round (the
    two ran back to back, so a busy spell of the machine slows both)."""
    pairs = [
        t["step_s"] / d["step_s"]
        for d, t in zip(dispatch, torch, strict=False)
        if isinstance(d, dict) and isinstance(t, dict)
    ]
    return f"{statistics.median(pairs):.2f}" if pairs else "-"


def _fmt(cell) -> str:
    return cell if isinstance(cell, str) else f"{BATCH / cell['step_s']:.1f}"


def _peak(cells: dict) -> list[str]:
    """% of the matmul peak of the dispatch (wall, and per CPU-second) and of torch (wall)."""
    d, t = cells.get("dispatch"), cells.get("torch")
    if not isinstance(d, dict) or "flops" not in d:
        return ["-", "-"]
    ours = f"{d['flops'] / d['step_s'] / d['peak_wall']:.0%} "
    ours += f"({d['flops'] / d['cpu_s'] / d['peak_cpu']:.0%})"
    theirs = f"{d['flops'] / t['step_s'] / d['peak_wall']:.0%}" if isinstance(t, dict) else "-"
    return [ours, theirs]


def _cpu_ms(cell) -> str:
    return f"{1000 * cell['cpu_s']:.0f}" if isinstance(cell, dict) and "cpu_s" in cell else "-"


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", nargs="+", default=list(ROWS), choices=list(ROWS))
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument(
        "--allocators", nargs="+", default=list(ENVIRONMENTS), choices=list(ENVIRONMENTS)
    )
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repeats of each row")
    parser.add_argument("--probe", action="store_true", help="also time one layer's gradient")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--row", help=argparse.SUPPRESS)
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
        f"({args.steps} timed steps per cell, median of {args.rounds} interleaved rounds); "
        f"load average at start {_load()}\n"
    )
    for allocator in allocators:
        per_1k = [m for m in ("dispatch", "paper") if m in args.methods]
        header = ["backbone", "image", *args.methods, "dispatch/torch"]
        header += ["% peak dispatch", "% peak torch", "CPU ms dispatch", "CPU ms torch"]
        header += [f"s/1k {m}" for m in per_1k]
        print(f"allocator: {allocator}")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for name in args.backbones:
            methods = [m for m in args.methods if _applies(name, m, have_torch)]
            runs = {m: [] for m in methods}
            for _ in range(args.rounds):
                for m in methods:
                    runs[m].append(_run_cell(name, m, allocator, args))
            cells = {m: _median(runs.get(m, ["-"])) for m in args.methods}
            ratio = _ratio(runs.get("dispatch", []), runs.get("torch", []))
            seconds = [
                f"{1000 * cells[m]['step_s']:.1f}" if isinstance(cells[m], dict) else "-"
                for m in per_1k
            ]
            backbone, shape, _ = ROWS[name]
            row = [backbone, "x".join(map(str, shape)), *(_fmt(cells[m]) for m in args.methods)]
            row += [
                ratio,
                *_peak(cells),
                _cpu_ms(cells.get("dispatch")),
                _cpu_ms(cells.get("torch")),
            ]
            print("| " + " | ".join(row + seconds) + " |", flush=True)
        print()
    print(f"load average at end {_load()}")
    if args.probe:
        probe = _run_cell("vgg32", "probe", allocators[0], args)
        if isinstance(probe, dict):
            print("one layer's kernel gradient (32x16x16x64, 3x3 -> 64), seconds:")
            for key, seconds in probe.items():
                print(f"  {key:12s} {seconds:.3f}")


if __name__ == "__main__":
    main()
