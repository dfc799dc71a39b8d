"""The jit-compatible kernels: per-sample (squared) Jacobian norms of one chunk of inputs.

Every kernel takes ``f`` and a batch ``xs: [B, ...]`` and returns ``[B]`` values. ``f`` is a
pure function of ONE unbatched input, in one of two forms:

* ``f(x) -> z`` (``params=None``, the default), e.g. a closure over a model's arrays;
* ``f(params, x) -> z`` with ``params`` (any pytree of arrays) passed as ``params=``, e.g.
  ``jacosr.models.embedding_apply(graphdef)`` with a model state. Under ``jit`` the parameters
  are then traced arguments rather than constants: one compiled program serves every state of
  the same architecture (see :mod:`jacosr.jacobian.driver`).

``x`` may have any shape (e.g. ``[H, W, C]``) and ``z: [d_z]``; ``J = df/dx`` is ``[d_z, d]``
with ``d = x.size``. Everything here is about ``||J||_F``, the paper's Jacobian norm:

* :func:`exact_sqnorms`: ``||J||_F^2`` by ``min(d, d_z)`` VJPs or JVPs per sample;
* :func:`hutchinson_sqnorms`, :func:`xnystrace_sqnorms`: unbiased stochastic estimates of it
  from ``k`` probes per sample (:data:`PROBES`), with standard errors.

A norm that cannot be computed is NaN, never a number: the kernels return NaN for a sample
whose input, embedding or Jacobian (norm, estimate) is not finite, so that such a sample does
not pass for a perfectly known one (a NaN input through a ReLU has a zero Jacobian).

Use them inside your own ``jit`` (their argument checks run at trace time, on shapes); for
batches too large for one program, the drivers (:func:`jacosr.jacobian.jacobian_norms`,
:func:`jacosr.jacobian.estimate_sqnorms`) run them chunk by chunk under a memory budget.
"""

import functools
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from matfree import stochtrace

Array = jax.Array
Fn = Callable[..., Array]
"""``f(x) -> z`` or, with ``params``, ``f(params, x) -> z``."""


# The function convention and the checks shared by every entry point


def _bind(f: Fn, params: Any) -> Callable[[Array], Array]:
    """``f`` as a function of ``x`` alone: ``f`` itself, or ``x -> f(params, x)``."""
    return f if params is None else functools.partial(f, params)


def _apply(f: Fn, params: Any, x: Array) -> Array:
    return _bind(f, params)(x)


_apply_jit = jax.jit(_apply, static_argnums=0)


def _abstract(tree: Any) -> Any:
    """The shapes and dtypes of a pytree of arrays, without their placement: the compiled
    programs are looked up by these alone, so a state restored from a checkpoint (committed to
    its device) finds the programs of a state fresh from training (uncommitted)."""

    def spec(a):
        aval = jax.typeof(a)
        return jax.ShapeDtypeStruct(aval.shape, aval.dtype, weak_type=aval.weak_type)

    return jax.tree.map(spec, tree)


def _registry_get(registry: dict, name: str, what: str):
    if name not in registry:
        valid = ", ".join(sorted(registry))
        raise ValueError(f"unknown {what} {name!r}; valid: {valid}")
    return registry[name]


def _embedding_shape(f: Fn, params: Any, x_like) -> tuple[int, int]:
    """Check that ``f`` maps one unbatched input to a 1-D floating embedding; return (d, d_z)."""
    # jit's trace cache, keyed on f (static) and the avals of params and x, makes repeated
    # checks free: f is not traced again for a second state of the same architecture.
    z = _apply_jit.eval_shape(f, _abstract(params), x_like)
    if not hasattr(z, "shape") or len(z.shape) != 1:
        shape = getattr(z, "shape", type(z).__name__)
        raise ValueError(
            f"f must return a 1-D embedding z: [d_z] for one unbatched input; got {shape}"
        )
    if not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(f"f must return a floating embedding; got dtype {z.dtype}")
    return math.prod(x_like.shape), z.shape[0]


def _check_batch(xs, name: str = "xs") -> None:
    if not hasattr(xs, "shape"):
        kind = type(xs).__name__
        raise ValueError(f"{name} must be an array [B, ...] (NumPy or JAX); got a {kind}")
    if len(xs.shape) < 1 or xs.shape[0] < 1:
        raise ValueError(f"{name} must be a non-empty batch [B, ...]; got shape {xs.shape}")
    if not jnp.issubdtype(xs.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be floating (it is differentiated); got dtype {xs.dtype}: convert it, "
            f"e.g. np.asarray({name}, np.float32)"
        )


