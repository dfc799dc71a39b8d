"""jacosr.jacobian's drivers: chunked norms against dense references, finite differences and
closed forms; the chunk plan; the host loop's threads and the single-flight rule for programs
that park XLA CPU pool threads, checked without timing anything; and what compiles when: a
second model state of the same architecture traces and compiles nothing."""

import contextlib
import threading
import warnings
from collections import Counter
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jacobian_nets import batch, cnn, cnn_params, dense_norms, key, mlp, mlp_params, normal

from jacosr import jacobian as jj
from jacosr.jacobian import driver
from jacosr.models import ModelConfig, OpenSetNet, embedding_apply, embedding_fn, split_model

TRACE = "/jax/core/compile/jaxpr_trace_duration"
LOWER = "/jax/core/compile/jaxpr_to_mlir_module_duration"
COMPILE = "/jax/core/compile/backend_compile_duration"


@contextlib.contextmanager
def jax_events():
    """Counts of jax's monitoring events (traces, lowerings, XLA compilations) in the block."""
    counts = Counter()

    def listen(event, duration_secs, **kwargs):
        counts[event] += 1

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield counts
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)


# Exact norms


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_linear_map_norm_is_frobenius_norm_of_matrix(mode):
    w = normal(0, (4, 6))
    got = jj.jacobian_norms(lambda x: w @ x.reshape(-1), batch((2, 3), n=3), mode=mode)
    np.testing.assert_allclose(got, np.full(3, np.linalg.norm(w)), rtol=1e-5)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@partial(jax.jit, static_argnums=0)
def central_difference_sqnorms(f, params, xs, h=1e-5):
    def sqnorm(x):
        flat = x.reshape(-1)
        eye = jnp.eye(flat.size, dtype=flat.dtype)
        cols = jax.vmap(lambda e: (f(params, flat + h * e) - f(params, flat - h * e)) / (2 * h))
        return jnp.sum(cols(eye) ** 2)

    return jax.vmap(sqnorm)(xs)


@pytest.mark.parametrize("seed", [0, 1])
def test_exact_norms_agree_with_central_differences(x64, seed):
    params = mlp_params(seed, dtype=np.float64)
    xs = batch((3, 4), n=3, seed=seed, dtype=np.float64)
    want = np.sqrt(central_difference_sqnorms(mlp, params, xs))
    # One sample per chunk: the chunks run in the CPU worker threads, which must keep the
    # caller's float64 (jax's x64 setting is thread-local); a float32 step anywhere would warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = jj.jacobian_norms(mlp, xs, params=params, chunk_size=1)
    assert want.dtype == got.dtype == np.float64
    np.testing.assert_allclose(got, want, rtol=1e-7)


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_chunked_and_split_basis_equal_dense_norms(mode):
    params, xs = cnn_params(0), batch((6, 6, 2), n=7)
    want = dense_norms(cnn, params, xs)
    # 3 samples per call: the last chunk is padded; 1 byte: one basis direction per call.
    for kw in (dict(chunk_size=3), dict(max_bytes=1)):
        got = jj.jacobian_norms(cnn, xs, params=params, mode=mode, **kw)
        np.testing.assert_allclose(got, want, rtol=1e-5)


def test_plan_splits_the_basis_only_when_one_sample_does_not_fit():
    bytes_of = lambda size: 1000 + 100 * size  # residuals + cotangents, as XLA reports
    assert driver._plan_blocks(bytes_of, 128, 10**9) == 128
    size = driver._plan_blocks(bytes_of, 128, 4000)
    assert bytes_of(size) <= 4000 and size >= 16
    assert driver._plan_chunk(lambda c: 500 * c, 1000, 10_000, 1) == 20
    assert driver._plan_chunk(lambda c: 500 * c, 7, 10_000, 1) == 7
    assert driver._plan_chunk(lambda c: 500 * c, 7, 10, 1) == 1
    # Two workers in flight: a small batch is split between them.
    assert driver._plan_chunk(lambda c: 500 * c, 7, 10_000, 2) == 4
    assert driver._plan_chunk(lambda c: 500 * c, 1000, 10_000, 2) == 20
    # Evened out over a multiple of the workers: 539 samples, at most 247 per call, run as
    # 4 x 135 (not 3 x 247); at most 20 per call, as 28 x 20 (not 27).
    assert driver._plan_chunk(lambda c: 40 * c, 539, 9880, 2) == 135
    assert driver._plan_chunk(lambda c: 500 * c, 539, 10_000, 2) == 20


# What compiles when


