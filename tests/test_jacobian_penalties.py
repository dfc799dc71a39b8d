"""jacosr.jacobian.penalties against dense references: the batched estimator's mean and its
parameter gradient against jacfwd Jacobians (per sample, or the batch Jacobian's block columns
where BatchNorm couples the samples) and its variance against theory; the open-space points
against the segments they must lie on; the hinge's value, gradient and bounds; one trace for
every key; one result for any sharding of the batch. Everything runs inside ``jit``, as a
training step runs it.

Stochastic checks average ``M`` independent keys and allow 4 (one mean) or 4.5 (each of a few
hundred gradient entries) standard errors of that average, computed from the draws; each also
checks that the standard error is small against the exact value, so that a biased estimator
fails.
"""

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from helpers import canonical, convolutions
from jacobian_nets import (
    batch,
    cnn,
    cnn_params,
    dense_norms,
    key,
    mlp,
    mlp_params,
    normal,
    theoretical_variance,
)

from jacosr import jacobian as jj
from jacosr.models import ModelConfig, ModelState, OpenSetNet, apply_model, split_model
from jacosr.models.conv import conv2d

M = 2000  # keys averaged by the stochastic checks
CHUNK = 250  # keys per vectorised call: bounds the memory of the M calls


# Batched functions f(params, xs: [N, ...]) -> [N, D] (module-level: one object per net, so the
# jitted helpers below compile once per net and shape)


def linear(p: dict, xs: jax.Array) -> jax.Array:
    return xs.reshape(xs.shape[0], -1) @ p["w"].T


batched_mlp = jax.vmap(mlp, in_axes=(None, 0))
batched_cnn = jax.vmap(cnn, in_axes=(None, 0))


def bn_mlp(p: dict, xs: jax.Array) -> jax.Array:
    """Linear, training-mode batch normalisation (the batch's mean and variance), tanh, linear:
    every embedding depends on every input."""
    h = xs.reshape(xs.shape[0], -1) @ p["w1"].T
    h = (h - jnp.mean(h, axis=0)) / jnp.sqrt(jnp.var(h, axis=0) + 1e-3)
    return jnp.tanh(h + p["b1"]) @ p["w2"].T


NETS = {
    # name: (batched f, params of a seed, input shape)
    "linear": (linear, lambda s: {"w": normal(s, (5, 12))}, (3, 4)),
    "mlp": (batched_mlp, mlp_params, (3, 4)),
    "cnn": (batched_cnn, cnn_params, (6, 6, 2)),
}


@partial(jax.jit, static_argnames=("f", "num_probes", "side", "probes"))
def estimates(f, params, xs, keys, num_probes, side, probes="rademacher"):
    """``[K, N]``: one call of the estimator per key."""

    def one(k):
        kwargs = dict(params=params, num_probes=num_probes, side=side, probes=probes)
        return jj.batched_sqnorms(f, xs, k, **kwargs)[0]

    return jax.lax.map(one, keys, batch_size=CHUNK)


@partial(jax.jit, static_argnames=("f", "side"))
def block_sums(f, params, xs, side) -> jax.Array:
    """``[N]`` from the dense batch Jacobian ``J_cb = dz_c / dx_b`` (jacfwd): the block rows'
    ``sum_b ||J_cb||_F^2`` for each ``c`` (input side) or the block columns' ``sum_c`` for each
    ``b`` (output side)."""
    jac = jax.jacfwd(partial(f, params))(xs)  # [N, D, N, ...]
    n = xs.shape[0]
    sq = jnp.square(jac.reshape(n, -1, n, xs[0].size))
    return jnp.sum(sq, axis=(1, 2, 3) if side == "input" else (0, 1, 3))


def dense_sqnorms(name: str, params, xs) -> np.ndarray:
    """``[N]`` exact per-sample squared norms: ``||W||_F^2`` for the linear map, else jacfwd."""
    if name == "linear":
        return np.full(xs.shape[0], np.sum(np.square(params["w"], dtype=np.float64)))
    f = {"mlp": mlp, "cnn": cnn}[name]
    return dense_norms(f, params, xs).astype(np.float64) ** 2


