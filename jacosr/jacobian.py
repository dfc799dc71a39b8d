"""Per-sample Jacobian norms of an embedding: exact, stochastic, along paths, and their JND.

The engine knows only a pure function ``f(x) -> z`` of ONE unbatched input (``x`` of any shape,
e.g. ``[H, W, C]``; ``z: [d_z]``) and a batch ``xs: [B, ...]``. ``J = df/dx`` has shape
``[d_z, d]`` with ``d = x.size``; everything here is about ``||J||_F``, the paper's Jacobian norm.

Two layers, as in optax or matfree:

* jit-compatible kernels that process one chunk (use them inside your own ``jit``):
  :func:`exact_sqnorms`, :func:`hutchinson_sqnorms`, :func:`xnystrace_sqnorms`.
* drivers that keep peak memory under a byte budget by a host loop over fixed-size chunks (the
  last chunk is padded so every call has the same shape and compiles once):
  :func:`jacobian_norms`, :func:`estimate_sqnorms`, :func:`path_norms`, :func:`path_length`.

Why a host loop and not ``jax.lax.map`` / ``scan``: on XLA CPU a pullback inside a loop body
was measured about 2x slower (XLA picks a slower convolution layout inside the loop body),
while a Python loop over one compiled chunk function was the fastest JAX variant and the
leanest in memory. The chunk size is planned per backend from XLA's own memory analysis of
the compiled chunk; see :func:`jacobian_norms` and :data:`CPU_CHUNK_BYTES`. On CPU the loop
runs :data:`CPU_WORKERS` chunks at once, from as many host threads, unless the chunk's program
calls a kernel that can deadlock the XLA CPU thread pool (LAPACK or FFT; see there).

A norm that cannot be computed is NaN, never a number: the kernels return NaN for a sample whose
input, embedding or Jacobian (norm, estimate, path speed) is not finite, so that such a sample
does not pass for a perfectly known one (a NaN input through a ReLU has a zero Jacobian).

``f`` is a static argument of the drivers' compiled functions: pass the same function object
again and nothing is traced or compiled again (a fresh ``lambda`` per call recompiles, as with
any ``jax.jit`` static argument).
"""

import math
import re
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.numpy as jnp
import numpy as np
from matfree import stochtrace

Array = jax.Array
Fn = Callable[[Array], Array]

DEFAULT_MAX_BYTES = 2**30
"""Default byte budget of one compiled chunk (XLA's arguments + outputs + temporaries)."""

CPU_CHUNK_BYTES = 2**25
"""Byte target of one chunk on CPU, below ``max_bytes / CPU_WORKERS``; accelerators use all of
``max_bytes``.

32 MiB is glibc malloc's largest mmap threshold: XLA's buffers for a chunk of this size come
from the heap and are reused from call to call, while larger ones are mapped fresh for every
call and the kernel zeroes each page again (measured on the VGG32-sized net, 2 cores: 33,000
to 190,000 page faults and up to 0.4 s of system time per sample from 64 MiB chunks on, none
at 32 MiB). jemalloc does the same to allocations above its ``oversize_threshold`` (8 MiB)
unless ``MALLOC_CONF=oversize_threshold:0`` is set (see the README). Larger chunks cut the
user time per sample (0.78 s at 16 MiB, 0.57 s at 256 MiB, one thread), so with the faults
gone 32 MiB is a sweet spot; on the digits MLP anything from 2 to 17 MB ran equally fast."""

CPU_WORKERS = 2
"""Chunks computed at once on CPU, each from its own host thread (one on accelerators).

XLA CPU runs one call's operations on its thread pool, but its small per-sample convolutions
and the element-wise work between them keep only about 1.5 of 2 cores busy. Two calls in
flight fill the gaps: VGG32-sized exact norms went from 1.9 to 2.5-3.7 samples/s on 2 cores
(user time per sample down from 0.80 to 0.53-0.75 s, as fewer pool threads spin idle);
re-measured on a quiet machine, 2.5-3.2 (one worker) against 3.9-4.2 samples/s (two), 1.5
against 1.9 cores busy. Four workers were no faster than two. It takes threads: XLA CPU
(jax 0.10) runs the calls that one host thread dispatches one after another, however
asynchronously they are dispatched (measured: four independent calls from one thread ran
back to back; from two threads, two at a time).

The worker threads only call compiled chunk programs and wait for them; the caller's thread
slices, pads, sums and concatenates, so the caller's thread-local jax settings (such as
``jax.enable_x64``) hold for every chunk.

Chunks whose program calls jaxlib's LAPACK kernels (any ``jnp.linalg`` factorisation, e.g.
in :func:`xnystrace_sqnorms`) or an FFT run one at a time, each waited for. In jaxlib 0.10
such a kernel splits its batch into tasks on XLA's CPU thread pool, which has one thread per
core, and parks the pool thread it runs on until those tasks are done; two at once on two
cores park both threads, and the tasks never run. That is how XNysTrace hung with two chunks
in flight (native stacks: both pool threads in ``lapack_ssyevd_ffi`` ->
``jax::ParallelBatchMap`` -> ``absl::BlockingCounter::Wait``, at 0% CPU, for good). One such
program at a time parks at most one pool thread; the other threads run its tasks. (Open-source
jaxlib is reported to leave this parallel path out from 0.11.1 on.)"""