def tiny_model(key: jax.Array) -> OpenSetNet:
    """A small architecture: MLP with BatchNorm, cosine head."""
    config = ModelConfig(backbone="mlp", embed_dim=4, width=8)
    return OpenSetNet(
        config, image_shape=(4, 4, 1), num_classes=3, head="cosine", rngs=nnx.Rngs(key)
    )


@jax.jit
def tiny_state(key: jax.Array):
    """The arrays of :func:`tiny_model`, moved as a jitted training step would move them."""
    return jax.tree.map(lambda a: a * 1.5 + 0.1, split_model(tiny_model(key))[1])


def tiny_model_state(seed: int, *, committed: bool = False):
    """The same architecture split again (an equal graphdef) with arrays from ``seed``;
    ``committed`` to the device, as a state restored from a checkpoint is."""
    graphdef, _ = split_model(nnx.eval_shape(lambda: tiny_model(key(seed))))
    state = tiny_state(key(seed))
    return graphdef, jax.device_put(state, jax.devices()[0]) if committed else state


DRIVERS = {
    "exact": lambda f, xs, params: jj.jacobian_norms(f, xs, params=params),
    "hutchinson": lambda f, xs, params: jj.estimate_sqnorms(
        f, xs, jax.random.key(0), params=params, num_probes=3
    )[0],
    "path length": lambda f, xs, params: jj.path_length(
        f, xs[:2], xs[2:4], params=params, num_points=5
    ),
}


def test_a_second_model_state_traces_and_compiles_nothing():
    xs = batch((4, 4, 1), n=6)
    graphdef, first = tiny_model_state(0)
    # Built again (an equal graphdef) with other arrays, placed as a restored checkpoint's.
    graphdef2, second = tiny_model_state(1, committed=True)
    assert graphdef2 == graphdef
    results = {}
    for name, run in DRIVERS.items():
        with jax_events() as counts:
            results[name] = run(embedding_apply(graphdef), xs, first)
        assert counts[LOWER] > 0, name  # the first state compiles the driver's programs
        with jax_events() as counts:
            results[name] = results[name], run(embedding_apply(graphdef2), xs, second)
        assert counts[TRACE] == counts[LOWER] == counts[COMPILE] == 0, (name, counts)
    # The second state's results are its own: the exact norms equal its dense Jacobians'.
    before, after = results["exact"]
    np.testing.assert_allclose(
        after, dense_norms(embedding_fn(graphdef2, second), None, xs), rtol=1e-5
    )
    assert not np.allclose(before, after)
    for name in ("hutchinson", "path length"):
        assert not np.allclose(*results[name])


def test_a_given_chunk_size_compiles_one_program():
    f, xs, k = partial(mlp, mlp_params(3)), batch((3, 4), n=5), key(0)  # a new f: new programs
    with jax_events() as counts:
        jj.estimate_sqnorms(f, xs, k, num_probes=2, chunk_size=5)
    assert counts[LOWER] == 1


# The host loop


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
    monkeypatch.setattr(driver, "ThreadPoolExecutor", RecordingPool)
    return log


def compiled_double(dtype):
    return jax.jit(lambda x: 2 * x).lower(jax.ShapeDtypeStruct((3,), dtype)).compile()


def test_host_loop_keeps_as_many_chunks_in_flight_as_workers_and_returns_them_in_order(pool_log):
    double = compiled_double(np.float32)
    out = driver._map_chunks(double, (np.arange(10.0, dtype=np.float32),), 3, 2)  # 4 chunks
    np.testing.assert_array_equal(out, 2.0 * np.arange(10.0))
    # Two in flight: chunk 2 is dispatched only once chunk 0 is collected, and so on.
    order = ["s0", "s1", "r0", "s2", "r1", "s3", "r2", "r3"]
    want = [("submit" if e[0] == "s" else "run", int(e[1])) for e in order]
    assert pool_log == [("pool", 2), *want]


def test_chunks_run_in_worker_threads_in_order(x64):
    ran_in = []
    double = compiled_double(np.float64)

    def run(x):
        ran_in.append(threading.get_ident())
        return double(x)

    out = driver._map_chunks(run, (np.arange(7.0),), 3, 2)  # the last chunk padded
    assert isinstance(out, np.ndarray) and out.dtype == np.float64
    np.testing.assert_array_equal(out, 2.0 * np.arange(7.0))
    assert len(ran_in) == 3 and threading.get_ident() not in ran_in


def fft_net(x):
    return jnp.abs(jnp.fft.fft(x.reshape(-1)))[:5]


def eigh_net(x):
    m = x.reshape(3, 4)
    return jnp.linalg.eigh(m @ m.T + jnp.eye(3))[0]