def assert_unbiased(draws, exact, sigmas=4.0, power=0.03):
    """The mean of ``draws: [M, ...]`` is within ``sigmas`` standard errors of ``exact``, and that
    standard error is below ``power * |exact|`` (so the check can see a bias of a few %)."""
    draws = np.asarray(draws, np.float64)
    mean, se = draws.mean(axis=0), draws.std(axis=0, ddof=1) / np.sqrt(draws.shape[0])
    scale = np.max(np.abs(exact))
    assert np.all(se <= power * scale), (se.max(), scale)
    np.testing.assert_array_less(np.abs(mean - exact), sigmas * se + 1e-6 * scale)


# The estimator


@pytest.mark.parametrize("side", jj.SIDES)
@pytest.mark.parametrize("num_probes", [1, 4])
@pytest.mark.parametrize("net", sorted(NETS))
def test_estimate_is_unbiased_for_the_exact_squared_norm(net, num_probes, side):
    f, make_params, shape = NETS[net]
    params, xs = make_params(0), batch(shape, n=3)
    draws = estimates(f, params, xs, jax.random.split(key(num_probes), M), num_probes, side)
    assert_unbiased(draws, dense_sqnorms(net, params, xs))


@pytest.mark.parametrize("side", jj.SIDES)
@pytest.mark.parametrize("num_probes", [1, 4])
@pytest.mark.parametrize("probes", sorted(jj.PROBES))
def test_variance_of_the_estimate_matches_theory(probes, num_probes, side):
    params, xs = NETS["linear"][1](1), batch((3, 4), n=2)
    keys = jax.random.split(key(7), 4 * M)
    draws = np.asarray(estimates(linear, params, xs, keys, num_probes, side, probes), np.float64)
    w = params["w"].astype(np.float64)  # J = W: A = W^T W (input side) or W W^T (output)
    want = theoretical_variance(w.T @ w if side == "input" else w @ w.T, probes) / num_probes
    np.testing.assert_allclose(draws.var(axis=0, ddof=1), want, rtol=0.15)
    assert np.all(draws >= 0)


@pytest.mark.parametrize("side", jj.SIDES)
def test_batchnorm_estimate_is_a_block_row_or_column_of_the_batch_jacobian(side):
    # Training-mode BatchNorm couples the samples: the estimate is a block row or column of
    # dZ/dX (see batched_sqnorms), which at N = 4 differs clearly from the diagonal block.
    params = {
        "w1": normal(0, (6, 12)) / np.sqrt(12),
        "b1": 0.1 * normal(1, (6,)),
        "w2": normal(2, (5, 6)) / np.sqrt(6),
    }
    xs = batch((3, 4), n=4)
    block = np.asarray(block_sums(bn_mlp, params, xs, side), np.float64)
    jac = np.asarray(jax.jacfwd(partial(bn_mlp, params))(xs)).reshape(4, 5, 4, 12)
    diagonal = np.array([np.sum(jac[b, :, b] ** 2) for b in range(4)])
    assert np.all(block - diagonal > 0.05 * block)
    draws = estimates(bn_mlp, params, xs, jax.random.split(key(3), M), 4, side)
    assert_unbiased(draws, block)


@partial(jax.jit, static_argnames=("f", "side"))
def estimated_gradients(f, params, xs, weights, keys, side):
    """Per key: the gradient of ``sum_b weights_b * estimate_b`` with respect to ``params``."""

    def weighted(p, k):
        return jnp.sum(weights * jj.batched_sqnorms(f, xs, k, params=p, side=side)[0])

    return jax.lax.map(partial(jax.grad(weighted), params), keys, batch_size=CHUNK)


@partial(jax.jit, static_argnames="f")
def exact_gradient(f, params, xs, weights):
    """The gradient of ``sum_b weights_b * ||J_b||_F^2`` from per-sample jacfwd Jacobians."""

    def weighted(p):
        jac = jax.vmap(lambda x: jax.jacfwd(partial(f, p))(x).reshape(-1, x.size))(xs)
        return jnp.sum(weights * jnp.sum(jnp.square(jac), axis=(1, 2)))

    return jax.grad(weighted)(params)


