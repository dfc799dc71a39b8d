"""The drivers: per-sample Jacobian norms of a whole batch, chunk by chunk, under a byte budget.

:func:`jacobian_norms` (exact) and :func:`estimate_sqnorms` (stochastic) run one kernel of
:mod:`jacosr.jacobian.kernels` over fixed-size chunks of ``xs`` in a host loop; the last chunk
is padded, so every call has the same shapes. This module also holds what the loop needs:
the chunk plan, the worker threads and the rule that keeps some programs single-flight.

Why a host loop and not ``jax.lax.map`` / ``scan``: on XLA CPU a pullback inside a loop body ran
slower (XLA picks a slower convolution layout inside the loop body; measured: README, "The Jacobian
engine"), while a Python loop over one compiled chunk function was the fastest JAX variant and the
leanest in memory. The chunk size is planned per backend from XLA's own memory analysis of the
compiled chunk; see :func:`jacobian_norms` and :data:`CPU_CHUNK_BYTES`. On CPU the loop runs
:data:`CPU_WORKERS` chunks at once, from as many host threads, unless the chunk's program calls a
kernel that can deadlock the XLA CPU thread pool (LAPACK or FFT; see there).

What is compiled, and when: a chunk program is compiled for ``f`` (a static argument, hashed
like any ``jax.jit`` static argument), the settings (mode, estimator, probes, ...) and the
shapes and dtypes of the chunk and of ``params`` (not where ``params`` live: a state restored
from a checkpoint, committed to its device, counts as one fresh from training); the VALUES
of ``params`` are traced arguments. jax caches each program, so a second call with the same
``f`` object (or an equal one: ``jacosr.models.embedding_apply(graphdef)`` compares by
architecture) and the same shapes traces and compiles nothing -- also for another ``params``,
e.g. the next checkpoint. A closure ``f(x)`` over a model's arrays bakes them into the
program as constants instead: every new closure compiles its programs again. A new call
signature compiles the one-sample program, whose bytes plan the chunk, and then the chunk's
program; only the latter when a given ``chunk_size`` fits the budget, only the former when
the plan is one sample per call.

The loop works on the host: inputs are NumPy arrays (JAX arrays are copied to the host
once), chunks are sliced and padded with NumPy and the results come back as NumPy arrays, so
that the loop itself compiles nothing (each eager ``jnp`` slice or pad of a new shape would).

On several devices (:func:`jacosr.distributed.data_mesh`: one host's GPUs, or every process's
devices under ``jax.distributed``) each chunk's samples are split along the mesh's axis: the
parameters are replicated, a chunk holds ``devices x`` the samples one device would take (the
plan is per device, from the sharded program's own memory analysis; the last chunk is padded
as on one device), the chunks run one at a time (the devices are the parallelism) and the
results are gathered back to every process (with several processes, every one must make the
call, with the same inputs). The per-sample kernels do not mix samples, so the norms are the
single-device ones (equal to float tolerance: XLA may fuse a sharded program differently).

Long calls can report their progress (``progress="a label"``): a tqdm bar over the samples
(shown only on a terminal, as tqdm decides) and, once the first chunk is back, one line with
the estimated time of the whole call when it is long (:data:`ESTIMATE_MIN_SECONDS`).
"""

import re
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from jacosr.distributed import (
    batch_sharded,
    data_mesh,
    fetch,
    put_replicated,
    put_sharded,
    replicated,
)
from jacosr.jacobian.kernels import (
    ESTIMATORS,
    Fn,
    _abstract,
    _check_batch,
    _embedding_shape,
    _exact_block,
    _example,
    check_estimator,
    resolve_mode,
)

DEFAULT_MAX_BYTES = 2**30
"""Default byte budget of one compiled chunk (XLA's arguments other than ``params``, outputs
and temporaries)."""

