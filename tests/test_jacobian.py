"""jacosr.jacobian against dense references: jacfwd, finite differences, closed forms, and the
known variances of the stochastic estimators; the host loop's threads and the order of the
XNysTrace kernel's LAPACK calls, checked without timing anything."""

import re
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jacosr import jacobian as jj

# Tiny nets: pure functions of ONE unbatched input returning [d_z]


def normal(seed: int, shape, dtype=np.float32):
    """Fixed test data from NumPy: no PRNG compile per shape."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype)


def mlp(seed: int, in_shape=(3, 4), hidden=6, d_z=5, dtype=np.float32, act=jnp.tanh):
    d = int(np.prod(in_shape))
    w1 = normal(seed, (hidden, d), dtype) / np.sqrt(d)
    b1 = 0.1 * normal(seed + 1000, (hidden,), dtype)
    w2 = normal(seed + 2000, (d_z, hidden), dtype) / np.sqrt(hidden)
    return lambda x: w2 @ act(w1 @ x.reshape(-1) + b1)


def cnn(seed: int):
    """[6, 6, 2] -> conv 3x3 s1 (4 ch) -> leaky relu -> conv 3x3 s2 (5 ch) -> leaky relu -> GAP."""
    w1 = normal(seed, (3, 3, 2, 4)) / 4
    w2 = normal(seed + 1000, (3, 3, 4, 5)) / 6
    dn = ("NHWC", "HWIO", "NHWC")

    def f(x):
        h = jax.lax.conv_general_dilated(x[None], w1, (1, 1), "SAME", dimension_numbers=dn)
        h = jax.nn.leaky_relu(h + 0.1, 0.2)
        h = jax.lax.conv_general_dilated(h, w2, (2, 2), "SAME", dimension_numbers=dn)
        return jnp.mean(jax.nn.leaky_relu(h, 0.2), axis=(0, 1, 2))

    return f


NETS = {
    "mlp": (mlp, (3, 4)),  # d = 12 > d_z = 5: auto is reverse
    "wide_mlp": (lambda s: mlp(s, in_shape=(3,), d_z=7), (3,)),  # d = 3 < d_z = 7: forward
    "cnn": (cnn, (6, 6, 2)),
}


def batch(shape, n=5, seed=100, dtype=jnp.float32):
    return normal(seed, (n, *shape), dtype)


def dense_sqnorms(f, xs):
    return jax.jit(jax.vmap(lambda x: jnp.sum(jax.jacfwd(f)(x) ** 2)))(xs)


def key(seed):
    """A PRNG key whose sampling compiles in a fraction of a second (threefry takes ~3 s on
    XLA CPU); the estimators do not care which implementation made the bits."""
    return jax.random.key(seed, impl="rbg")


def exact_sqnorms(f, xs, **kw):
    """The kernel as users call it: inside jit."""
    return jax.jit(lambda xs: jj.exact_sqnorms(f, xs, **kw))(xs)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# Exact norms


@pytest.mark.parametrize("mode", ["auto", "reverse", "forward"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_exact_norms_equal_dense_jacobian(net, mode):
    make, shape = NETS[net]
    f, xs = make(0), batch(shape)
    want = jnp.sqrt(dense_sqnorms(f, xs))
    np.testing.assert_allclose(jj.jacobian_norms(f, xs, mode=mode), want, rtol=1e-5)
    np.testing.assert_allclose(jnp.sqrt(exact_sqnorms(f, xs, mode=mode)), want, rtol=1e-5)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_linear_map_norm_is_frobenius_norm_of_matrix(mode):
    w = normal(0, (4, 6))
    xs = batch((2, 3), n=3)
    got = jj.jacobian_norms(lambda x: w @ x.reshape(-1), xs, mode=mode)
    np.testing.assert_allclose(got, jnp.full(3, jnp.linalg.norm(w)), rtol=1e-5)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_norms_agree_with_central_differences(x64, seed):
    f = mlp(seed, dtype=np.float64)
    xs = batch((3, 4), n=3, seed=seed, dtype=jnp.float64)
    h = 1e-5

    def fd_sqnorm(x):
        flat = x.reshape(-1)
        eye = jnp.eye(flat.size, dtype=flat.dtype)
        cols = [(f(flat + h * e) - f(flat - h * e)) / (2 * h) for e in eye]
        return jnp.sum(jnp.stack(cols) ** 2)

    want = jnp.sqrt(jax.jit(jax.vmap(fd_sqnorm))(xs))
    # One sample per chunk: the chunks run in the CPU worker threads, which must keep the
    # caller's float64 (jax's x64 setting is thread-local); a float32 step anywhere would warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = jj.jacobian_norms(f, xs, chunk_size=1)
    assert want.dtype == got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=1e-7)


def test_forward_equals_reverse():
    f, xs = cnn(3), batch((6, 6, 2), n=4)
    np.testing.assert_allclose(
        jj.jacobian_norms(f, xs, mode="forward"),
        jj.jacobian_norms(f, xs, mode="reverse"),
        rtol=1e-5,
    )


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_chunked_equals_unchunked(mode):
    f, xs = cnn(0), batch((6, 6, 2), n=7)
    whole = jnp.sqrt(exact_sqnorms(f, xs, mode=mode))
    # 3 samples per call: the last chunk is padded; 1 byte: one basis direction per call.
    np.testing.assert_allclose(jj.jacobian_norms(f, xs, mode=mode, chunk_size=3), whole, rtol=1e-5)
    np.testing.assert_allclose(jj.jacobian_norms(f, xs, mode=mode, max_bytes=1), whole, rtol=1e-5)


def test_plan_splits_the_basis_only_when_one_sample_does_not_fit(monkeypatch):
    bytes_of = lambda size: 1000 + 100 * size  # residuals + cotangents, as XLA reports
    assert jj._plan_blocks(bytes_of, 128, 10**9) == 128
    size = jj._plan_blocks(bytes_of, 128, 4000)
    assert bytes_of(size) <= 4000 and size >= 16
    assert jj._plan_chunk(lambda c: 500 * c, 1000, 10_000, 1) == 20
    assert jj._plan_chunk(lambda c: 500 * c, 7, 10_000, 1) == 7
    assert jj._plan_chunk(lambda c: 500 * c, 7, 10, 1) == 1
    # Two workers in flight: a small batch is split between them.
    assert jj._plan_chunk(lambda c: 500 * c, 7, 10_000, 2) == 4
    assert jj._plan_chunk(lambda c: 500 * c, 1000, 10_000, 2) == 20


class RecordingPool:
    """Stands in for ThreadPoolExecutor: a submitted chunk runs when its result is asked for,
    so the log shows, deterministically, how many chunks the host loop keeps in flight."""

    log: list

    def __init__(self, workers):
        self.log.append(("pool", workers))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, parts):
        i = sum(event[0] == "submit" for event in self.log)
        self.log.append(("submit", i))
        pool = self

        class Future:
            def result(self):
                pool.log.append(("run", i))
                return fn(parts)

        return Future()


@pytest.fixture
def pool_log(monkeypatch):
    log = []
    monkeypatch.setattr(RecordingPool, "log", log, raising=False)
    monkeypatch.setattr(jj, "ThreadPoolExecutor", RecordingPool)
    return log


def test_host_loop_keeps_as_many_chunks_in_flight_as_workers_and_returns_them_in_order(pool_log):
    double = jax.jit(lambda x: 2.0 * x).lower(jnp.zeros(3)).compile()
    out = jj._map_chunks(double, (jnp.arange(10.0),), 3, 2)  # 4 chunks, the last one padded
    np.testing.assert_array_equal(out, 2.0 * np.arange(10.0))
    # Two in flight: chunk 2 is dispatched only once chunk 0 is collected, and so on.
    order = ["s0", "s1", "r0", "s2", "r1", "s3", "r2", "r3"]
    want = [("submit" if e[0] == "s" else "run", int(e[1])) for e in order]
    assert pool_log == [("pool", 2), *want]


def test_chunks_run_in_worker_threads_in_order(x64):
    ran_in = []

    def run(x):
        ran_in.append(threading.get_ident())
        return double(x)

    double = jax.jit(lambda x: 2 * x).lower(jnp.zeros(2, jnp.float64)).compile()
    out = jj._map_chunks(run, (jnp.arange(5.0, dtype=jnp.float64),), 2, 2)
    assert out.dtype == jnp.float64
    np.testing.assert_array_equal(out, 2.0 * np.arange(5.0))
    assert len(ran_in) == 3 and threading.get_ident() not in ran_in


def test_kernel_works_inside_user_jit_with_traced_parameters():
    w = normal(0, (3, 4))
    xs = batch((4,), n=2)

    @jax.jit
    def norms(w, xs):
        return jnp.sqrt(jj.exact_sqnorms(lambda x: jnp.tanh(w @ x), xs))

    want = jnp.sqrt(dense_sqnorms(lambda x: jnp.tanh(w @ x), xs))
    np.testing.assert_allclose(norms(w, xs), want, rtol=1e-5)


def test_second_call_with_same_shapes_does_not_trace_again():
    traces = []
    g = mlp(0)

    def f(x):
        traces.append(1)
        return g(x)

    xs, k = batch((3, 4), n=5), key(0)
    calls = [
        lambda: jj.jacobian_norms(f, xs),  # planned chunks
        lambda: jj.jacobian_norms(f, xs, chunk_size=2),  # padded last chunk
        lambda: jj.estimate_sqnorms(f, xs, k, num_probes=3, chunk_size=5),
        lambda: jj.estimate_sqnorms(f, xs, k, estimator="xnystrace", probes="sphere", chunk_size=5),
        lambda: jj.path_length(f, xs[:2], xs[2:4], num_points=5, chunk_size=10),
    ]
    for call in calls:
        call()
        before = len(traces)
        jax.block_until_ready(call())
        assert len(traces) == before


# Non-finite inputs and embeddings: NaN, never a number


def relu_net(seed: int):
    """A ReLU MLP on [3, 4] inputs, with an infinite embedding but a finite Jacobian where
    x[0, 0] == 0. Each bad sample below has a finite, wrong Jacobian here: ReLU's slope is 0 at
    NaN and 1 at inf, so a NaN input has a zero Jacobian -- the trap the kernels must avoid."""
    g = mlp(seed, d_z=5, act=jax.nn.relu)
    return lambda x: g(x) + jnp.where(x[0, 0] == 0, jnp.inf, 0.0)


def non_finite_batch():
    """[good, NaN in one pixel, inf in one pixel, good but with an infinite embedding, good]."""
    xs = np.array(batch((3, 4), n=5, seed=3))
    xs[1, 2, 1], xs[2, 0, 3], xs[3, 0, 0] = np.nan, np.inf, 0.0
    return jnp.asarray(xs)


BAD = np.array([False, True, True, True, False])


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_non_finite_input_or_embedding_has_nan_exact_norm(mode):
    f, xs = relu_net(0), non_finite_batch()
    got = jj.jacobian_norms(f, xs, mode=mode, chunk_size=2)
    assert np.all(np.isnan(got[BAD])) and np.all(np.isfinite(got[~BAD]))
    np.testing.assert_allclose(got[~BAD], jnp.sqrt(dense_sqnorms(f, xs[~BAD])), rtol=1e-5)
    assert np.array_equal(np.isnan(exact_sqnorms(f, xs, mode=mode)), BAD)


@pytest.mark.parametrize(
    ("estimator", "side"),
    [("hutchinson", "output"), ("hutchinson", "input"), ("xnystrace", "output")],
)
def test_non_finite_input_or_embedding_has_nan_estimate_and_stderr(estimator, side):
    f, xs = relu_net(1), non_finite_batch()
    est, se = jj.estimate_sqnorms(
        f, xs, key(0), estimator=estimator, side=side, num_probes=3, chunk_size=5
    )
    for a in (est, se):
        assert np.array_equal(np.isnan(a), BAD)


def test_non_finite_points_have_nan_path_norms_and_lengths():
    f, ends = relu_net(2), non_finite_batch()
    x0s, x1s = ends[:4], jnp.roll(ends, 1, axis=0)[:4]  # path 0 joins two good samples
    norms = jj.path_norms(f, x0s, x1s, jnp.array([0.0, 0.5, 1.0]))
    assert np.all(np.isfinite(norms[0])) and np.all(np.isnan(norms[1:]))
    lengths = jj.path_length(f, x0s, x1s, num_points=3)
    assert np.array_equal(np.isnan(lengths), [False, True, True, True])


# The XNysTrace kernel and the thread pool (see jj.CPU_WORKERS)


def lapack_chain(compiled) -> list[tuple[str, list[str]]]:
    """The compiled program's LAPACK calls, each with the earlier ones it depends on (through
    any chain of operands of the entry computation)."""
    text = compiled.as_text()
    entry = text[text.index("\nENTRY ") + 1 :]
    operands, calls = {}, []
    for line in entry[: entry.index("\n}")].splitlines()[1:]:
        name, rest = re.match(r"\s*(?:ROOT )?%(\S+) = (.*)$", line).groups()
        rest = re.sub(r"\b(calls|to_apply|condition|body)=%\S+", "", rest)
        operands[name] = set(re.findall(r"%([\w.-]+)", rest))
        if 'custom_call_target="lapack_' in line:
            calls.append(name)

    def ancestors(name, seen):
        for op in operands.get(name, ()):
            if op not in seen:
                seen.add(op)
                ancestors(op, seen)
        return seen

    return [(c, [a for a in calls if a in ancestors(c, set())]) for c in calls]


@pytest.mark.parametrize("side", jj.SIDES)
def test_xnystrace_lapack_calls_run_one_after_another(side):
    # Two batched LAPACK calls at once deadlock jaxlib 0.10's CPU thread pool; the kernel's
    # calls (eigh, QR, triangular solve) must form one chain whatever XLA's scheduler does.
    spec = jax.ShapeDtypeStruct((4, 3, 4), jnp.float32)
    keys = jax.eval_shape(lambda: jax.random.split(key(0), 4))
    compiled = jj._estimate_chunk_jit.lower(
        mlp(0), spec, keys, estimator="xnystrace", num_probes=4, side=side, probes="gaussian"
    ).compile()
    chain = lapack_chain(compiled)
    assert len(chain) == 3
    assert [deps for _, deps in chain] == [[c for c, _ in chain[:i]] for i in range(3)]


def fft_net(x):
    return jnp.abs(jnp.fft.fft(x.reshape(-1)))[:5]


def eigh_net(x):
    m = x.reshape(3, 4)
    return jnp.linalg.eigh(m @ m.T + jnp.eye(3))[0]


PARKING_CALLS = {
    "xnystrace": lambda xs: jj.estimate_sqnorms(mlp(0), xs, key(0), estimator="xnystrace")[0],
    "eigh in f": lambda xs: jj.jacobian_norms(eigh_net, xs),
    "fft in f": lambda xs: jj.jacobian_norms(fft_net, xs),
}


@pytest.mark.parametrize("name", sorted(PARKING_CALLS))
def test_programs_that_park_pool_threads_run_one_chunk_at_a_time(pool_log, name):
    xs = batch((3, 4), n=6)
    assert jnp.all(jnp.isfinite(PARKING_CALLS[name](xs)))
    assert pool_log == []  # no worker threads
    jj.jacobian_norms(mlp(0), xs)  # a plain net: two chunks at a time
    assert pool_log[0] == ("pool", jj.CPU_WORKERS)


def test_xnystrace_at_sizes_that_used_to_hang_finishes():
    # 2 x 256 samples at k = 16 hung for good within two runs when both chunks ran at once
    # (both pool threads parked in lapack_ssyevd_ffi); now each chunk runs alone.
    f, xs = mlp(0, hidden=8, d_z=32), batch((3, 4), n=512)
    for i in range(3):
        est, _ = jj.estimate_sqnorms(
            f, xs, key(i), estimator="xnystrace", num_probes=16, chunk_size=256
        )
        assert jnp.all(jnp.isfinite(est))


# Stochastic estimates


def operator(f, x, side):
    """A with ||J||_F^2 = tr(A): J J^T (output-side probes) or J^T J (input-side probes)."""
    j = jax.jacfwd(f)(x).reshape(-1, x.size)
    return j @ j.T if side == "output" else j.T @ j


def theoretical_variance(a, probes):
    fro2, n = jnp.sum(a**2), a.shape[0]
    return {
        "gaussian": 2 * fro2,
        "rademacher": 2 * (fro2 - jnp.sum(jnp.diag(a) ** 2)),
        "sphere": 2 * n / (n + 2) * (fro2 - jnp.trace(a) ** 2 / n),
    }[probes]


def repeated(x, m):
    return jnp.repeat(x[None], m, axis=0)


@pytest.mark.parametrize("probes", sorted(jj.PROBES))
@pytest.mark.parametrize("side", jj.SIDES)
def test_per_probe_variance_matches_theory(side, probes):
    f, x = mlp(2), batch((3, 4), n=1)[0]
    k = 40_000
    _, se = jj.hutchinson_sqnorms(f, x[None], key(1)[None], num_probes=k, side=side, probes=probes)
    want = theoretical_variance(operator(f, x, side), probes)
    np.testing.assert_allclose(se[0] ** 2 * k, want, rtol=0.2)


@pytest.mark.parametrize("probes", sorted(jj.PROBES))
@pytest.mark.parametrize("side", jj.SIDES)
def test_hutchinson_is_unbiased_and_its_standard_error_is_calibrated(side, probes):
    f, x = mlp(1), batch((3, 4), n=1, seed=1)[0]
    exact = jnp.sum(jax.jacfwd(f)(x) ** 2)
    m = 2000
    keys = jax.random.split(key(1), m)
    est, se = jax.jit(
        lambda xs, keys: jj.hutchinson_sqnorms(
            f, xs, keys, num_probes=128, side=side, probes=probes
        )
    )(repeated(x, m), keys)
    assert abs(jnp.mean(est) - exact) < 3 * jnp.std(est) / np.sqrt(m)
    # se^2 is unbiased for the variance of the estimate; z-scores are close to standard normal
    # (at k = 32 skewness still widens them to ~1.2; at k = 128 to ~1.05).
    assert 0.9 < jnp.mean(se**2) / jnp.var(est) < 1.1
    assert 0.9 < jnp.std((est - exact) / se) < 1.15


@pytest.mark.parametrize(("side", "seed"), [("output", 0), ("input", 1)])
def test_xnystrace_is_unbiased_and_beats_hutchinson_on_a_low_rank_jacobian(side, seed):
    u, _ = jnp.linalg.qr(normal(seed, (8, 8)))
    v, _ = jnp.linalg.qr(normal(seed + 1, (12, 8)))
    spectrum = jnp.array([8.0, 4.0, 2.0, 0.3, 0.1, 0.05, 0.02, 0.01])
    a = (u * spectrum) @ v.T  # [8, 12], numerically rank 3
    f = lambda x: a @ x.reshape(-1) + 0.01 * jnp.tanh(x.reshape(-1)[:8])
    x = batch((3, 4), n=1, seed=seed)[0]
    exact = jnp.sum(jax.jacfwd(f)(x) ** 2)
    m = 500
    keys = jax.random.split(key(seed), m)
    xs = repeated(x, m)
    kw = dict(num_probes=4, side=side, probes="gaussian")
    xny, _ = jj.xnystrace_sqnorms(f, xs, keys, **kw)
    hut, _ = jj.hutchinson_sqnorms(f, xs, keys, **kw)
    assert abs(jnp.mean(xny) - exact) < 3 * jnp.std(xny) / np.sqrt(m)
    assert jnp.var(xny) < 0.1 * jnp.var(hut)


def test_estimates_do_not_depend_on_chunking():
    # The default threefry keys: vmap of rbg keys does not reproduce their unbatched streams.
    f, xs, k = mlp(1), batch((3, 4), n=5), jax.random.key(4)
    whole = jj.estimate_sqnorms(f, xs, k, num_probes=3, chunk_size=5)
    chunked = jj.estimate_sqnorms(f, xs, k, num_probes=3, chunk_size=2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)


def test_single_probe_has_nan_standard_error():
    f, xs = mlp(0), batch((3, 4), n=2)
    est, se = jj.estimate_sqnorms(f, xs, key(0), num_probes=1)
    assert jnp.all(jnp.isfinite(est)) and jnp.all(jnp.isnan(se))


# Paths


def test_path_length_equals_fine_finite_difference_polyline(x64):
    f = mlp(5)
    x0s = batch((3, 4), n=2, seed=1, dtype=jnp.float64)
    x1s = batch((3, 4), n=2, seed=2, dtype=jnp.float64)
    ts = jnp.linspace(0.0, 1.0, 20_001)
    zs = jax.vmap(jax.vmap(f))(jj.path_points(x0s, x1s, ts))  # [P, T, d_z]
    polyline = jnp.sum(jnp.linalg.norm(jnp.diff(zs, axis=1), axis=2), axis=1)
    got = jj.path_length(f, x0s, x1s, num_points=257)
    np.testing.assert_allclose(got, polyline, rtol=1e-5)


def test_path_length_of_linear_map_is_norm_of_mapped_displacement():
    w = normal(0, (4, 6))
    x0s, x1s = batch((6,), n=3, seed=1), batch((6,), n=3, seed=2)
    got = jj.path_length(lambda x: w @ x, x0s, x1s, num_points=3)
    np.testing.assert_allclose(got, jnp.linalg.norm((x1s - x0s) @ w.T, axis=1), rtol=1e-5)


def test_path_norms_equal_exact_norms_at_interpolated_points():
    f = cnn(2)
    x0s, x1s = batch((6, 6, 2), n=2, seed=1), batch((6, 6, 2), n=2, seed=2)
    ts = jnp.array([0.0, 0.25, 0.5, 1.0])
    got = jj.path_norms(f, x0s, x1s, ts)
    assert got.shape == (2, 4)
    np.testing.assert_allclose(got[:, 0], jj.jacobian_norms(f, x0s), rtol=1e-5)
    np.testing.assert_allclose(got[:, -1], jj.jacobian_norms(f, x1s), rtol=1e-5)
    mid = 0.5 * x0s + 0.5 * x1s
    np.testing.assert_allclose(got[:, 2], jnp.sqrt(dense_sqnorms(f, mid)), rtol=1e-5)


# Jacobian norm difference (Eq. 20)


def test_norm_difference_interval_contains_estimate():
    known = normal(0, (40,))
    unknown = 1.5 + normal(1, (30,))
    est, low, high = jj.norm_difference(known, unknown, key(2))
    np.testing.assert_allclose(est, jnp.mean(unknown) - jnp.mean(known), rtol=1e-6)
    assert low < est < high
    # Closed form of the point estimate, either sign.
    est, _, _ = jj.norm_difference(jnp.array([1.0, 2.0, 6.0]), jnp.array([4.0, 6.0]), key(3))
    np.testing.assert_allclose(est, 2.0, rtol=1e-6)
    est, _, _ = jj.norm_difference(jnp.array([4.0]), jnp.array([1.0, 2.0]), key(3))
    np.testing.assert_allclose(est, -2.5, rtol=1e-6)


def test_norm_difference_interval_covers_true_difference_at_its_level():
    m, true_diff = 300, 0.5

    def one(key):
        kk, ku, kb = jax.random.split(key, 3)
        known = jax.random.normal(kk, (60,))
        unknown = true_diff + 2.0 * jax.random.normal(ku, (50,))
        _, low, high = jj.norm_difference(known, unknown, kb, num_resamples=400, level=0.9)
        return (low <= true_diff) & (true_diff <= high)

    coverage = jnp.mean(jax.jit(jax.vmap(one))(jax.random.split(key(0), m)))
    assert 0.84 < coverage < 0.95


# Bad inputs: each names what is wrong


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="unknown mode 'sideways'; valid: auto, forward, reverse"):
        jj.jacobian_norms(mlp(0), batch((3, 4)), mode="sideways")


@pytest.mark.parametrize(
    ("f", "shape"),
    [(lambda x: jnp.outer(x, x), "(3, 3)"), (lambda x: jnp.sum(x), "()")],
)
def test_non_1d_output_is_refused(f, shape):
    with pytest.raises(ValueError, match=r"1-D embedding z: \[d_z\].*got " + re.escape(shape)):
        jj.jacobian_norms(f, batch((3,)))


def test_integer_output_is_refused():
    with pytest.raises(ValueError, match="floating embedding; got dtype int32"):
        jj.exact_sqnorms(lambda x: jnp.round(x).astype(jnp.int32), batch((3,)))


def test_bad_batches_are_refused():
    with pytest.raises(ValueError, match=r"xs must be a non-empty batch \[B, \.\.\.\]"):
        jj.jacobian_norms(mlp(0), jnp.zeros((0, 3, 4)))
    with pytest.raises(ValueError, match="xs must be floating; got dtype int32"):
        jj.jacobian_norms(mlp(0), jnp.zeros((2, 3, 4), jnp.int32))
    with pytest.raises(ValueError, match="max_bytes must be positive; got 0"):
        jj.jacobian_norms(mlp(0), batch((3, 4)), max_bytes=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive number of samples; got 0"):
        jj.jacobian_norms(mlp(0), batch((3, 4)), chunk_size=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(estimator="hutch"), "unknown estimator 'hutch'; valid: hutchinson, xnystrace"),
        (dict(probes="uniform"), "unknown probe distribution 'uniform'; valid: gaussian, "),
        (dict(side="left"), "unknown side 'left'; valid: input, output"),
        (dict(num_probes=0), "hutchinson needs num_probes >= 1; got 0"),
        (
            dict(estimator="xnystrace", probes="rademacher"),
            "xnystrace needs rotation-invariant probes; got 'rademacher'; valid: gaussian, sphere",
        ),
        (
            dict(estimator="xnystrace", num_probes=6),
            r"xnystrace needs num_probes <= 5 \(the output dimension\); got 6",
        ),
        (dict(estimator="xnystrace", num_probes=1), "xnystrace needs num_probes >= 2; got 1"),
    ],
)
def test_bad_estimator_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        jj.check_estimator(mlp(0), batch((3, 4))[0], **kwargs)
    with pytest.raises(ValueError, match=message):
        jj.estimate_sqnorms(mlp(0), batch((3, 4)), key(0), **kwargs)


@pytest.mark.parametrize("estimator", sorted(jj.ESTIMATORS))
def test_each_estimator_has_valid_default_probes(estimator):
    f, xs = mlp(0), batch((3, 4), n=2)
    default = jj.check_estimator(f, xs[0], estimator=estimator)
    assert default == jj.ESTIMATOR_PROBES[estimator][0]
    kw = dict(estimator=estimator, chunk_size=2)
    est, _ = jj.estimate_sqnorms(f, xs, key(0), **kw)
    np.testing.assert_array_equal(est, jj.estimate_sqnorms(f, xs, key(0), probes=default, **kw)[0])


def test_kernel_needs_one_key_per_sample():
    with pytest.raises(ValueError, match=r"one PRNG key per sample, shape \[5\]; got \(\)"):
        jj.hutchinson_sqnorms(mlp(0), batch((3, 4)), key(0))


def test_bad_paths_are_refused():
    xs = batch((3, 4))
    with pytest.raises(ValueError, match="x0s and x1s must have the same shape"):
        jj.path_length(mlp(0), xs, xs[:2])
    with pytest.raises(ValueError, match="num_points must be at least 2; got 1"):
        jj.path_length(mlp(0), xs, xs, num_points=1)
    with pytest.raises(ValueError, match=r"x1s must be a non-empty batch"):
        jj.path_norms(mlp(0), xs, jnp.zeros((0, 3, 4)), jnp.array([0.5]))


def test_bad_norm_difference_arguments_are_refused():
    a, k = jnp.ones(4), key(0)
    with pytest.raises(ValueError, match=r"norms_known must be a non-empty 1-D array \[N\]"):
        jj.norm_difference(jnp.ones((2, 2)), a, k)
    with pytest.raises(ValueError, match=r"norms_unknown must be a non-empty 1-D array"):
        jj.norm_difference(a, jnp.ones(0), k)
    with pytest.raises(ValueError, match="norms_known has 1 non-finite values"):
        jj.norm_difference(a.at[0].set(jnp.inf), a, k)
    with pytest.raises(ValueError, match=r"level must lie in \(0, 1\); got 1.5"):
        jj.norm_difference(a, a, k, level=1.5)
    with pytest.raises(ValueError, match="num_resamples must be at least 1; got 0"):
        jj.norm_difference(a, a, k, num_resamples=0)