@pytest.mark.parametrize("side", jj.SIDES)
@pytest.mark.parametrize(("net", "f"), [("mlp", mlp), ("cnn", cnn)])
def test_parameter_gradient_is_unbiased_for_the_exact_gradient(net, f, side):
    batched, make_params, shape = NETS[net]
    params, xs = make_params(2), batch(shape, n=3, seed=5)
    weights = np.array([1.0, 0.5, 2.0], np.float32)  # tells the samples' terms apart
    keys = jax.random.split(key(11), M)
    draws = estimated_gradients(batched, params, xs, weights, keys, side)
    want = exact_gradient(f, params, xs, weights)
    for name in params:
        assert_unbiased(draws[name], np.asarray(want[name], np.float64), sigmas=4.5, power=0.1)


# The training-mode network of the library (BatchNorm, im2col convolutions, double backprop)


@pytest.fixture(scope="module")
def lenet():
    net = OpenSetNet(
        ModelConfig("lenet", embed_dim=6, width=8),
        image_shape=(8, 8, 1),
        num_classes=3,
        head="linear",
        rngs=nnx.Rngs(0),
    )
    graphdef, state = split_model(net)

    def embed(params, xs):
        out, _ = apply_model(graphdef, ModelState(params, state.batch_stats), xs, train=True)
        return out.embedding

    return embed, state.params


@pytest.mark.parametrize("side", jj.SIDES)
def test_training_mode_lenet_estimate_and_gradient_match_a_dense_reference(lenet, side):
    # The estimator's own probes (rademacher, drawn sample-major from the key, as documented)
    # contracted with the dense batch Jacobian: the estimate, and its parameter gradient through
    # BatchNorm and the im2col convolution's custom rule (double backprop), exactly. (Averaging
    # keys on this net, as above, would cost minutes; unbiasedness is the nets' above.)
    embed, params = lenet
    xs, k, n, num_probes = batch((8, 8, 1), n=4, seed=9), key(5), 4, 3
    size = 64 if side == "input" else 6  # the probe dimension: the image's or the embedding's
    probes = jj.PROBES["rademacher"](k, (n * num_probes, size), jnp.float32)
    probes = probes.reshape(n, num_probes, size)
    weights = np.array([1.0, 0.5, 2.0, 1.5], np.float32)

    @jax.jit
    def reference(p):
        jac = jax.jacrev(partial(embed, p))(xs).reshape(n, 6, n, 64)  # [c, D, b, d]
        if side == "input":
            rows = jnp.einsum("cDbj,bkj->ckD", jac, probes)  # (J U)_c for each probe
        else:
            rows = jnp.einsum("cDbj,ckD->bkj", jac, probes)  # (J^T V)_b for each probe
        return jnp.sum(weights * jnp.mean(jnp.sum(jnp.square(rows), axis=2), axis=1))

    @jax.jit
    def estimate(p):
        sq, _ = jj.batched_sqnorms(embed, xs, k, params=p, num_probes=num_probes, side=side)
        return jnp.sum(weights * sq)

    np.testing.assert_allclose(estimate(params), reference(params), rtol=1e-5)
    got, want = jax.jit(jax.grad(estimate))(params), jax.jit(jax.grad(reference))(params)
    scale = max(np.max(np.abs(w)) for w in jax.tree.leaves(want))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * scale)


def test_estimator_returns_the_forward_pass_and_its_aux():
    params, xs = mlp_params(0), batch((3, 4), n=3)

    def with_aux(p, xs):
        z = batched_mlp(p, xs)
        return z, {"scores": jnp.sum(z, axis=1)}

    sq, z, aux = jj.batched_sqnorms(with_aux, xs, key(0), params=params, has_aux=True)
    want = np.asarray(batched_mlp(params, xs))
    np.testing.assert_allclose(z, want, rtol=1e-6)
    np.testing.assert_allclose(aux["scores"], want.sum(axis=1), rtol=1e-5)
    assert sq.shape == (3,)