def _example(xs) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(xs.shape[1:], xs.dtype)


def _nan_unless_finite(out: Array, *inputs: Array) -> Array:
    """``out`` if it and every array of ``inputs`` are finite everywhere, else NaN (all of it).

    A non-finite input or embedding can still give finite derivatives (a NaN through a ReLU
    has slope 0), and a zero norm would score as the most familiar sample there is."""
    ok = jnp.all(jnp.isfinite(out))
    for a in inputs:
        ok &= jnp.all(jnp.isfinite(a))
    return jnp.where(ok, out, jnp.nan)


# Exact norms


def _reverse_block(f: Callable, x: Array, start: Array, size: int) -> Array:
    """sum_{i in [start, start+size)} ||J^T e_i||^2 by one VJP and ``size`` pullbacks.

    Basis indices at or past ``d_z`` give zero cotangents, so a padded last block adds 0."""
    z, pullback = jax.vjp(f, x)
    basis = jax.nn.one_hot(start + jnp.arange(size), z.shape[0], dtype=z.dtype)
    (rows,) = jax.vmap(pullback)(basis)
    return _nan_unless_finite(jnp.sum(jnp.square(rows)), x, z)


def _forward_block(f: Callable, x: Array, start: Array, size: int) -> Array:
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


def _exact_block(f: Fn, params: Any, xs: Array, start: Array, *, mode: str, size: int) -> Array:
    """``[B]`` sums of squares over the basis block ``[start, start + size)`` (the drivers split
    the basis when one sample's full Jacobian does not fit their budget)."""
    g, block = _bind(f, params), _BLOCKS[mode]
    return jax.vmap(lambda x: block(g, x, start, size))(xs)


def exact_sqnorms(f: Fn, xs: Array, *, params: Any = None, mode: str = "auto") -> Array:
    """Exact per-sample squared Frobenius norms ``||df/dx||_F^2`` of one chunk (jit-compatible).

    Args:
      f: pure function of ONE unbatched input, ``x: [...] -> z: [d_z]``, or, with ``params``,
        ``f(params, x) -> z``.
      xs: ``[B, ...]`` inputs; ``xs[b]`` has the shape ``f`` takes.
      params: None for ``f(x)``, else the pytree ``f`` takes first.
      mode: ``"reverse"`` (d_z VJPs per sample: one ``jax.vjp`` and a ``vmap`` of the pullback
        over the basis cotangents), ``"forward"`` (d JVPs per sample), or ``"auto"``: the
        smaller of ``d = x.size`` and ``d_z``.

    Returns:
      ``[B]`` squared norms, NaN where the input, the embedding or the norm is not finite. The
      Jacobian rows are reduced to a sum of squares inside the chunk; memory grows as
      ``B * min(d, d_z)`` activations, so prefer :func:`jacosr.jacobian.jacobian_norms` for
      large batches.
    """
    _check_batch(xs)
    d, d_z = _embedding_shape(f, params, _example(xs))
    mode = resolve_mode(mode, d, d_z)
    size = d_z if mode == "reverse" else d
    return _exact_block(f, params, xs, jnp.zeros((), jnp.int32), mode=mode, size=size)


# Probes and the arguments of the stochastic estimators


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
:func:`jacosr.jacobian.estimate_sqnorms`): Hutchinson any with ``E[v v^T] = I`` (Rademacher's
per-probe variance is the least, see :func:`hutchinson_sqnorms`); XNysTrace only
rotation-invariant ones, which its resphering step requires."""

MIN_PROBES = {"hutchinson": 1, "xnystrace": 2}
"""The fewest probes per sample each estimator takes (XNysTrace leaves one out at a time)."""


def check_estimator(
    f: Fn,
    x,
    *,
    params: Any = None,
    estimator: str = "hutchinson",
    num_probes: int = 4,
    side: str = "output",
    probes: str | None = None,
) -> str:
    """Refuse the arguments :func:`jacosr.jacobian.estimate_sqnorms` would refuse, from shapes
    alone (nothing is compiled or computed); return the probe distribution it would use.

    Entry points call it before a long run (e.g. before training), so that a bad combination
    fails at once.

    Args:
      f, params: as in :func:`exact_sqnorms`.
      x: one unbatched input, or its ``jax.ShapeDtypeStruct``.
      estimator, num_probes, side, probes: as in :func:`jacosr.jacobian.estimate_sqnorms`.
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
    d, d_z = _embedding_shape(f, params, jax.ShapeDtypeStruct(x.shape, x.dtype))
    n = d_z if side == "output" else d
    if estimator == "xnystrace" and num_probes > n:
        raise ValueError(
            f"xnystrace needs num_probes <= {n} (the {side} dimension); got {num_probes}"
        )
    return probes


