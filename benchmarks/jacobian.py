"""Jacobian-norm engine: throughput, peak memory and accuracy, against PyTorch when installed.

Command (from the repository root)::

    .venv/bin/python benchmarks/jacobian.py                 # both allocators, 11 min on 2 cores
    .venv/bin/python benchmarks/jacobian.py --sizes quick   # fewer samples, no VGG32 forward
    python benchmarks/jacobian.py --sizes gpu --nets vgg32  # on one GPU (benchmarks/gpu.sh)

``--nets``, ``--groups`` and ``--allocators`` pick a subset; ``--sizes`` the samples per row.
LeNet's exact rows alone (about 1 min per allocator)::

    .venv/bin/python benchmarks/jacobian.py --nets lenet --groups exact_reverse exact_forward

Prints one table. Rows, for (a) the digits MLP (8x8x1 -> 128), (b) VGG32 (classifier32 on
32x32x3, d_z = 128) and (c) LeNet on MNIST-shaped 32x32x1 inputs (d = 1024, d_z = 128; exact
rows only), all at random init (``jacosr.models``, eval mode, ``embedding_apply``):
exact reverse and forward mode (:func:`jacosr.jacobian.jacobian_norms`), every stochastic
estimator (:func:`jacosr.jacobian.estimate_sqnorms`) at k = 1, 4, 16 probes, and -- when
``torch`` is importable (optional, not a dependency) -- ``torch.func.vmap(jacrev)`` (and
``vmap(jacfwd)`` on the MLP) and a per-sample ``torch.autograd`` loop on the same architecture
and weights (copied from the NNX model), so the JAX / PyTorch ratio comes from one run; torch
runs on CUDA when it sees a GPU. (d) ``mlp-trained``: the interp experiment's trained model
(digits MLP, m-OvR, 2000 steps, trained once by the parent before the rows) on the digits
test images, exact and stochastic rows only: a trained network's Jacobian has a lower
effective rank than a random one's, which changes the estimators' errors.

Columns: samples/s (wall), CPU seconds per sample (all threads; steadier than wall time when
other jobs share the machine), peak RSS during the row, and the median and 90th percentile of
``| estimate - exact | / exact`` for the norm ``||J||_F`` against exact reverse mode (for the
stochastic rows the estimate is ``sqrt`` of the unbiased estimate of ``||J||_F^2``). The exact
rows also give their FLOPs and how close they come to the machine's peak: ``GFLOP/sample`` is
XLA's count (``cost_analysis``) of the one-sample exact program (the forward pass and d_z VJPs
in reverse mode, d JVPs in forward mode; the chunked programs the driver runs recompute the
forward pass once per basis block, which is not counted); ``% peak`` is the achieved FLOP rate
against a float32 2048x2048 matrix product timed in the same process just before the row, by
wall time and, in brackets, by CPU time (FLOP per CPU-second of each; steadier when other jobs
share the cores, blind to idle cores).

Each allocator (glibc malloc; jemalloc by ``LD_PRELOAD`` of Debian's ``libjemalloc2``, when
installed, configured as ``benchmarks/allocators.py`` says) runs the whole set; each row group
runs in a fresh subprocess of this script, so a row's RSS is its own process's. Stochastic
rows use ``rbg`` PRNG keys: they compile in a fraction of the time of threefry keys on XLA
CPU, and the estimators' statistics do not depend on the bit generator.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from allocators import ENVIRONMENTS, allocator_envs
from peak import matmul_peak

from jacosr.config import configure_xla

ROW_TIMEOUT_S = 300
"""Seconds without a new row before a child is killed (its finished rows are kept). A guard:
XNysTrace rows used to hang for good in XLA CPU's concurrency-optimised scheduler, which
:func:`jacosr.config.configure_xla` (called by :func:`main`) now turns off."""
KS = (1, 4, 16)
STOCHASTIC = (
    ("hutchinson", "output", "rademacher"),
    ("hutchinson", "output", "sphere"),
    ("hutchinson", "output", "gaussian"),
    ("hutchinson", "input", "rademacher"),
    ("hutchinson", "input", "sphere"),
    ("hutchinson", "input", "gaussian"),
    ("xnystrace", "output", "gaussian"),
)


@dataclass(frozen=True)
class Sizes:
    """Samples per row: the MLP at two batch sizes, VGG32 as few as the time allows; which
    stochastic estimators run."""

    mlp_batches: tuple[int, ...] = (32, 1024)
    vgg_batch: int = 16
    vgg_forward_batch: int = 1
    lenet_batch: int = 64
    lenet_forward_batch: int = 2
    vgg_torch_vmap_batch: int = 8
    vgg_torch_loop_batch: int = 2
    min_seconds: float = 2.0
    stochastic: tuple[tuple[str, str, str], ...] = STOCHASTIC


SIZES = {
    "full": Sizes(),
    "quick": Sizes(
        vgg_batch=8,
        vgg_forward_batch=0,
        vgg_torch_loop_batch=1,
        lenet_batch=32,
        lenet_forward_batch=0,
        min_seconds=1.0,
    ),
    # One GPU: batches that fill it, and only the estimator the README recommends.
    "gpu": Sizes(
        mlp_batches=(1024, 4096),
        vgg_batch=512,
        vgg_forward_batch=64,
        lenet_batch=4096,
        lenet_forward_batch=64,
        vgg_torch_vmap_batch=64,
        vgg_torch_loop_batch=64,
        stochastic=(("hutchinson", "output", "rademacher"),),
    ),
}


# ---------------------------------------------------------------------------------------------
# Measuring one row (inside a child process)


class PeakRss:
    """Peak resident set size of this process while the block runs, sampled every 5 ms."""

    def __enter__(self):
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _watch(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(run, batch: int, min_seconds: float, warm=None) -> dict:
    """Time ``run()`` (returning ``[batch]`` norms) after one call of ``warm`` (default: ``run``
    itself, which compiles), repeating until ``min_seconds`` have passed; report the rate, the
    CPU time and the peak RSS of the timed calls."""
    (warm or run)()
    calls, norms = 0, None
    with PeakRss() as rss:
        wall, cpu = time.perf_counter(), time.process_time()
        while calls == 0 or time.perf_counter() - wall < min_seconds:
            norms = np.asarray(run())
            calls += 1
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {
        "samples_per_s": calls * batch / wall,
        "cpu_s_per_sample": cpu / (calls * batch),
        "peak_mb": rss.peak / 2**20,
        "norms": norms.tolist(),
    }


# ---------------------------------------------------------------------------------------------
# Models: the NNX model, its pure f, and the same weights in torch


def build(net: str, sizes: Sizes):
    """``(model, f, state, xs)``: random-init model, its eval-mode ``f(state, x) -> [128]``
    and state (the engine's ``params``), and as many inputs as ``sizes``' largest batch
    (digits repeated past the 1797 there are; uniform noise for VGG32 and LeNet)."""
    import jax
    from flax import nnx

    from jacosr.models import ModelConfig, OpenSetNet, embedding_apply, split_model

    if net == "mlp-trained":
        from jacosr.data import to_float
        from jacosr.runs import load_run

        _, data, graphdef, state = load_run(Path(os.environ[TRAINED_ENV]))
        test = np.concatenate([data.known_test.x, data.unknown_test.x])
        xs = np.asarray(to_float(np.resize(test, (max(sizes.mlp_batches), *test.shape[1:]))))
        return None, embedding_apply(graphdef), state, jax.numpy.asarray(xs)
    if net == "mlp":
        from sklearn.datasets import load_digits

        shape, config = (8, 8, 1), ModelConfig(backbone="mlp", embed_dim=128, width=256)
        digits = load_digits().images.astype(np.float32)
        n = max(sizes.mlp_batches)
        xs = (np.resize(digits, (n, 8, 8))[..., None] / 8.0 - 1.0).astype(np.float32)
    elif net == "lenet":
        shape, config = (32, 32, 1), ModelConfig(backbone="lenet", embed_dim=128, width=256)
        n = max(sizes.lenet_batch, sizes.lenet_forward_batch)
        xs = np.random.default_rng(0).uniform(-1, 1, (n, *shape)).astype(np.float32)
    else:
        shape, config = (32, 32, 3), ModelConfig(backbone="vgg32", embed_dim=128)
        n = max(sizes.vgg_batch, sizes.vgg_torch_vmap_batch, sizes.vgg_torch_loop_batch)
        xs = np.random.default_rng(0).uniform(-1, 1, (n, *shape)).astype(np.float32)
    model = OpenSetNet(config, image_shape=shape, num_classes=10, head="linear", rngs=nnx.Rngs(0))
    graphdef, state = split_model(model)
    return model, embedding_apply(graphdef), state, jax.numpy.asarray(xs)


def torch_twin(model, net: str, device):
    """The NNX backbone rebuilt in torch (eval mode, on ``device``) with the same weights:
    ``x: [B, ...] -> [B, 128]`` on NHWC inputs, as the JAX model takes them."""
    import torch

    def t(a):
        return torch.from_numpy(np.array(a[...], dtype=np.float32))

    def batchnorm(bn):
        m = torch.nn.BatchNorm2d if net == "vgg32" else torch.nn.BatchNorm1d
        layer = m(bn.scale.shape[0], eps=bn.epsilon)
        layer.weight.data, layer.bias.data = t(bn.scale), t(bn.bias)
        layer.running_mean.data, layer.running_var.data = t(bn.mean), t(bn.var)
        return layer

    bb = model.backbone
    layers = []
    if net == "mlp":
        layers.append(torch.nn.Flatten())
        for linear, bn in zip(bb.hidden, bb.norms, strict=True):
            lin = torch.nn.Linear(*linear.kernel.shape)
            lin.weight.data, lin.bias.data = t(linear.kernel).T.contiguous(), t(linear.bias)
            layers += [lin, batchnorm(bn), torch.nn.ReLU()]
        out = torch.nn.Linear(*bb.out.kernel.shape)
        out.weight.data, out.bias.data = t(bb.out.kernel).T.contiguous(), t(bb.out.bias)
        layers.append(out)
        body = torch.nn.Sequential(*layers)
        to_torch = lambda x: x  # flattening NHWC matches JAX's reshape
    else:
        for conv, bn in zip(bb.convs, bb.norms, strict=True):
            kh, _, ci, co = conv.kernel.shape
            c = torch.nn.Conv2d(ci, co, kh, conv.stride, conv.padding, bias=False)
            c.weight.data = t(conv.kernel).permute(3, 2, 0, 1).contiguous()
            layers += [c, batchnorm(bn), torch.nn.LeakyReLU(0.2)]
        layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()]
        body = torch.nn.Sequential(*layers)
        to_torch = lambda x: x.permute(0, 3, 1, 2)
    body.eval().to(device)
    for p in body.parameters():
        p.requires_grad_(False)
    return lambda x: body(to_torch(x))


# ---------------------------------------------------------------------------------------------
# Row groups (each a child process)


def exact_flops(f, state, x, mode: str) -> float:
    """XLA's FLOP count of the exact squared norm of ONE sample ``x`` (the whole basis: the
    forward pass and d_z VJPs or d JVPs), from the lowered program (nothing is compiled)."""
    import jax

    from jacosr import jacobian

    kernel = jax.jit(lambda p, xs: jacobian.exact_sqnorms(f, xs, params=p, mode=mode))
    return float(kernel.lower(state, x[None]).cost_analysis()["flops"])


EXACT_BATCHES = {
    ("mlp", "reverse"): lambda s: s.mlp_batches,
    ("mlp", "forward"): lambda s: s.mlp_batches,
    ("mlp-trained", "reverse"): lambda s: s.mlp_batches,
    ("vgg32", "reverse"): lambda s: (s.vgg_batch,),
    ("vgg32", "forward"): lambda s: (s.vgg_forward_batch,) if s.vgg_forward_batch else (),
    ("lenet", "reverse"): lambda s: (s.lenet_batch,),
    ("lenet", "forward"): lambda s: (s.lenet_forward_batch,) if s.lenet_forward_batch else (),
}


def rows_exact(net: str, mode: str, sizes: Sizes, **_):
    import jax

    from jacosr import jacobian

    _, f, state, xs = build(net, sizes)
    flops = exact_flops(f, state, xs[0], mode)
    for b in EXACT_BATCHES[net, mode](sizes):
        run = lambda b=b: jacobian.jacobian_norms(f, xs[:b], params=state, mode=mode)
        # On CPU the conv nets run one sample per call, so one sample compiles what the batch
        # uses.
        one = net in ("vgg32", "lenet") and jax.default_backend() == "cpu"
        warm = (lambda run=run: run(1)) if one else None
        peak_wall, peak_cpu = matmul_peak()
        row = measure(run, b, sizes.min_seconds, warm)
        row |= {
            "gflop_per_sample": flops / 1e9,
            "peak_wall": flops * row["samples_per_s"] / peak_wall,
            "peak_cpu": flops / row["cpu_s_per_sample"] / peak_cpu,
        }
        yield {"method": f"jax exact {mode}", "k": "", "batch": b} | row


def rows_stochastic(net: str, sizes: Sizes, **_):
    import jax

    from jacosr import jacobian

    _, f, state, xs = build(net, sizes)
    b = sizes.vgg_batch if net == "vgg32" else sizes.mlp_batches[-1]
    key = jax.random.key(0, impl="rbg")
    for estimator, side, probes in sizes.stochastic:
        for k in KS:
            if estimator == "xnystrace" and k < 2:
                continue
            # One chunk of the whole batch (a few MB to 300 MB here): one compile per row
            # instead of the planner's two; the exact rows exercise the planner.
            kw = dict(estimator=estimator, side=side, probes=probes, num_probes=k, chunk_size=b)
            run = lambda kw=kw: np.sqrt(
                jacobian.estimate_sqnorms(f, xs[:b], key, params=state, **kw)[0]
            )
            method = f"jax {estimator} {side} {probes}"
            yield {"method": method, "k": k, "batch": b} | measure(run, b, sizes.min_seconds)


def rows_torch(net: str, sizes: Sizes, **_):
    try:
        import torch
    except ImportError:
        return
    # On CUDA when torch sees a GPU (torch's own wheel on the GPU machine), else on the CPU.
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, _, _, xs = build(net, sizes)
    body = torch_twin(model, net, device)
    xt = torch.from_numpy(np.array(xs)).to(device)
    one = lambda x: body(x[None])[0]
    eye = torch.eye(128, device=device)

    def func(transform):
        def make(b):
            def run():
                jac = torch.func.vmap(transform(one))(xt[:b])
                return jac.pow(2).flatten(1).sum(1).sqrt().cpu().numpy()

            return run

        return make

    def autograd_loop(b):
        """Per sample: the sample repeated d_z times as a batch, one backward pass with the
        identity as cotangents (row i of the input gradient is row i of J)."""

        def run():
            out = []
            for x in xt[:b]:
                xr = x[None].repeat(128, *([1] * x.dim())).requires_grad_(True)
                (g,) = torch.autograd.grad(body(xr), xr, eye)
                out.append(float(g.pow(2).sum().sqrt()))
            return np.array(out)

        return run

    if net == "mlp":
        cases = [
            (name, make, b)
            for name, make in (
                ("torch.func vmap(jacrev)", func(torch.func.jacrev)),
                ("torch.func vmap(jacfwd)", func(torch.func.jacfwd)),
                ("torch autograd loop", autograd_loop),
            )
            for b in sizes.mlp_batches
        ]
    else:
        cases = [
            ("torch.func vmap(jacrev)", func(torch.func.jacrev), sizes.vgg_torch_vmap_batch),
            ("torch autograd loop", autograd_loop, sizes.vgg_torch_loop_batch),
        ]
    for method, make, b in cases:
        # torch compiles nothing: one warm-up sample sets up its thread pools and caches.
        row = measure(make(b), b, sizes.min_seconds, warm=make(1))
        yield {"method": method, "k": "", "batch": b} | row


GROUPS = {
    "exact_reverse": lambda **kw: rows_exact(mode="reverse", **kw),
    "exact_forward": lambda **kw: rows_exact(mode="forward", **kw),
    "stochastic": rows_stochastic,
    "torch": rows_torch,
}
# Each net and the row groups it runs: the trained MLP measures the estimators' error only.
NETS = {
    "mlp": tuple(GROUPS),
    "vgg32": tuple(GROUPS),
    "lenet": ("exact_reverse", "exact_forward"),
    "mlp-trained": ("exact_reverse", "stochastic"),
}
TRAINED_ENV = "JACOSR_BENCH_TRAINED_WORKDIR"


def train_digits_mlp(workdir: Path) -> str:
    """Train the interp experiment's model (digits MLP, m-OvR, 2000 steps) into ``workdir``."""
    from jacosr.data import load_open_set
    from jacosr.experiments.interp import InterpConfig
    from jacosr.train import fit

    print("training the digits MLP for the trained-model rows", file=sys.stderr, flush=True)
    config = InterpConfig().train
    fit(config, load_open_set(config.data), workdir, progress=False)
    return str(workdir)