def test_the_estimates_gradient_runs_canonical_convolutions_only():
    """The known-class term's gradient through a convolution (3x3 on 5 channels: the
    convolution path, not the patch matrix) hands XLA canonical convolutions only, the form
    its CPU backend runs at speed inside the training loop: the JVPs are ``jax.jvp``, whose
    tangents keep jacosr.models.conv's rules under the outer gradient (``jax.linearize``
    inlined them, and XLA's own second derivatives ran many times slower in the loop)."""
    xs = batch((6, 6, 5), n=4)
    kernel = normal(1, (3, 3, 5, 4))

    def f(kernel, xs):
        y = conv2d(xs, kernel, stride=1, padding="SAME", impl="im2col")
        return jnp.tanh(y).reshape(len(xs), -1)

    def term(kernel, xs, k):
        return jnp.mean(jj.batched_sqnorms(f, xs, k, params=kernel, num_probes=2)[0])

    found = convolutions(jax.grad(term), kernel, xs, key(0))
    assert found and all(map(canonical, found)), found


# Open-space points


def coefficients(xs: np.ndarray, point: np.ndarray) -> np.ndarray:
    """``c`` with ``point = sum_b c_b xs[b]`` (the rows of ``xs`` are linearly independent)."""
    return np.linalg.lstsq(xs.reshape(len(xs), -1).T.astype(np.float64), point.reshape(-1))[0]


open_space_points = jax.jit(jj.open_space_points, static_argnames=("t_min", "t_max"))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_open_space_points_lie_mid_path_between_different_classes(seed):
    xs = batch((4, 5), n=8, seed=seed)  # 8 independent rows in 20 dimensions
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int32)
    got = open_space_points(key(seed), xs, labels, t_min=0.3, t_max=0.6)
    assert np.all(got.valid)
    for b in range(8):
        c = coefficients(xs, np.asarray(got.points[b]))
        ends = np.flatnonzero(np.abs(c) > 1e-4)
        assert len(ends) == 2 and b in ends
        (partner,) = ends[ends != b]
        assert labels[partner] != labels[b]
        np.testing.assert_allclose(c[b] + c[partner], 1.0, atol=1e-4)
        assert 0.3 - 1e-4 <= c[partner] <= 0.6 + 1e-4
        assert got.partner[b] == partner
        np.testing.assert_allclose(got.t[b], c[partner], atol=1e-4)


def test_open_space_partners_are_drawn_uniformly_among_the_other_classes():
    labels = np.array([0, 0, 1, 2, 2, 2], np.int32)
    xs = batch((3,), n=6)
    draws = jax.vmap(lambda k: open_space_points(k, xs, labels))(jax.random.split(key(4), M))
    partner, t = np.asarray(draws.partner), np.asarray(draws.t)
    for b in range(6):
        others = np.flatnonzero(labels != labels[b])
        counts = np.bincount(partner[:, b], minlength=6)
        assert counts[labels == labels[b]].sum() == 0
        # multinomial(M, 1/len(others)): each count within 5 standard deviations of M/len
        p = 1 / len(others)
        np.testing.assert_array_less(np.abs(counts[others] - M * p), 5 * np.sqrt(M * p * (1 - p)))
    assert 0.25 <= t.min() and t.max() <= 0.75
    assert abs(t.mean() - 0.5) < 4 * (0.5 / np.sqrt(12)) / np.sqrt(t.size)


@pytest.mark.parametrize(
    ("labels", "valid"),
    [
        ([1, 1, 1, 1], [False] * 4),  # one class: no sample has a partner
        ([0, 0, 0, 3], [True] * 4),  # the lone sample of class 3 is everyone's partner
    ],
)
def test_a_sample_without_a_partner_of_another_class_is_not_valid(labels, valid):
    xs = batch((2, 2), n=4)
    got = open_space_points(key(0), xs, np.array(labels, np.int32))
    np.testing.assert_array_equal(got.valid, valid)
    alone = ~np.asarray(valid)
    np.testing.assert_array_equal(np.asarray(got.points)[alone], xs[alone])
    np.testing.assert_array_equal(np.asarray(got.t)[alone], 0.0)