# Checks shared by every entry point


def _registry_get(registry: dict, name: str, what: str):
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; valid: {valid}")
    return registry[name]


def _embedding_shape(f: Fn, x_like) -> tuple[int, int]:
    """Check that ``f`` maps one unbatched input to a 1-D floating embedding; return (d, d_z)."""
    # jit's trace cache (keyed on f) makes repeated checks free: no re-tracing of f.
    z = jax.jit(f).eval_shape(x_like)
    if not hasattr(z, "shape") or len(z.shape) != 1:
        shape = getattr(z, "shape", type(z).__name__)
        raise ValueError(
            f"f must return a 1-D embedding z: [d_z] for one unbatched input; got {shape}"
        )
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"f must return a floating embedding; got dtype {z.dtype}")
    return math.prod(x_like.shape), z.shape[0]


def _check_batch(xs, name: str = "xs") -> None:
    if not hasattr(xs, "shape") or len(xs.shape) < 1 or xs.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty batch [B, ...]; got shape {np.shape(xs)}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise ValueError(f"{name} must be floating; got dtype {xs.dtype}")


def _example(xs) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)


# Exact norms


def _nan_unless_finite(out: Array, *inputs: Array) -> Array:
    """``out`` if it and every array of ``inputs`` are finite everywhere, else NaN (all of it).

    A non-finite input or embedding can still give finite derivatives (a NaN through a ReLU
    has slope 0), and a zero norm would score as the most familiar sample there is."""
    ok = jnp.all(jnp.isfinite(out))
    for a in inputs:
        ok &= jnp.all(jnp.isfinite(a))
    return jnp.where(ok, out, jnp.nan)


def _reverse_block(f: Fn, x: Array, start: Array, size: int) -> Array:
    """sum_{i in [start, start+size)} ||J^T e_i||^2 by one VJP and ``size`` pullbacks.

    Basis indices at or past ``d_z`` give zero cotangents, so a padded last block adds 0."""
    z, pullback = jax.vjp(f, x)
    basis = jax.nn.one_hot(start + jnp.arange(size), z.shape[0], dtype=z.dtype)
    (rows,) = jax.vmap(pullback)(basis)
    return _nan_unless_finite(jnp.sum(jnp.square(rows)), x, z)


def _forward_block(f: Fn, x: Array, start: Array, size: int) -> Array:
    """sum_{j in [start, start+size)} ||J e_j||^2 by one linearisation and ``size`` JVPs."""
    z, push = jax.linearize(f, x)
    basis = jax.nn.one_hot(start + jnp.arange(size), x.size, dtype=x.dtype)
    cols = jax.vmap(push)(basis.reshape(size, *x.shape))
    return _nan_unless_finite(jnp.sum(jnp.square(cols)), x, z)


_BLOCKS = {"reverse": _reverse_block, "forward": _forward_block}
MODES = ("auto", *_BLOCKS)


def resolve_mode(mode: str, d: int, d_z: int) -> str:
    """``auto`` -> ``reverse`` (d_z VJPs) when d_z <= d, else ``forward`` (d JVPs)."""
    _registry_get(dict.fromkeys(MODES), mode, "mode")
    if mode == "auto":
        return "reverse" if d_z <= d else "forward"
    return mode


def _exact_block(f: Fn, xs: Array, start: Array, *, mode: str, size: int) -> Array:
    block = _BLOCKS[mode]
    return jax.vmap(lambda x: block(f, x, start, size))(xs)


def exact_sqnorms(f: Fn, xs: Array, *, mode: str = "auto") -> Array:
    """Exact per-sample squared Frobenius norms ``||df/dx||_F^2`` of one chunk (jit-compatible).

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      xs: ``[B, ...]`` inputs; ``xs[b]`` has the shape ``f`` takes.
      mode: ``"reverse"`` (d_z VJPs per sample: one ``jax.vjp`` and a ``vmap`` of the pullback
        over the basis cotangents), ``"forward"`` (d JVPs per sample), or ``"auto"``: the
        smaller of ``d = x.size`` and ``d_z``.

    Returns:
      ``[B]`` squared norms, NaN where the input, the embedding or the norm is not finite. The
      Jacobian rows are reduced to a sum of squares inside the chunk; memory grows as
      ``B * min(d, d_z)`` activations, so prefer :func:`jacobian_norms` for large batches.
    """
    _check_batch(xs)
    d, d_z = _embedding_shape(f, _example(xs))
    mode = resolve_mode(mode, d, d_z)
    size = d_z if mode == "reverse" else d
    return _exact_block(f, xs, jnp.zeros((), jnp.int32), mode=mode, size=size)