def child(net: str, group: str, sizes: str) -> None:
    """Run one row group and print one JSON object per row."""
    for row in GROUPS[group](net=net, sizes=SIZES[sizes]):
        print(json.dumps({"net": net} | row), flush=True)


# ---------------------------------------------------------------------------------------------
# The parent: every allocator, every net, every group; then one table


def run_child(net: str, group: str, env_extra: dict, sizes: str) -> list[dict]:
    """Run one row group in a fresh process; collect its rows as they come. A child that
    prints no row for ``ROW_TIMEOUT_S`` is killed and its finished rows are kept."""
    cmd = [sys.executable, __file__, "--child", net, group, "--sizes", sizes]
    path = [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]
    env = os.environ | env_extra | {"PYTHONPATH": os.pathsep.join(filter(None, path))}
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
        lines: queue.Queue = queue.Queue()

        def pump():
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        rows = []
        while True:
            try:
                line = lines.get(timeout=ROW_TIMEOUT_S)
            except queue.Empty:
                proc.kill()
                print(f"  {net} {group}: no row for {ROW_TIMEOUT_S} s, killed", file=sys.stderr)
                break
            if line is None:
                break
            if line.startswith("{"):
                rows.append(json.loads(line))
        proc.wait()
        if proc.returncode > 0:
            err.seek(0)
            print(f"  {net} {group} failed:\n{err.read()[-3000:]}", file=sys.stderr)
    print(f"  {net:6s} {group:14s} {len(rows):2d} rows", file=sys.stderr, flush=True)
    return rows