# The hinge

hinge = jax.jit(jj.open_space_hinge, static_argnames="ratio")
hinge_grads = jax.jit(jax.grad(jj.open_space_hinge, argnums=(0, 1)), static_argnames="ratio")

KNOWN = np.array([1.0, 3.0], np.float32)  # mean 2: with ratio 2 the target is 8


def test_hinge_is_zero_with_zero_gradient_above_the_target():
    path, valid = np.array([8.0, 9.0, 100.0], np.float32), np.ones(3, bool)
    assert hinge(path, KNOWN, valid, ratio=2.0) == 0.0
    for g in hinge_grads(path, KNOWN, valid, ratio=2.0):
        np.testing.assert_array_equal(g, 0.0)


def test_hinge_is_the_mean_relative_shortfall_of_the_valid_paths():
    path = np.array([0.0, 4.0, 6.0, 1e6, -5.0], np.float32)  # the last is not a valid path
    valid = np.array([True, True, True, True, False])
    # shortfalls 1, 1/2, 1/4, 0 over 4 valid paths
    np.testing.assert_allclose(hinge(path, KNOWN, valid, ratio=2.0), 1.75 / 4, rtol=1e-6)
    d_path, d_known = hinge_grads(path, KNOWN, valid, ratio=2.0)
    np.testing.assert_allclose(d_path, [-1 / 32, -1 / 32, -1 / 32, 0.0, 0.0], rtol=1e-6)
    # d/dm of 1 - p / (4 m) is p / (4 m^2) = p / 16 for the active paths 0, 4, 6 (m = 2),
    # over 4 valid paths, and dm/dk_i = 1/2: the term also asks for lower known norms
    np.testing.assert_allclose(d_known, [(0 + 4 + 6) / 16 / 4 / 2] * 2, rtol=1e-6)


@pytest.mark.parametrize("seed", range(3))
def test_hinge_is_capped_at_one(seed):
    path = np.abs(normal(seed, (16,))) * 10 ** normal(seed + 1, (16,))
    known = np.abs(normal(seed + 2, (8,))) * 10 ** normal(seed + 3, (8,))
    for ratio in (0.5, 2.0, 100.0):
        value = hinge(path, known, np.ones(16, bool), ratio=ratio)
        assert 0.0 <= value <= 1.0
    assert hinge(np.zeros(16, np.float32), known, np.ones(16, bool), ratio=2.0) == 1.0


@pytest.mark.parametrize(
    ("known", "valid"),
    [(KNOWN, np.zeros(3, bool)), (np.zeros(2, np.float32), np.ones(3, bool))],
    ids=["no valid path", "zero known norm"],
)
def test_hinge_is_zero_and_finite_without_paths_or_target(known, valid):
    path = np.zeros(3, np.float32)
    assert hinge(path, known, valid, ratio=2.0) == 0.0
    for g in hinge_grads(path, known, valid, ratio=2.0):
        np.testing.assert_array_equal(g, 0.0)


# jit, keys, sharding


def test_one_trace_serves_every_key_and_a_key_fixes_the_result():
    traces = Counter()
    params, xs = mlp_params(0), batch((3, 4), n=6)
    labels = np.array([0, 1, 2, 0, 1, 2], np.int32)

    @jax.jit
    def term(params, key):
        traces["term"] += 1
        path_key, probe_key = jax.random.split(key)
        paths = jj.open_space_points(path_key, xs, labels)
        both = jnp.concatenate([xs, paths.points])
        sq, _ = jj.batched_sqnorms(batched_mlp, both, probe_key, params=params, num_probes=2)
        return jnp.mean(sq[:6]) + jj.open_space_hinge(sq[6:], sq[:6], paths.valid)

    values = [term(params, jax.random.fold_in(key(0), step)) for step in range(4)]
    assert traces["term"] == 1
    assert len({float(v) for v in values}) == 4  # the key matters
    assert term(params, jax.random.fold_in(key(0), 2)) == values[2]  # ... and fixes the result