CPU_CHUNK_BYTES = 2**25
"""Byte target of one chunk on CPU, below ``max_bytes / CPU_WORKERS``; accelerators use all of
``max_bytes``.

32 MiB is glibc malloc's largest mmap threshold: XLA's buffers for a chunk of this size come
from the heap and are reused from call to call, while larger ones are mapped fresh for every
call and the kernel zeroes each page again, which costs system time on every sample (none at
32 MiB; measured on the VGG32-sized net: README, "Speed"). jemalloc does the same to
allocations above its ``oversize_threshold`` (8 MiB) unless
``MALLOC_CONF=oversize_threshold:0`` is set (see the README). Larger chunks cut the user time
per sample, so with the faults gone 32 MiB is the sweet spot; on the digits MLP the chunk size
made no difference over a wide range.

The parameters do not count: they are allocated once, not per call, and shared by the chunks
in flight."""

CPU_WORKERS = 2
"""Chunks computed at once on CPU, each from its own host thread (one on accelerators).

XLA CPU runs one call's operations on its thread pool, but its small per-sample convolutions
and the element-wise work between them leave part of the cores idle. Two calls in flight
fill the gaps that one call leaves on two cores, and fewer pool threads spin idle (measured
on VGG32-sized exact norms: README, "Speed"); four workers were no faster than two. It takes
threads: XLA CPU (jax 0.10) runs the calls that one host thread dispatches one after another,
however asynchronously they are dispatched (observed: four independent calls from one thread
ran back to back; from two threads, two at a time).

The worker threads only call compiled chunk programs and wait for them; the caller's thread
slices, pads and places every chunk on the device, sums and concatenates, so the caller's
thread-local jax settings (such as ``jax.enable_x64``) hold for every chunk.

Chunks whose program calls jaxlib's LAPACK kernels (any ``jnp.linalg`` factorisation, e.g.
in :func:`jacosr.jacobian.xnystrace_sqnorms`) or an FFT run one at a time, each waited for.
In jaxlib 0.10 such a kernel splits its batch into tasks on XLA's CPU thread pool, which has
one thread per core, and parks the pool thread it runs on until those tasks are done; two at
once on two cores park both threads, and the tasks never run. That is how XNysTrace hung with
two chunks in flight (native stacks: both pool threads in ``lapack_ssyevd_ffi`` ->
``jax::ParallelBatchMap`` -> ``absl::BlockingCounter::Wait``, at 0% CPU, for good). One such
program at a time parks at most one pool thread; the other threads run its tasks. (Open-source
jaxlib is reported to leave this parallel path out from 0.11.1 on.)"""


# Checks of the drivers' own arguments


def _host_batch(xs, name: str = "xs") -> np.ndarray:
    """``xs`` (a NumPy or JAX array, or what ``np.asarray`` makes one of, e.g. a nested list)
    checked (:func:`_check_batch`) as a NumPy array of jax's canonical dtype (float64 stays
    float64 only under ``jax.enable_x64``)."""
    try:
        xs = np.asarray(xs)
    except ValueError as err:  # a ragged nested list
        raise ValueError(f"{name} must be an array [B, ...]; {err}") from None
    _check_batch(xs, name)
    return xs.astype(jax.dtypes.canonicalize_dtype(xs.dtype), copy=False)


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of samples; got {chunk_size}")