def relative_errors(rows: list[dict]) -> None:
    """Add median / p90 relative norm error against exact reverse mode on the same samples."""
    exact = {}
    for r in rows:
        if r["method"] == "jax exact reverse":
            exact[r["net"]] = max(exact.get(r["net"], []), r["norms"], key=len)
    for r in rows:
        ref = np.asarray(exact[r["net"]][: len(r["norms"])])
        err = np.abs(np.asarray(r["norms"]) - ref) / ref
        r["err_median"], r["err_p90"] = float(np.median(err)), float(np.quantile(err, 0.9))


def table(results: dict[str, list[dict]]) -> str:
    names = list(results)
    keyed = {
        a: {(r["net"], r["method"], r["k"], r["batch"]): r for r in rs} for a, rs in results.items()
    }
    order = list(dict.fromkeys(key for a in names for key in keyed[a]))

    def cells(key, field, fmt):
        return [fmt.format(keyed[a][key][field]) if key in keyed[a] else "-" for a in names]

    def peak(key):
        return [
            f"{keyed[a][key]['peak_wall']:.0%} ({keyed[a][key]['peak_cpu']:.0%})"
            if "peak_wall" in keyed[a].get(key, {})
            else "-"
            for a in names
        ]

    head = (
        ["net", "method", "k", "batch"]
        + [f"samples/s {a}" for a in names]
        + [f"cpu-s/sample {a}" for a in names]
        + [f"peak RSS MB {a}" for a in names]
        + ["rel.err median", "rel.err p90", "GFLOP/sample"]
        + [f"% peak {a}" for a in names]
    )
    lines = []
    for key in order:
        first = next(keyed[a][key] for a in names if key in keyed[a])
        lines.append(
            [
                key[0],
                key[1],
                str(key[2]),
                str(key[3]),
                *cells(key, "samples_per_s", "{:.3g}"),
                *cells(key, "cpu_s_per_sample", "{:.3g}"),
                *cells(key, "peak_mb", "{:.0f}"),
                f"{first['err_median']:.2%}",
                f"{first['err_p90']:.2%}",
                f"{first['gflop_per_sample']:.3g}" if "gflop_per_sample" in first else "-",
                *peak(key),
            ]
        )
    widths = [max(len(row[i]) for row in [head, *lines]) for i in range(len(head))]
    fmt = lambda row: " | ".join(
        c.ljust(w) if i < 2 else c.rjust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )
    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([fmt(head), rule, *map(fmt, lines)])