def _check_kernel_args(f, params, xs, keys, estimator, num_probes, side, probes) -> str:
    """Refuse what the kernel cannot do; return the probe distribution (see check_estimator)."""
    _check_batch(xs)
    probes = check_estimator(
        f,
        _example(xs),
        params=params,
        estimator=estimator,
        num_probes=num_probes,
        side=side,
        probes=probes,
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


# Hutchinson


def _hutchinson_one(f: Callable, x: Array, key: Array, num_probes: int, side: str, probes: str):
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
    params: Any = None,
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
      f, params: as in :func:`exact_sqnorms`.
      xs: ``[B, ...]`` inputs.
      keys: ``[B]`` PRNG keys, one per sample, so that results do not depend on how a driver
        chunks the batch.
      num_probes: ``k`` probes per sample.
      side: ``"output"`` or ``"input"``.
      probes: ``"rademacher"``, ``"sphere"`` or ``"gaussian"``.

    Returns:
      ``(estimate, stderr)``, each ``[B]``: the mean of the ``k`` per-probe values and
      ``std(ddof=1) / sqrt(k)`` (NaN for ``k = 1``); both NaN where the input, the embedding
      or a per-probe value is not finite.
    """
    probes = _check_kernel_args(f, params, xs, keys, "hutchinson", num_probes, side, probes)
    g = _bind(f, params)
    return jax.vmap(lambda x, key: _hutchinson_one(g, x, key, num_probes, side, probes))(xs, keys)


# XNysTrace


def _xnystrace_loo(matvec: Callable[[Array], Array], omega: Array) -> Array:
    """matfree's ``k`` leave-one-out XNysTrace estimates of ``tr(A)``, ``omega: [k, n]``, with
    the kernel's LAPACK calls in one chain of data dependencies.

    The estimator factors ``Omega^T A Omega`` (eigh) and, independently of it, ``Omega`` (QR,
    then a triangular solve of its R). Independent calls may run at once on XLA CPU's thread
    pool, and in jaxlib 0.10 two batched LAPACK calls at once on 2 cores deadlock (see
    :data:`jacosr.jacobian.CPU_WORKERS`; caught as eigh beside the triangular solve, with
    XLA's concurrency-optimised scheduler). So the QR reads the Nystrom factor computed from
    the eigh: its input is NaN where that factor is not finite, where the estimate is NaN
    anyway. matfree calls ``nystrom`` before ``qr_r``; were that to change, tracing would fail
    here.
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


def _xnystrace_one(f: Callable, x: Array, key: Array, num_probes: int, side: str, probes: str):
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
    params: Any = None,
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
    resphering step requires; hence no Rademacher here. The square root is biased. On a
    trained network, whose Jacobian has a low effective rank, its error at equal ``k`` is far
    below Hutchinson's (``benchmarks/jacobian.py``; measured: README, "Speed").

    On XLA CPU the kernel calls batched LAPACK (eigh, QR, a triangular solve), which jaxlib 0.10
    runs on XLA's thread pool in a way that deadlocks when two such calls run at once. Its
    calls are chained so that one program runs one at a time, whatever XLA's scheduler; the
    drivers run such programs one at a time (:data:`jacosr.jacobian.CPU_WORKERS`). Do not run
    two programs containing this kernel at once from two threads of your own on jaxlib 0.10.

    Why matfree: ``stochtrace.leave_one_out_xnystrace`` is the maintained implementation of the
    leave-one-out algebra (QR downdates, resphering, rank-deficient cases), which is easy to get
    subtly wrong by hand; here we only supply the operator, order its LAPACK calls and aggregate
    its ``k`` leave-one-out estimates. (Hutchinson above is a few lines on ``jax.random`` and
    needs the ddof=1 standard error and per-probe values, which matfree's estimators do not
    expose, so it is written out.)

    Args:
      f, params, xs, keys, side: as in :func:`hutchinson_sqnorms`.
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
    probes = _check_kernel_args(f, params, xs, keys, "xnystrace", num_probes, side, probes)
    g = _bind(f, params)
    return jax.vmap(lambda x, key: _xnystrace_one(g, x, key, num_probes, side, probes))(xs, keys)


ESTIMATORS = {"hutchinson": hutchinson_sqnorms, "xnystrace": xnystrace_sqnorms}