PARKING_CALLS = {
    "xnystrace": lambda xs: jj.estimate_sqnorms(
        mlp, xs, key(0), params=mlp_params(0), estimator="xnystrace"
    )[0],
    "eigh in f": lambda xs: jj.jacobian_norms(eigh_net, xs),
    "fft in f": lambda xs: jj.jacobian_norms(fft_net, xs),
}


@pytest.mark.parametrize("name", sorted(PARKING_CALLS))
def test_programs_that_park_pool_threads_run_one_chunk_at_a_time(pool_log, name):
    xs = batch((3, 4), n=6)
    assert np.all(np.isfinite(PARKING_CALLS[name](xs)))
    assert pool_log == []  # no worker threads
    jj.jacobian_norms(mlp, xs, params=mlp_params(0))  # a plain net: two chunks at a time
    assert pool_log[0] == ("pool", jj.CPU_WORKERS)


def test_xnystrace_at_sizes_that_used_to_hang_finishes():
    # 2 x 256 samples at k = 16 hung for good within two runs when both chunks ran at once
    # (both pool threads parked in lapack_ssyevd_ffi); now each chunk runs alone.
    params, xs = mlp_params(0, hidden=8, d_z=32), batch((3, 4), n=512)
    for i in range(3):
        est, _ = jj.estimate_sqnorms(
            mlp, xs, key(i), params=params, estimator="xnystrace", num_probes=16, chunk_size=256
        )
        assert np.all(np.isfinite(est))


# Stochastic estimates


def test_estimates_do_not_depend_on_chunking():
    # The default threefry keys: vmap of rbg keys does not reproduce their unbatched streams.
    params, xs, k = mlp_params(1), batch((3, 4), n=5), jax.random.key(4)
    whole = jj.estimate_sqnorms(mlp, xs, k, params=params, num_probes=3, chunk_size=5)
    chunked = jj.estimate_sqnorms(mlp, xs, k, params=params, num_probes=3, chunk_size=2)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    # Sample b's probes depend on the key and b only, not on the rest of the batch.
    np.testing.assert_allclose(
        jj.estimate_sqnorms(mlp, xs[:2], k, params=params, num_probes=3, chunk_size=2),
        np.asarray(whole)[:, :2],
        rtol=1e-6,
    )


def test_nested_lists_are_batches():
    """A list was refused as "must be a non-empty batch; got shape (1, 6)": the drivers take
    what np.asarray makes an array of; a ragged list, or a list to a kernel, is named."""
    params, xs = mlp_params(0), batch((3, 4), n=2)
    f = partial(mlp, params)
    as_list = xs.tolist()
    np.testing.assert_array_equal(jj.jacobian_norms(f, as_list), jj.jacobian_norms(f, xs))
    np.testing.assert_array_equal(
        jj.estimate_sqnorms(f, as_list, key(0), num_probes=2)[0],
        jj.estimate_sqnorms(f, xs, key(0), num_probes=2)[0],
    )
    with pytest.raises(
        ValueError, match=r"^xs must be an array \[B, \.\.\.\]; setting an array element with a "
    ):
        jj.jacobian_norms(f, [as_list[0], as_list[1][:2]])
    with pytest.raises(ValueError, match=r"^xs must be floating .* got dtype int64"):
        jj.jacobian_norms(f, np.zeros((2, 3, 4), int).tolist())
    with pytest.raises(
        ValueError, match=r"^xs must be an array \[B, \.\.\.\] \(NumPy or JAX\); got a list$"
    ):
        jj.exact_sqnorms(f, as_list)


# Bad batches: each names what is wrong


def test_bad_batches_are_refused():
    f, xs = partial(mlp, mlp_params(0)), batch((3, 4))
    with pytest.raises(ValueError, match=r"xs must be a non-empty batch \[B, \.\.\.\]"):
        jj.jacobian_norms(f, np.zeros((0, 3, 4), np.float32))
    with pytest.raises(
        ValueError,
        match=r"^xs must be floating \(it is differentiated\); got dtype int32: convert it, e\.g\. "
        r"np\.asarray\(xs, np\.float32\)$",
    ):
        jj.jacobian_norms(f, np.zeros((2, 3, 4), np.int32))
    with pytest.raises(ValueError, match="max_bytes must be positive; got 0"):
        jj.jacobian_norms(f, xs, max_bytes=0)
    with pytest.raises(ValueError, match="chunk_size must be a positive number of samples; got 0"):
        jj.jacobian_norms(f, xs, chunk_size=0)