def load_average() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def machine_notes(load_at_start: str) -> str:
    import platform

    import jax

    try:
        import torch

        torch_version = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch_version = "torch not installed (its rows skipped)"
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in open("/proc/cpuinfo")
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"machine: {cpu}, {os.cpu_count()} cores; jax {jax.__version__} "
        f"({jax.default_backend()}); {torch_version}; load average at start {load_at_start}, "
        f"at end {load_average()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        choices=list(SIZES),
        default="full",
        help="samples per row: full (~25 min on 2 cores), quick (~4 min), gpu (one GPU)",
    )
    parser.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    parser.add_argument("--groups", nargs="+", default=list(GROUPS), choices=list(GROUPS))
    parser.add_argument(
        "--allocators", nargs="+", default=list(ENVIRONMENTS), choices=list(ENVIRONMENTS)
    )
    parser.add_argument("--child", nargs=2, metavar=("NET", "GROUP"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_xla()  # the entry points' XLA flags, inherited by every child process
    if "exact_reverse" not in args.groups:
        parser.error("--groups must include exact_reverse: it is the reference of the errors")
    if args.child:
        child(*args.child, sizes=args.sizes)
        return
    results = {}
    start, load_at_start = time.perf_counter(), load_average()
    with tempfile.TemporaryDirectory(prefix="jacobian-bench-") as tmp:
        # The second allocator's processes load the first one's executables from XLA's
        # persistent cache instead of compiling them again (compiles are not timed either way).
        compile_cache = {
            "JAX_COMPILATION_CACHE_DIR": str(Path(tmp) / "xla"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        if "mlp-trained" in args.nets:
            compile_cache[TRAINED_ENV] = train_digits_mlp(Path(tmp) / "trained")
        for name, env in allocator_envs(args.allocators).items():
            print(f"allocator {name}", file=sys.stderr, flush=True)
            rows = []
            for net in args.nets:
                for group in args.groups:
                    if group in NETS[net]:
                        rows += run_child(net, group, env | compile_cache, args.sizes)
            relative_errors(rows)
            results[name] = rows
    print(table(results))
    print()
    print(machine_notes(load_at_start))
    print(f"benchmark wall time {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