def _target_bytes(max_bytes: int) -> int:
    """Bytes one chunk may take: ``max_bytes`` shared by the chunks in flight, and on CPU at
    most :data:`CPU_CHUNK_BYTES`."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive; got {max_bytes}")
    if jax.default_backend() == "cpu":
        return max(1, min(max_bytes // CPU_WORKERS, CPU_CHUNK_BYTES))
    return max_bytes


# Which programs may run two at a time


_PARKING_OPS = re.compile(r'custom_call_target="(lapack_|ducc)|\bfft\(')
"""HLO of the kernels that park an XLA CPU pool thread until other pool threads have run their
tasks: jaxlib's LAPACK calls (``lapack_*_ffi``; ``ducc`` FFTs in older jaxlib) and XLA's FFT
(which hands its work to the pool and waits on a latch; reported to deadlock the same way)."""


def _parks_pool_threads(compiled) -> bool:
    """Whether the compiled chunk program calls a kernel of :data:`_PARKING_OPS` (or its text
    is unavailable, to be safe); such programs must not run two at a time (see
    :data:`CPU_WORKERS`)."""
    text = compiled.as_text()
    return text is None or _PARKING_OPS.search(text) is not None


def _workers(compiled, sharded: bool = False) -> int:
    """Chunks of the ``compiled`` program in flight at once: :data:`CPU_WORKERS` on CPU, unless
    the program parks pool threads (then one); one on accelerators (whose dispatch is already
    asynchronous) and on several devices (whose programs must run in the same order in every
    process, and which are the parallelism)."""
    if jax.default_backend() != "cpu" or sharded or _parks_pool_threads(compiled):
        return 1
    return CPU_WORKERS


# The chunk plan


def _nbytes(tree: Any) -> int:
    """Bytes of the arrays of a pytree (the parameters, resident for the whole call)."""
    return sum(np.dtype(a.dtype).itemsize * int(np.prod(a.shape)) for a in jax.tree.leaves(tree))


def _bytes(compiled, resident: int = 0) -> int:
    """Peak bytes XLA reserves for one call: arguments, outputs and temporaries, less the
    ``resident`` bytes of arguments that every call shares (the parameters)."""
    m = compiled.memory_analysis()
    args = max(0, m.argument_size_in_bytes - resident)
    return args + m.output_size_in_bytes + m.temp_size_in_bytes


def _plan_blocks(bytes_of_block: Callable[[int], int], num_basis: int, target: int) -> int:
    """Largest equal split of the basis whose one-sample kernel fits ``target`` (at least 1)."""
    pieces = 1
    while True:
        size = -(-num_basis // pieces)
        used = bytes_of_block(size)
        if size == 1 or used <= target:
            return size
        pieces = max(pieces + 1, -(-pieces * used // target))


def _plan_chunk(bytes_of_chunk: Callable[[int], int], batch: int, target: int, workers: int) -> int:
    """Samples per call: as many as fit ``target`` by the one-sample bytes, evened out over
    the calls (a multiple of ``workers`` of them, so no worker idles and the padded last
    chunk wastes little: 539 samples at most 247 per call on 2 workers run as 4 x 135, not
    3 x 247 with 202 padding), then halved until the compiled chunk itself fits."""
    most = max(1, target // max(1, bytes_of_chunk(1)))
    calls = -(-batch // most)
    calls = -(-calls // workers) * workers
    chunk = -(-batch // calls)
    while chunk > 1 and bytes_of_chunk(chunk) > target:
        chunk //= 2
    return chunk


def _plan(
    compiled: Callable[[int], Any],
    batch: int,
    target: int,
    chunk_size: int | None,
    resident: int,
    sharded: bool = False,
):
    """``(program, samples per call, chunks in flight)``; ``compiled(c)`` gives the compiled
    program of ``c`` samples (from jax's caches when it was compiled before); with
    ``sharded``, ``c`` samples per device and ``batch`` the samples per device.

    A given ``chunk_size`` compiles only its own program; otherwise the one-sample program's
    bytes plan the chunk (:func:`_plan_chunk`), and its HLO says whether it may run in
    :data:`CPU_WORKERS` threads."""
    if chunk_size is not None:
        program = compiled(chunk_size)
        return program, chunk_size, _workers(program, sharded)
    workers = _workers(compiled(1), sharded)
    chunk = _plan_chunk(lambda c: _bytes(compiled(c), resident), batch, target, workers)
    return compiled(chunk), chunk, workers


# Where the arrays go


class _Layout:
    """Where one call's arrays live: one device (``mesh`` None: jax's default placement, the
    abstract values without a sharding, as always), or a mesh over which the samples are split
    and the rest replicated. Chunk sizes are planned per device (:func:`_plan`)."""

    def __init__(self, mesh: Mesh | None):
        self.mesh = mesh
        self.sharded = mesh is not None
        self.devices = 1 if mesh is None else mesh.size

    def per_device(self, samples: int | None) -> int | None:
        """Samples per device of ``samples`` split evenly (rounded up), or None."""
        return None if samples is None else -(-samples // self.devices)

    def replicate(self, tree: Any) -> Any:
        """``tree`` on the device (or every device of the mesh)."""
        return jax.device_put(tree) if self.mesh is None else put_replicated(tree, self.mesh)

    def replicated_spec(self, tree: Any) -> Any:
        """Abstract values ``tree`` (ShapeDtypeStructs), replicated over the mesh, if any."""
        if self.mesh is None:
            return tree
        sharding = replicated(self.mesh)
        return jax.tree.map(
            lambda s: jax.ShapeDtypeStruct(
                s.shape, s.dtype, weak_type=s.weak_type, sharding=sharding
            ),
            tree,
        )

    def batch_spec(self, per_device: int, like: np.ndarray) -> jax.ShapeDtypeStruct:
        """The abstract chunk ``[per_device x devices, *like.shape[1:]]``, split over the mesh."""
        shape = (per_device * self.devices, *like.shape[1:])
        sharding = None if self.mesh is None else batch_sharded(self.mesh)
        return jax.ShapeDtypeStruct(shape, like.dtype, sharding=sharding)


# The host loop

ESTIMATE_MIN_SECONDS = 10.0
"""A call with ``progress`` prints its time estimate (``"<label>: N samples, about T s"``, on
stderr) only when the estimate reaches this many seconds: short calls stay quiet."""


class _Progress:
    """Progress of one host loop over ``total`` samples in ``chunks`` chunks, ``workers`` at a
    time: a tqdm bar (``disable=None``: only on a terminal) and the time estimate.

    The estimate is taken when the first chunk is back: the ``workers`` chunks in flight
    started together, so the whole call takes about ``ceil(chunks / workers)`` times as long
    (compilation came before the loop, so it is not in the estimate)."""

    def __init__(self, label: str | None, total: int, chunks: int, workers: int):
        self.label, self.total, self.chunks, self.workers = label, total, chunks, workers
        self.bar = tqdm(
            total=total, desc=label, unit="sample", disable=None if label else True, leave=False
        )
        self.start = time.perf_counter()
        self.estimated = label is None or chunks <= workers

    def done(self, samples: int) -> None:
        if not self.estimated:
            self.estimated = True
            seconds = (time.perf_counter() - self.start) * -(-self.chunks // self.workers)
            if seconds >= ESTIMATE_MIN_SECONDS:
                self.bar.write(
                    f"{self.label}: {self.total} samples, about {seconds:.0f} s", file=sys.stderr
                )
        self.bar.update(samples)

    def close(self) -> None:
        self.bar.close()


def _map_chunks(
    run: Callable,
    arrays: tuple,
    chunk: int,
    workers: int,
    progress: str | None = None,
    mesh: Mesh | None = None,
):
    """Apply ``run`` to fixed-size chunks of ``arrays`` (NumPy, each ``[B, ...]``); pad the
    last chunk by repeating the last row so every call has the same shapes; trim and
    concatenate the results into NumPy arrays.

    ``run`` must only call compiled programs (no ``jnp`` work of its own): with ``workers > 1``
    (CPU) it runs in worker threads, ``workers`` chunks at a time, each thread waiting for its
    chunk (or the next one would not overlap with it), while this thread slices, pads and
    places the next chunk on the device and collects the results in order. With one worker,
    on CPU each chunk is waited for before the next is dispatched (one program in flight, see
    :data:`CPU_WORKERS`); on accelerators the chunks are dispatched without waiting, so the
    device's queue stays full. ``progress``: a label to report progress under (see the
    module), or None. ``mesh``: each chunk's rows are split over it (``chunk`` a multiple of
    its size) and the results gathered from every device and process; None: one device."""
    batch = arrays[0].shape[0]
    num_chunks = -(-batch // chunk)
    workers = min(workers, num_chunks)
    report = _Progress(progress, batch, num_chunks, workers)
    sizes = iter([chunk] * (num_chunks - 1) + [batch - chunk * (num_chunks - 1)])

    def chunks():
        for lo in range(0, batch, chunk):
            parts = [a[lo : lo + chunk] for a in arrays]
            pad = chunk - parts[0].shape[0]
            if pad:
                parts = [np.concatenate([p, np.repeat(p[-1:], pad, axis=0)]) for p in parts]
            # In this thread: its jax settings hold.
            yield jax.device_put(parts) if mesh is None else put_sharded(parts, mesh)

    def back(out):
        report.done(next(sizes))
        return out

    try:
        if workers > 1:
            outs, in_flight = [], deque()
            with ThreadPoolExecutor(workers) as pool:
                for parts in chunks():
                    if len(in_flight) == workers:
                        outs.append(back(in_flight.popleft().result()))
                    in_flight.append(pool.submit(lambda p: jax.block_until_ready(run(*p)), parts))
                outs += [back(done.result()) for done in in_flight]
        elif jax.default_backend() == "cpu":
            outs = [back(jax.block_until_ready(run(*parts))) for parts in chunks()]
        else:
            # Dispatched without waiting: the bar counts dispatches, and no estimate is made
            # (a chunk is back before the device has run it).
            report.estimated = True
            outs = [back(run(*parts)) for parts in chunks()]
    finally:
        report.close()
    return jax.tree.map(lambda *o: np.concatenate([fetch(a) for a in o])[:batch], *outs)


# Exact norms


_exact_block_jit = jax.jit(_exact_block, static_argnames=("f", "mode", "size"))


def jacobian_norms(
    f: Fn,
    xs,
    *,
    params: Any = None,
    mode: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
    progress: str | None = None,
) -> np.ndarray:
    """Exact per-sample Frobenius norms ``||df/dx||_F`` of a batch, under a memory budget.

    A host loop over one compiled chunk function (see the module docstring for why, and for
    what compiles when). The plan: XLA's memory analysis of the compiled one-sample kernel gives
    the bytes per sample; a chunk holds as many samples as fit ``max_bytes`` (on CPU, at most
    :data:`CPU_CHUNK_BYTES`); when one sample alone does not fit, its basis directions are
    split into equal blocks, summed on the host. The last chunk is padded with copies of the
    last sample, so a second call with the same shapes and the same ``f`` -- whatever
    ``params`` -- neither traces nor compiles.

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``, or, with ``params``,
        ``f(params, x) -> z`` (e.g. ``jacosr.models.embedding_apply(graphdef)``).
      xs: ``[B, ...]`` inputs (NumPy or JAX, or what ``np.asarray`` makes one of: a nested list).
      params: None for ``f(x)``, else the pytree ``f`` takes first (e.g. a model state):
        traced, so a new ``params`` of the same shapes reuses the compiled chunks.
      mode: ``"auto"``, ``"reverse"`` or ``"forward"``, as in
        :func:`jacosr.jacobian.exact_sqnorms`.
      max_bytes: budget for one compiled chunk (arguments other than ``params``, outputs and
        XLA temporaries).
      chunk_size: samples per call; overrides the planned chunk (basis blocks still obey
        ``max_bytes``).
      progress: None (quiet), or a label under which to report progress: a tqdm bar over the
        samples on a terminal, and the estimated time of the call on stderr once the first
        chunk is back, when it is :data:`ESTIMATE_MIN_SECONDS` or more
        (``"jacobian: 6300 samples, about 420 s"``).

    Returns:
      ``[B]`` NumPy norms ``||J(xs[b])||_F``; NaN where the input, the embedding or the norm is
      not finite.
    """
    xs = _host_batch(xs)
    _check_chunk_size(chunk_size)
    target = _target_bytes(max_bytes)
    layout = _Layout(data_mesh())
    params = layout.replicate(params)
    d, d_z = _embedding_shape(f, params, _example(xs))
    mode = resolve_mode(mode, d, d_z)
    num_basis = d_z if mode == "reverse" else d
    resident = _nbytes(params)
    start = layout.replicated_spec(jax.ShapeDtypeStruct((), np.int32))

    def compiled(chunk: int, size: int):
        spec = layout.batch_spec(chunk, xs)
        args = (f, layout.replicated_spec(_abstract(params)), spec, start)
        return _exact_block_jit.lower(*args, mode=mode, size=size).compile()

    per_device = layout.per_device(chunk_size)
    if per_device is not None and _bytes(compiled(per_device, num_basis), resident) <= target:
        size = num_basis  # the given chunk fits whole, so one sample does too: no blocks
    else:
        size = _plan_blocks(lambda s: _bytes(compiled(1, s), resident), num_basis, target)
    kernel, chunk, workers = _plan(
        lambda c: compiled(c, size),
        layout.per_device(xs.shape[0]),
        target,
        per_device,
        resident,
        layout.sharded,
    )
    starts = layout.replicate([np.int32(s) for s in range(0, num_basis, size)])
    # One output per basis block; this thread adds them (see _map_chunks).
    blocks = _map_chunks(
        lambda x_chunk: [kernel(params, x_chunk, s) for s in starts],
        (xs,),
        chunk * layout.devices,
        workers,
        progress,
        layout.mesh,
    )
    return np.sqrt(sum(blocks))


# Stochastic estimates


def _estimate_chunk(f, params, xs, key, index, *, estimator, num_probes, side, probes):
    """The estimator on one chunk; sample ``index[b]`` of the batch draws its probes from
    ``fold_in(key, index[b])``, whatever the chunking and the batch size."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, index)
    return ESTIMATORS[estimator](
        f, xs, keys, params=params, num_probes=num_probes, side=side, probes=probes
    )


