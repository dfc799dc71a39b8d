"""jacosr.jacobian.kernels against dense references: jacfwd Jacobians, and the known means and
variances of the stochastic estimators; their NaN guard, the order of the XNysTrace kernel's
LAPACK calls, and their refusals of bad arguments. Every kernel runs inside ``jit``, as its
users run it."""

import re
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jacobian_nets import (
    NETS,
    batch,
    dense_jacobians,
    dense_norms,
    key,
    mlp,
    mlp_params,
    normal,
    relu_mlp,
    theoretical_variance,
)

from jacosr import jacobian as jj


@partial(jax.jit, static_argnames=("f", "mode"))
def exact_sqnorms(f, params, xs, mode):
    return jj.exact_sqnorms(f, xs, params=params, mode=mode)


@partial(jax.jit, static_argnames=("estimator", "f", "num_probes", "side", "probes"))
def estimate(estimator, f, params, xs, keys, num_probes, side, probes):
    kernel = jj.ESTIMATORS[estimator]
    return kernel(f, xs, keys, params=params, num_probes=num_probes, side=side, probes=probes)


# Exact norms


@pytest.mark.parametrize("mode", ["reverse", "forward"])
@pytest.mark.parametrize("net", sorted(NETS))
def test_exact_kernel_equals_dense_jacobian(net, mode):
    f, make_params, shape = NETS[net]
    params, xs = make_params(0), batch(shape)
    got = np.sqrt(exact_sqnorms(f, params, xs, mode))
    np.testing.assert_allclose(got, dense_norms(f, params, xs), rtol=1e-5)


def test_auto_mode_takes_the_smaller_side():
    assert jj.resolve_mode("auto", d=12, d_z=5) == "reverse"
    assert jj.resolve_mode("auto", d=3, d_z=7) == "forward"
    assert jj.resolve_mode("auto", d=5, d_z=5) == "reverse"
    assert jj.resolve_mode("forward", d=12, d_z=5) == "forward"


def test_kernel_takes_traced_parameters_in_either_form():
    params, xs = mlp_params(0), batch((3, 4), n=2)
    closure = jax.jit(lambda p, xs: jj.exact_sqnorms(lambda x: mlp(p, x), xs))
    want = dense_norms(mlp, params, xs) ** 2
    np.testing.assert_allclose(closure(params, xs), want, rtol=1e-5)
    np.testing.assert_allclose(exact_sqnorms(mlp, params, xs, "auto"), want, rtol=1e-5)


# Non-finite inputs and embeddings: NaN, never a number


def non_finite_batch() -> np.ndarray:
    """[good, NaN in one pixel, inf in one pixel, good but with an infinite embedding, good]."""
    xs = batch((3, 4), n=5, seed=3)
    xs[1, 2, 1], xs[2, 0, 3], xs[3, 0, 0] = np.nan, np.inf, 0.0
    return xs


BAD = np.array([False, True, True, True, False])


@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_non_finite_input_or_embedding_has_nan_exact_norm(mode):
    params, xs = mlp_params(0), non_finite_batch()
    got = np.sqrt(exact_sqnorms(relu_mlp, params, xs, mode))
    assert np.array_equal(np.isnan(got), BAD)
    np.testing.assert_allclose(got[~BAD], dense_norms(relu_mlp, params, xs[~BAD]), rtol=1e-5)


@pytest.mark.parametrize(
    ("estimator", "side"),
    [("hutchinson", "output"), ("hutchinson", "input"), ("xnystrace", "output")],
)
def test_non_finite_input_or_embedding_has_nan_estimate_and_stderr(estimator, side):
    keys = jax.random.split(key(0), 5)
    probes = jj.ESTIMATOR_PROBES[estimator][0]
    est, se = estimate(
        estimator, relu_mlp, mlp_params(1), non_finite_batch(), keys, 3, side, probes
    )
    for a in (est, se):
        assert np.array_equal(np.isnan(a), BAD)


# The XNysTrace kernel's LAPACK calls (see jj.CPU_WORKERS)


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
    xs = jax.ShapeDtypeStruct((4, 3, 4), jnp.float32)
    keys = jax.eval_shape(lambda: jax.random.split(key(0), 4))
    args = ("xnystrace", mlp, mlp_params(0), xs, keys, 4, side, "gaussian")
    chain = lapack_chain(estimate.lower(*args).compile())
    assert len(chain) == 3
    assert [deps for _, deps in chain] == [[c for c, _ in chain[:i]] for i in range(3)]


# Stochastic estimates


def operator(params, x, side) -> np.ndarray:
    """A with ||J||_F^2 = tr(A): J J^T (output-side probes) or J^T J (input-side probes)."""
    j = np.asarray(dense_jacobians(mlp, params, x[None])[0], np.float64)
    return j @ j.T if side == "output" else j.T @ j


@pytest.mark.parametrize("probes", sorted(jj.PROBES))
@pytest.mark.parametrize("side", jj.SIDES)
def test_per_probe_variance_matches_theory(side, probes):
    params, x = mlp_params(2), batch((3, 4), n=1)
    k = 40_000
    keys = key(1)[None]
    _, se = estimate("hutchinson", mlp, params, x, keys, k, side, probes)
    want = theoretical_variance(operator(params, x[0], side), probes)
    np.testing.assert_allclose(se[0] ** 2 * k, want, rtol=0.2)