_exact_block_jit = jax.jit(_exact_block, static_argnames=("f", "mode", "size"))


def jacobian_norms(
    f: Fn,
    xs,
    *,
    mode: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
) -> Array:
    """Exact per-sample Frobenius norms ``||df/dx||_F`` of a batch, under a memory budget.

    A host loop over one compiled chunk function (see the module docstring for why). The plan:
    XLA's memory analysis of the compiled one-sample kernel gives the bytes per sample; a chunk
    holds as many samples as fit ``max_bytes`` (on CPU, at most :data:`CPU_CHUNK_BYTES`); when
    one sample alone does not fit, its basis directions are split into equal blocks, summed on
    the device. The last chunk is padded with copies of the last sample, so a second call with
    the same shapes and the same ``f`` object neither traces nor compiles.

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      xs: ``[B, ...]`` inputs (NumPy or JAX).
      mode: ``"auto"``, ``"reverse"`` or ``"forward"``, as in :func:`exact_sqnorms`.
      max_bytes: budget for one compiled chunk (arguments, outputs and XLA temporaries).
      chunk_size: samples per call; overrides the planned chunk (basis blocks still obey
        ``max_bytes``).

    Returns:
      ``[B]`` norms ``||J(xs[b])||_F``; NaN where the input, the embedding or the norm is not
      finite.
    """
    _check_batch(xs)
    _check_chunk_size(chunk_size)
    d, d_z = _embedding_shape(f, _example(xs))
    mode = resolve_mode(mode, d, d_z)
    num_basis = d_z if mode == "reverse" else d
    start = jnp.zeros((), jnp.int32)

    def compiled(chunk: int, size: int):
        spec = jax.ShapeDtypeStruct((chunk, *xs.shape[1:]), xs.dtype)
        return _exact_block_jit.lower(f, spec, start, mode=mode, size=size).compile()

    target = _target_bytes(max_bytes)
    size = _plan_blocks(lambda s: _bytes(compiled(1, s)), num_basis, target)
    workers = _workers(compiled(1, size))
    chunk = chunk_size or _plan_chunk(
        lambda c: _bytes(compiled(c, size)), xs.shape[0], target, workers
    )
    kernel = compiled(chunk, size)
    starts = [jnp.asarray(s, jnp.int32) for s in range(0, num_basis, size)]
    # One output per basis block; the caller's thread adds them (see _map_chunks).
    blocks = _map_chunks(
        lambda x_chunk: [kernel(x_chunk, s) for s in starts], (jnp.asarray(xs),), chunk, workers
    )
    return jnp.sqrt(sum(blocks))


# Chunk planning and the host loop


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


def _workers(compiled) -> int:
    """Chunks of the ``compiled`` program in flight at once: :data:`CPU_WORKERS` on CPU, unless
    the program parks pool threads (then one); one on accelerators (whose dispatch is already
    asynchronous)."""
    if jax.default_backend() != "cpu" or _parks_pool_threads(compiled):
        return 1
    return CPU_WORKERS