_estimate_chunk_jit = jax.jit(
    _estimate_chunk, static_argnames=("f", "estimator", "num_probes", "side", "probes")
)


def estimate_sqnorms(
    f: Fn,
    xs,
    key: jax.Array,
    *,
    params: Any = None,
    estimator: str = "hutchinson",
    num_probes: int = 4,
    side: str = "output",
    probes: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Stochastic per-sample ``||df/dx||_F^2`` with standard errors, chunked under a budget.

    The estimate of ``||J||_F^2`` is unbiased; its square root, an estimate of ``||J||_F``, is
    not (it is low by about ``Var / (8 ||J||^3)``). Average squared norms before any root.

    Args:
      f, params: as in :func:`jacobian_norms`.
      xs: ``[B, ...]`` inputs, as in :func:`jacobian_norms`.
      key: one PRNG key; sample ``b`` draws its probes from ``jax.random.fold_in(key, b)``,
        whatever the chunking and the batch size.
      estimator: ``"hutchinson"`` (:func:`jacosr.jacobian.hutchinson_sqnorms`) or
        ``"xnystrace"`` (:func:`jacosr.jacobian.xnystrace_sqnorms`).
      num_probes, side: as in the estimator.
      probes: as in the estimator; None for its default (:data:`jacosr.jacobian.
        ESTIMATOR_PROBES`: Rademacher for Hutchinson, Gaussian for XNysTrace).
      max_bytes, chunk_size, progress: as in :func:`jacobian_norms`.

    Returns:
      ``(estimate, stderr)``, each ``[B]`` NumPy; NaN where the input, the embedding or the
      estimate is not finite.
    """
    xs = _host_batch(xs)
    _check_chunk_size(chunk_size)
    target = _target_bytes(max_bytes)
    layout = _Layout(data_mesh())
    params, key = layout.replicate((params, key))
    probes = check_estimator(
        f,
        _example(xs),
        params=params,
        estimator=estimator,
        num_probes=num_probes,
        side=side,
        probes=probes,
    )
    static = dict(estimator=estimator, num_probes=num_probes, side=side, probes=probes)
    index = np.arange(xs.shape[0], dtype=np.int32)

    def compiled(chunk: int):
        spec, index_spec = layout.batch_spec(chunk, xs), layout.batch_spec(chunk, index)
        replicated_args = layout.replicated_spec((_abstract(params), _abstract(key)))
        args = (f, replicated_args[0], spec, replicated_args[1], index_spec)
        return _estimate_chunk_jit.lower(*args, **static).compile()

    kernel, chunk, workers = _plan(
        compiled,
        layout.per_device(xs.shape[0]),
        target,
        layout.per_device(chunk_size),
        _nbytes(params),
        layout.sharded,
    )
    return _map_chunks(
        lambda x, i: kernel(params, x, key, i),
        (xs, index),
        chunk * layout.devices,
        workers,
        progress,
        layout.mesh,
    )