@pytest.mark.parametrize("probes", sorted(jj.PROBES))
@pytest.mark.parametrize("side", jj.SIDES)
def test_hutchinson_is_unbiased_and_its_standard_error_is_calibrated(side, probes):
    params, x = mlp_params(1), batch((3, 4), n=1, seed=1)
    exact = np.trace(operator(params, x[0], side))
    m = 2000
    keys = jax.random.split(key(1), m)
    est, se = estimate("hutchinson", mlp, params, np.repeat(x, m, 0), keys, 128, side, probes)
    est, se = np.asarray(est, np.float64), np.asarray(se, np.float64)
    assert abs(np.mean(est) - exact) < 3 * np.std(est) / np.sqrt(m)
    # se^2 is unbiased for the variance of the estimate; z-scores are close to standard normal
    # (at k = 32 skewness still widens them to ~1.2; at k = 128 to ~1.05).
    assert 0.9 < np.mean(se**2) / np.var(est) < 1.1
    assert 0.9 < np.std((est - exact) / se) < 1.15


def low_rank(p: dict, x: jax.Array) -> jax.Array:
    return p["a"] @ x.reshape(-1) + 0.01 * jnp.tanh(x.reshape(-1)[:8])


def low_rank_params(seed: int) -> dict:
    u, _ = np.linalg.qr(normal(seed, (8, 8)))
    v, _ = np.linalg.qr(normal(seed + 1, (12, 8)))
    spectrum = np.array([8.0, 4.0, 2.0, 0.3, 0.1, 0.05, 0.02, 0.01], np.float32)
    return {"a": (u * spectrum) @ v.T}  # [8, 12], numerically rank 3


@pytest.mark.parametrize(("side", "seed"), [("output", 0), ("input", 1)])
def test_xnystrace_is_unbiased_and_beats_hutchinson_on_a_low_rank_jacobian(side, seed):
    params, x = low_rank_params(seed), batch((3, 4), n=1, seed=seed)
    exact = dense_norms(low_rank, params, x)[0] ** 2
    m = 500
    keys = jax.random.split(key(seed), m)
    xs = np.repeat(x, m, axis=0)
    xny, _ = estimate("xnystrace", low_rank, params, xs, keys, 4, side, "gaussian")
    hut, _ = estimate("hutchinson", low_rank, params, xs, keys, 4, side, "gaussian")
    xny, hut = np.asarray(xny, np.float64), np.asarray(hut, np.float64)
    assert abs(np.mean(xny) - exact) < 3 * np.std(xny) / np.sqrt(m)
    assert np.var(xny) < 0.1 * np.var(hut)


def test_single_probe_has_nan_standard_error():
    keys = jax.random.split(key(0), 2)
    est, se = estimate(
        "hutchinson", mlp, mlp_params(0), batch((3, 4), n=2), keys, 1, "output", "rademacher"
    )
    assert np.all(np.isfinite(est)) and np.all(np.isnan(se))


# Bad arguments: each names what is wrong (from shapes: nothing is compiled)


def test_unknown_mode_lists_valid_modes():
    with pytest.raises(ValueError, match="unknown mode 'sideways'; valid: auto, forward, reverse"):
        jj.exact_sqnorms(mlp, batch((3, 4)), params=mlp_params(0), mode="sideways")


@pytest.mark.parametrize(
    ("f", "shape"),
    [(lambda x: jnp.outer(x, x), "(3, 3)"), (lambda x: jnp.sum(x), "()")],
)
def test_non_1d_output_is_refused(f, shape):
    with pytest.raises(ValueError, match=r"1-D embedding z: \[d_z\].*got " + re.escape(shape)):
        jj.exact_sqnorms(f, batch((3,)))


def test_integer_output_is_refused():
    with pytest.raises(ValueError, match="floating embedding; got dtype int32"):
        jj.exact_sqnorms(lambda x: jnp.round(x).astype(jnp.int32), batch((3,)))


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
    params, xs = mlp_params(0), batch((3, 4))
    with pytest.raises(ValueError, match=message):
        jj.check_estimator(mlp, xs[0], params=params, **kwargs)
    with pytest.raises(ValueError, match=message):
        jj.estimate_sqnorms(mlp, xs, key(0), params=params, **kwargs)


@pytest.mark.parametrize("estimator", sorted(jj.ESTIMATORS))
def test_each_estimator_defaults_to_its_first_valid_probes(estimator):
    default = jj.check_estimator(mlp, batch((3, 4))[0], params=mlp_params(0), estimator=estimator)
    assert default == jj.ESTIMATOR_PROBES[estimator][0]


def test_kernel_needs_one_key_per_sample():
    with pytest.raises(ValueError, match=r"one PRNG key per sample, shape \[5\]; got \(\)"):
        jj.hutchinson_sqnorms(mlp, batch((3, 4)), key(0), params=mlp_params(0))