def _target_bytes(max_bytes: int) -> int:
    """Bytes one chunk may take: ``max_bytes`` shared by the chunks in flight, and on CPU at
    most :data:`CPU_CHUNK_BYTES`."""
    if max_bytes <= 0:
        raise ValueError(f"max_bytes must be positive; got {max_bytes}")
    if jax.default_backend() == "cpu":
        return max(1, min(max_bytes // CPU_WORKERS, CPU_CHUNK_BYTES))
    return max_bytes


def _check_chunk_size(chunk_size: int | None) -> None:
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of samples; got {chunk_size}")


def _bytes(compiled) -> int:
    """Peak bytes XLA reserves for one call: arguments, outputs and temporaries."""
    m = compiled.memory_analysis()
    return m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes


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
    """Samples per call: as many as fit ``target`` by the one-sample bytes, halved until the
    compiled chunk itself fits; never more than the batch's share of one of ``workers``."""
    share = -(-batch // workers)
    chunk = max(1, min(share, target // max(1, bytes_of_chunk(1))))
    while chunk > 1 and bytes_of_chunk(chunk) > target:
        chunk //= 2
    return chunk


def _map_chunks(run: Callable, arrays: tuple, chunk: int, workers: int):
    """Apply ``run`` to fixed-size chunks of ``arrays`` (each ``[B, ...]``); pad the last chunk
    by repeating the last row so every call has the same shapes; trim and concatenate.

    ``run`` must only call compiled programs (no ``jnp`` work of its own): with ``workers > 1``
    (CPU) it runs in worker threads, ``workers`` chunks at a time, each thread waiting for its
    chunk (or the next one would not overlap with it), while this thread slices and pads the
    next chunk and collects the results in order. With one worker, on CPU each chunk is waited
    for before the next is dispatched (one program in flight, see :data:`CPU_WORKERS`); on
    accelerators the chunks are dispatched without waiting, so the device's queue stays full."""
    batch = arrays[0].shape[0]
    workers = min(workers, -(-batch // chunk))

    def chunks():
        for lo in range(0, batch, chunk):
            parts = [a[lo : lo + chunk] for a in arrays]
            pad = chunk - parts[0].shape[0]
            if pad:
                parts = [jnp.concatenate([p, jnp.repeat(p[-1:], pad, axis=0)]) for p in parts]
            yield parts

    if workers > 1:
        outs, in_flight = [], deque()
        with ThreadPoolExecutor(workers) as pool:
            for parts in chunks():
                if len(in_flight) == workers:
                    outs.append(in_flight.popleft().result())
                in_flight.append(pool.submit(lambda p: jax.block_until_ready(run(*p)), parts))
            outs += [done.result() for done in in_flight]
    elif jax.default_backend() == "cpu":
        outs = [jax.block_until_ready(run(*parts)) for parts in chunks()]
    else:
        outs = [run(*parts) for parts in chunks()]
    return jax.tree.map(lambda *o: jnp.concatenate(o)[:batch], *outs)


# Stochastic estimates of ||J||_F^2


def _sphere(key: Array, shape: tuple[int, int], dtype) -> Array:
    """Uniform on the sphere of radius sqrt(n), so that E[v v^T] = I."""
    v = jax.random.normal(key, shape, dtype)
    return v * (math.sqrt(shape[1]) / jnp.linalg.norm(v, axis=1, keepdims=True))


def _rademacher(key: Array, shape: tuple[int, int], dtype) -> Array:
    return jax.random.rademacher(key, shape, dtype)


def _gaussian(key: Array, shape: tuple[int, int], dtype) -> Array:
    return jax.random.normal(key, shape, dtype)


PROBES = {"sphere": _sphere, "rademacher": _rademacher, "gaussian": _gaussian}
"""Probe distributions ``(key, (k, n), dtype) -> [k, n]``, each with ``E[v v^T] = I``."""

SIDES = ("output", "input")

ESTIMATOR_PROBES = {
    "hutchinson": ("rademacher", "sphere", "gaussian"),
    "xnystrace": ("gaussian", "sphere"),
}
"""The probe distributions each estimator takes, its default first (``probes=None`` in
:func:`estimate_sqnorms`): Hutchinson any with ``E[v v^T] = I`` (Rademacher's per-probe
variance is the least, see :func:`hutchinson_sqnorms`); XNysTrace only rotation-invariant ones,
which its resphering step requires."""

MIN_PROBES = {"hutchinson": 1, "xnystrace": 2}
"""The fewest probes per sample each estimator takes (XNysTrace leaves one out at a time)."""


def check_estimator(
    f: Fn,
    x,
    *,
    estimator: str = "hutchinson",
    num_probes: int = 4,
    side: str = "output",
    probes: str | None = None,
) -> str:
    """Refuse the arguments :func:`estimate_sqnorms` would refuse, from shapes alone (nothing
    is compiled or computed); return the probe distribution it would use.

    Entry points call it before a long run (e.g. before training), so that a bad combination
    fails at once.

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      x: one unbatched input, or its ``jax.ShapeDtypeStruct``.
      estimator, num_probes, side, probes: as in :func:`estimate_sqnorms`.
    """
    valid = _registry_get(ESTIMATOR_PROBES, estimator, "estimator")
    _registry_get(dict.fromkeys(SIDES), side, "side")
    probes = valid[0] if probes is None else probes
    _registry_get(PROBES, probes, "probe distribution")
    if probes not in valid:  # only XNysTrace refuses a distribution
        raise ValueError(
            f"{estimator} needs rotation-invariant probes; got {probes!r}; "
            f"valid: {', '.join(sorted(valid))}"
        )
    least = MIN_PROBES[estimator]
    if num_probes < least:
        raise ValueError(f"{estimator} needs num_probes >= {least}; got {num_probes}")
    d, d_z = _embedding_shape(f, jax.ShapeDtypeStruct(x.shape, x.dtype))
    n = d_z if side == "output" else d
    if estimator == "xnystrace" and num_probes > n:
        raise ValueError(
            f"xnystrace needs num_probes <= {n} (the {side} dimension); got {num_probes}"
        )
    return probes


def _check_kernel_args(f: Fn, xs, keys, estimator: str, num_probes: int, side: str, probes):
    """Refuse what the kernel cannot do; return the probe distribution (see check_estimator)."""
    _check_batch(xs)
    probes = check_estimator(
        f, _example(xs), estimator=estimator, num_probes=num_probes, side=side, probes=probes
    )
    if not hasattr(keys, "shape") or keys.shape[:1] != xs.shape[:1]:
        raise ValueError(
            f"keys must hold one PRNG key per sample, shape [{xs.shape[0]}]; "
            f"got {getattr(keys, 'shape', type(keys).__name__)} "
            "(use jax.random.split(key, B))"
        )
    return probes


def _mean_and_stderr(values: Array) -> tuple[Array, Array]:
    """Mean of ``[k]`` values and its standard error ``std(ddof=1) / sqrt(k)`` (NaN if k = 1)."""
    k = values.shape[0]
    if k == 1:
        return values[0], jnp.full((), jnp.nan, values.dtype)
    return jnp.mean(values), jnp.std(values, ddof=1) / math.sqrt(k)


def _hutchinson_one(f: Fn, x: Array, key: Array, num_probes: int, side: str, probes: str):
    sample = PROBES[probes]
    if side == "output":
        z, pullback = jax.vjp(f, x)
        v = sample(key, (num_probes, z.shape[0]), z.dtype)
        (g,) = jax.vmap(pullback)(v)
        values = jnp.sum(jnp.square(g.reshape(num_probes, -1)), axis=1)
    else:
        z, push = jax.linearize(f, x)
        u = sample(key, (num_probes, x.size), x.dtype)
        values = jnp.sum(jnp.square(jax.vmap(push)(u.reshape(num_probes, *x.shape))), axis=1)
    return _mean_and_stderr(_nan_unless_finite(values, x, z))


def hutchinson_sqnorms(
    f: Fn,
    xs: Array,
    keys: Array,
    *,
    num_probes: int = 4,
    side: str = "output",
    probes: str = "rademacher",
) -> tuple[Array, Array]:
    """Hutchinson estimates of ``||df/dx||_F^2`` per sample, with standard errors (jit-compatible).

    ``side="output"``: ``||J||_F^2 = E ||J^T v||^2`` with ``v`` in output space, one VJP per
    probe (the probes share one linearisation). ``side="input"``: ``E ||J u||^2`` with ``u`` in
    input space, one JVP per probe. Any probe with ``E[v v^T] = I`` gives an UNBIASED estimate
    of ``||J||_F^2``; its square root is a biased (low, by Jensen) estimate of ``||J||_F``.

    Per-probe variance for ``A = J J^T`` (output) or ``J^T J`` (input), ``n`` = probe dimension:
    gaussian ``2 ||A||_F^2``; rademacher ``2 (||A||_F^2 - sum_i A_ii^2)`` (never larger);
    sphere (radius ``sqrt(n)``) ``2n/(n+2) (||A||_F^2 - tr(A)^2 / n)`` (never larger than
    gaussian). The estimate averages ``num_probes`` probes.

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      xs: ``[B, ...]`` inputs.
      keys: ``[B]`` PRNG keys, one per sample (``jax.random.split(key, B)``), so that results
        do not depend on how a driver chunks the batch.
      num_probes: ``k`` probes per sample.
      side: ``"output"`` or ``"input"``.
      probes: ``"rademacher"``, ``"sphere"`` or ``"gaussian"``.

    Returns:
      ``(estimate, stderr)``, each ``[B]``: the mean of the ``k`` per-probe values and
      ``std(ddof=1) / sqrt(k)`` (NaN for ``k = 1``); both NaN where the input, the embedding
      or a per-probe value is not finite.
    """
    probes = _check_kernel_args(f, xs, keys, "hutchinson", num_probes, side, probes)
    return jax.vmap(lambda x, key: _hutchinson_one(f, x, key, num_probes, side, probes))(xs, keys)


def _xnystrace_loo(matvec: Callable[[Array], Array], omega: Array) -> Array:
    """matfree's ``k`` leave-one-out XNysTrace estimates of ``tr(A)``, ``omega: [k, n]``, with
    the kernel's LAPACK calls in one chain of data dependencies.

    The estimator factors ``Omega^T A Omega`` (eigh) and, independently of it, ``Omega`` (QR,
    then a triangular solve of its R). Independent calls may run at once on XLA CPU's thread
    pool, and in jaxlib 0.10 two batched LAPACK calls at once on 2 cores deadlock (see
    :data:`CPU_WORKERS`; caught as eigh beside the triangular solve, with XLA's
    concurrency-optimised scheduler). So the QR reads the Nystrom factor computed from the
    eigh: its input is NaN where that factor is not finite, where the estimate is NaN anyway.
    matfree calls ``nystrom`` before ``qr_r``; were that to change, tracing would fail here.
    """
    nystrom_eigh, factors = stochtrace.nystrom_eigh(), []

    def nystrom(matvec_flat, omega_cols):
        out = nystrom_eigh(matvec_flat, omega_cols)
        factors.append(out[0])
        return out

    def qr_r(omega_cols):
        (factor,) = factors
        ordered = jnp.where(jnp.all(jnp.isfinite(factor)), omega_cols, jnp.nan)
        return jnp.linalg.qr(ordered, mode="r")

    return stochtrace.leave_one_out_xnystrace(nystrom=nystrom, qr_r=qr_r)(matvec, omega)


def _xnystrace_one(f: Fn, x: Array, key: Array, num_probes: int, side: str, probes: str):
    z, push = jax.linearize(f, x)
    pull = jax.linear_transpose(push, x)
    if side == "output":
        n, dtype = z.shape[0], z.dtype
        matvec = lambda v: push(pull(v)[0])
    else:
        n, dtype = x.size, x.dtype
        matvec = lambda u: pull(push(u.reshape(x.shape)))[0].reshape(-1)
    omega = PROBES[probes](key, (num_probes, n), dtype)
    return _mean_and_stderr(_nan_unless_finite(_xnystrace_loo(matvec, omega), x, z))


def xnystrace_sqnorms(
    f: Fn,
    xs: Array,
    keys: Array,
    *,
    num_probes: int = 4,
    side: str = "output",
    probes: str = "gaussian",
) -> tuple[Array, Array]:
    """XNysTrace estimates of ``||df/dx||_F^2 = tr(J J^T)`` per sample (jit-compatible).

    Variance-reduced: the ``k`` probes ``Omega`` build a Nystrom approximation of the PSD
    operator ``A = J J^T`` (``side="output"``) or ``J^T J`` (``side="input"``), whose trace is
    exact, and each probe in turn is left out of it to estimate the trace of the residual
    (Epperly, Tropp and Webber 2024, "XTrace"). When ``J`` has a decaying spectrum -- embeddings
    usually do -- this beats Hutchinson at equal probes; for ``J`` of rank ``< k`` it is exact.
    Cost per probe: one VJP and one JVP (``A v = J (J^T v)``), about twice a Hutchinson probe.

    Unbiased for rotation-invariant probes (``"gaussian"``, ``"sphere"``), which the
    resphering step requires; hence no Rademacher here. The square root is biased.
    Measured on the trained digits MLP (``benchmarks/jacobian.py``): 0.3% median error at
    k = 16, where Hutchinson's was 6.8%; at random init 1.6% against 2.1%.

    On XLA CPU the kernel calls batched LAPACK (eigh, QR, a triangular solve), which jaxlib 0.10
    runs on XLA's thread pool in a way that deadlocks when two such calls run at once. Its
    calls are chained so that one program runs one at a time, whatever XLA's scheduler; the
    drivers run such programs one at a time (:data:`CPU_WORKERS`). Do not run two programs
    containing this kernel at once from two threads of your own on jaxlib 0.10.

    Why matfree: ``stochtrace.leave_one_out_xnystrace`` is the maintained implementation of the
    leave-one-out algebra (QR downdates, resphering, rank-deficient cases), which is easy to get
    subtly wrong by hand; here we only supply the operator, order its LAPACK calls and aggregate
    its ``k`` leave-one-out estimates. (Hutchinson above is a few lines on ``jax.random`` and
    needs the ddof=1 standard error and per-probe values, which matfree's estimators do not
    expose, so it is written out.)

    Args:
      f, xs, keys, side: as in :func:`hutchinson_sqnorms`.
      num_probes: ``k``, at least 2 and at most the probe dimension (``d_z`` or ``d``).
      probes: ``"gaussian"`` or ``"sphere"``.

    Returns:
      ``(estimate, stderr)``, each ``[B]``: the mean of the ``k`` leave-one-out estimates and
      their ``std(ddof=1) / sqrt(k)``, the spread matfree's ``estimator_leave_one_out_mean_and_sem``
      reports; both NaN where the input, the embedding or an estimate is not finite. The
      leave-one-out estimates are positively correlated, so this standard error is too small:
      on tiny nets (k = 3, 4) its square was 0.25-0.6 of the estimate's variance. Use it to
      compare, not for intervals; Hutchinson's standard error is calibrated.
    """
    probes = _check_kernel_args(f, xs, keys, "xnystrace", num_probes, side, probes)
    return jax.vmap(lambda x, key: _xnystrace_one(f, x, key, num_probes, side, probes))(xs, keys)


ESTIMATORS = {"hutchinson": hutchinson_sqnorms, "xnystrace": xnystrace_sqnorms}


def _estimate_chunk(f, xs, keys, *, estimator, num_probes, side, probes):
    return ESTIMATORS[estimator](f, xs, keys, num_probes=num_probes, side=side, probes=probes)


_estimate_chunk_jit = jax.jit(
    _estimate_chunk, static_argnames=("f", "estimator", "num_probes", "side", "probes")
)


def estimate_sqnorms(
    f: Fn,
    xs,
    key: Array,
    *,
    estimator: str = "hutchinson",
    num_probes: int = 4,
    side: str = "output",
    probes: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
) -> tuple[Array, Array]:
    """Stochastic per-sample ``||df/dx||_F^2`` with standard errors, chunked under a budget.

    The estimate of ``||J||_F^2`` is unbiased; its square root, an estimate of ``||J||_F``, is
    not (it is low by about ``Var / (8 ||J||^3)``). Average squared norms before any root.

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      xs: ``[B, ...]`` inputs.
      key: one PRNG key; sample ``b`` uses ``jax.random.split(key, B)[b]``, whatever the chunking.
      estimator: ``"hutchinson"`` (:func:`hutchinson_sqnorms`) or ``"xnystrace"``
        (:func:`xnystrace_sqnorms`).
      num_probes, side: as in the estimator.
      probes: as in the estimator; None for its default (:data:`ESTIMATOR_PROBES`: Rademacher
        for Hutchinson, Gaussian for XNysTrace).
      max_bytes, chunk_size: as in :func:`jacobian_norms`.

    Returns:
      ``(estimate, stderr)``, each ``[B]``; NaN where the input, the embedding or the estimate
      is not finite.
    """
    _check_batch(xs)
    _check_chunk_size(chunk_size)
    probes = check_estimator(
        f, _example(xs), estimator=estimator, num_probes=num_probes, side=side, probes=probes
    )
    keys = jax.random.split(key, xs.shape[0])
    static = dict(estimator=estimator, num_probes=num_probes, side=side, probes=probes)

    def compiled(chunk: int):
        spec = jax.ShapeDtypeStruct((chunk, *xs.shape[1:]), xs.dtype)
        key_spec = jax.ShapeDtypeStruct((chunk,), keys.dtype)
        return _estimate_chunk_jit.lower(f, spec, key_spec, **static).compile()

    workers = _workers(compiled(1))
    chunk = chunk_size or _plan_chunk(
        lambda c: _bytes(compiled(c)), xs.shape[0], _target_bytes(max_bytes), workers
    )
    return _map_chunks(compiled(chunk), (jnp.asarray(xs), keys), chunk, workers)


# Paths between samples (the paper's Fig. 3)


def path_points(x0s: Array, x1s: Array, ts: Array) -> Array:
    """``x_t = (1 - t) x0 + t x1`` for every pair and every ``t``: ``[P, T, ...]``.

    Args:
      x0s, x1s: ``[P, ...]`` path ends (e.g. ``x0`` from class i, ``x1`` from class j).
      ts: ``[T]`` positions in ``[0, 1]``.
    """
    t = jnp.asarray(ts).reshape(1, -1, *([1] * (x0s.ndim - 1)))
    return (1 - t) * x0s[:, None] + t * x1s[:, None]


def _check_pairs(x0s, x1s) -> None:
    _check_batch(x0s, "x0s")
    _check_batch(x1s, "x1s")
    if x0s.shape != x1s.shape:
        raise ValueError(f"x0s and x1s must have the same shape; got {x0s.shape}, {x1s.shape}")


def path_norms(
    f: Fn,
    x0s,
    x1s,
    ts,
    *,
    mode: str = "auto",
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
) -> Array:
    """Exact ``||J(x_t)||_F`` along straight paths ``x_t = (1 - t) x0 + t x1``: ``[P, T]``
    (NaN at points where :func:`jacobian_norms` gives NaN).

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      x0s, x1s: ``[P, ...]`` path ends.
      ts: ``[T]`` positions in ``[0, 1]``.
      mode, max_bytes, chunk_size: as in :func:`jacobian_norms`.
    """
    _check_pairs(x0s, x1s)
    pts = path_points(jnp.asarray(x0s), jnp.asarray(x1s), ts)
    flat = pts.reshape(-1, *pts.shape[2:])
    norms = jacobian_norms(f, flat, mode=mode, max_bytes=max_bytes, chunk_size=chunk_size)
    return norms.reshape(pts.shape[:2])


def _speeds(f: Fn, xs: Array, directions: Array) -> Array:
    """``||J(x) dx||`` for each ``(x, dx)``: one JVP each; NaN where anything is not finite."""

    def speed(x, dx):
        z, dz = jax.jvp(f, (x,), (dx,))
        return _nan_unless_finite(jnp.linalg.norm(dz), x, dx, z)

    return jax.vmap(speed)(xs, directions)


_speeds_jit = jax.jit(_speeds, static_argnames="f")


def path_length(
    f: Fn,
    x0s,
    x1s,
    *,
    num_points: int = 129,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
) -> Array:
    """Projected path length ``L = int_0^1 ||d f(x_t) / dt|| dt`` of each straight path: ``[P]``.

    ``d f(x_t) / dt = J(x_t) (x1 - x0)``, one JVP per point (no finite differences). Quadrature:
    the composite trapezoidal rule on ``num_points`` equally spaced ``t`` in ``[0, 1]`` (ends
    included). The speed is only piecewise smooth for ReLU-like nets, where higher-order rules
    gain nothing; the error is ``O(1 / num_points^2)`` on smooth pieces.

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``.
      x0s, x1s: ``[P, ...]`` path ends.
      num_points: ``T >= 2`` quadrature nodes.
      max_bytes, chunk_size: as in :func:`jacobian_norms`.

    Returns:
      ``[P]`` lengths; NaN for a path with a point, a direction, an embedding or a speed that
      is not finite.
    """
    _check_pairs(x0s, x1s)
    _check_chunk_size(chunk_size)
    _embedding_shape(f, _example(x0s))
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2; got {num_points}")
    x0s, x1s = jnp.asarray(x0s), jnp.asarray(x1s)
    ts = jnp.linspace(0.0, 1.0, num_points, dtype=x0s.dtype)
    pts = path_points(x0s, x1s, ts)
    flat = pts.reshape(-1, *pts.shape[2:])
    dirs = jnp.repeat(x1s - x0s, num_points, axis=0)

    def compiled(chunk: int):
        spec = jax.ShapeDtypeStruct((chunk, *flat.shape[1:]), flat.dtype)
        return _speeds_jit.lower(f, spec, spec).compile()

    workers = _workers(compiled(1))
    chunk = chunk_size or _plan_chunk(
        lambda c: _bytes(compiled(c)), flat.shape[0], _target_bytes(max_bytes), workers
    )
    speeds = _map_chunks(compiled(chunk), (flat, dirs), chunk, workers).reshape(pts.shape[:2])
    return jnp.trapezoid(speeds, ts, axis=1)


# Jacobian norm difference (Eq. 20)


def norm_difference(
    norms_known,
    norms_unknown,
    key: Array,
    *,
    num_resamples: int = 2000,
    level: float = 0.95,
) -> tuple[Array, Array, Array]:
    """Jacobian norm difference ``JND = E_unknown ||J|| - E_known ||J||`` (Eq. 20), bootstrap CI.

    The two samples are resampled independently with replacement; the interval is the
    percentile bootstrap interval of the resampled differences of means.

    Args:
      norms_known: ``[N_k]`` per-sample norms on known-class test inputs.
      norms_unknown: ``[N_u]`` per-sample norms on unknown-class inputs.
      key: PRNG key of the resampling.
      num_resamples: bootstrap resamples.
      level: two-sided confidence level in ``(0, 1)``.

    Returns:
      ``(estimate, low, high)``, scalars.
    """
    known, unknown = jnp.asarray(norms_known), jnp.asarray(norms_unknown)
    for name, a in (("norms_known", known), ("norms_unknown", unknown)):
        if a.ndim != 1 or a.shape[0] < 1:
            raise ValueError(f"{name} must be a non-empty 1-D array [N]; got shape {a.shape}")
        if not isinstance(a, jax.core.Tracer):  # under jit / vmap only shapes are checked
            bad = int(jnp.sum(~jnp.isfinite(a)))
            if bad:
                raise ValueError(f"{name} has {bad} non-finite values; the norms must be finite")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1; got {num_resamples}")
    diffs = _bootstrap_differences(known, unknown, key, num_resamples)
    alpha = (1 - level) / 2
    low, high = jnp.quantile(diffs, jnp.array([alpha, 1 - alpha]))
    return jnp.mean(unknown) - jnp.mean(known), low, high


@jax.jit(static_argnames="num_resamples")
def _bootstrap_differences(known: Array, unknown: Array, key: Array, num_resamples: int):
    """``[num_resamples]`` differences of means of independent resamples with replacement."""
    key_k, key_u = jax.random.split(key)

    def means(key, a):
        idx = jax.random.randint(key, (num_resamples, a.shape[0]), 0, a.shape[0])
        return jnp.mean(a[idx], axis=1)

    return means(key_u, unknown) - means(key_k, known)