SHARDED = textwrap.dedent(
    """
    import json
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from jacosr import jacobian as jj

    rng = np.random.default_rng(0)
    w1, w2 = rng.standard_normal((6, 12)), rng.standard_normal((5, 6))
    params = {"w1": w1.astype(np.float32), "w2": w2.astype(np.float32)}
    xs = rng.standard_normal((8, 3, 4)).astype(np.float32)
    labels = np.array([0, 1, 2, 3, 0, 1, 2, 3], np.int32)

    def f(p, xs):  # training-mode BatchNorm: every embedding depends on every input
        h = xs.reshape(xs.shape[0], -1) @ p["w1"].T
        h = (h - h.mean(0)) / jnp.sqrt(h.var(0) + 1e-3)
        return jnp.tanh(h) @ p["w2"].T

    def term(p, xs, labels, key):
        paths = jj.open_space_points(jax.random.fold_in(key, 1), xs, labels)
        both = jnp.concatenate([xs, paths.points])
        total = 0.0
        for side in ("input", "output"):
            sq, _ = jj.batched_sqnorms(f, both, key, params=p, num_probes=3, side=side)
            total += jnp.mean(sq[:8]) + jj.open_space_hinge(sq[8:], sq[:8], paths.valid, ratio=3.0)
        return total

    step = jax.jit(jax.value_and_grad(term))
    key = jax.random.fold_in(jax.random.key(0), 5)
    one = step(params, xs, labels, key)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    shard = NamedSharding(mesh, P("data"))
    many = step(
        jax.device_put(params, NamedSharding(mesh, P())),
        jax.device_put(xs, shard),
        jax.device_put(labels, shard),
        key,
    )
    flat = lambda out: [np.asarray(a, np.float64).ravel().tolist() for a in jax.tree.leaves(out)]
    print(json.dumps({"devices": jax.device_count(), "one": flat(one), "many": flat(many)}))
    """
)


def test_terms_do_not_depend_on_how_the_batch_is_sharded():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4"
    done = subprocess.run(
        [sys.executable, "-c", SHARDED], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout.splitlines()[-1])
    assert got["devices"] == 4
    for one, many in zip(got["one"], got["many"], strict=True):
        np.testing.assert_allclose(many, one, rtol=1e-5, atol=1e-6)


# Bad arguments


def linear_estimate(**kwargs):
    return jj.batched_sqnorms(linear, batch((3, 4)), key(0), params=NETS["linear"][1](0), **kwargs)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: linear_estimate(probes="cube"),
            "unknown probe distribution 'cube'; valid: gaussian, rademacher, sphere",
        ),
        (lambda: linear_estimate(num_probes=0), "num_probes must be at least 1; got 0"),
        (lambda: linear_estimate(side="both"), "unknown side 'both'; valid: input, output"),
        (
            lambda: jj.batched_sqnorms(lambda xs: jnp.sum(xs, axis=(1, 2)), batch((3, 4)), key(0)),
            r"f must map xs: \[5, \.\.\.\] to a floating z: \[5, D\]; got float32\[5\]",
        ),
        (
            lambda: jj.open_space_points(key(0), batch((3,)), np.zeros(4, np.int32)),
            r"labels must be \[5\]; got shape \(4,\)",
        ),
        (
            lambda: jj.open_space_points(key(0), batch((3,)), np.zeros(5, np.int32), t_min=0.0),
            "need 0 < t_min <= t_max < 1; got t_min=0.0, t_max=0.75",
        ),
        (
            lambda: jj.open_space_hinge(np.ones(2), np.ones(2), np.ones(2, bool), ratio=0.0),
            "ratio must be > 0; got 0.0",
        ),
    ],
    ids=["probes", "num_probes", "side", "embedding shape", "labels", "t range", "ratio"],
)
def test_bad_arguments_are_refused_naming_the_fix(call, message):
    with pytest.raises(ValueError, match=message):
        call()
