"""Tiny nets and dense references shared by the Jacobian engine's tests (test_jacobian_*.py).

Each net is a module-level ``f(params, x)`` of ONE unbatched input with NumPy parameters: the
same ``f`` object for every seed and test, so the engine's compiled programs (keyed on ``f``
and shapes, ``params`` traced) are reused across the tests of a process. ``partial(f, params)``
gives the ``f(x)`` form. Test data come from NumPy, not eager ``jnp`` (each eager op of a new
shape compiles a program); the dense references are jitted with ``f`` static, likewise reused.
"""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np


def normal(seed: int, shape, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def batch(shape, n=5, seed=100, dtype=np.float32) -> np.ndarray:
    return normal(seed, (n, *shape), dtype)


def key(seed: int) -> jax.Array:
    """A PRNG key whose sampling compiles in a fraction of a second (threefry takes ~3 s on
    XLA CPU); the estimators do not care which implementation made the bits."""
    return jax.random.key(seed, impl="rbg")


def mlp_params(seed: int, d=12, hidden=6, d_z=5, dtype=np.float32) -> dict:
    return {
        "w1": normal(seed, (hidden, d), dtype) / np.sqrt(d),
        "b1": 0.1 * normal(seed + 1000, (hidden,), dtype),
        "w2": normal(seed + 2000, (d_z, hidden), dtype) / np.sqrt(hidden),
    }


def mlp(p: dict, x: jax.Array) -> jax.Array:
    """tanh MLP on inputs of any shape with ``x.size == d``."""
    return p["w2"] @ jnp.tanh(p["w1"] @ x.reshape(-1) + p["b1"])


def relu_mlp(p: dict, x: jax.Array) -> jax.Array:
    """ReLU MLP on [3, 4] inputs whose embedding is infinite, its Jacobian finite, where
    x[0, 0] == 0. ReLU's slope is 0 at NaN and 1 at inf: a NaN input has a zero Jacobian and an
    infinite one a finite Jacobian -- the traps the NaN guard must catch."""
    z = p["w2"] @ jax.nn.relu(p["w1"] @ x.reshape(-1) + p["b1"])
    return z + jnp.where(x[0, 0] == 0, jnp.inf, 0.0)


def cnn_params(seed: int) -> dict:
    return {"w1": normal(seed, (3, 3, 2, 4)) / 4, "w2": normal(seed + 1000, (3, 3, 4, 5)) / 6}


def cnn(p: dict, x: jax.Array) -> jax.Array:
    """[6, 6, 2] -> conv 3x3 s1 (4 ch) -> leaky relu -> conv 3x3 s2 (5 ch) -> leaky relu -> GAP."""
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x[None], p["w1"], (1, 1), "SAME", dimension_numbers=dn)
    h = jax.nn.leaky_relu(h + 0.1, 0.2)
    h = jax.lax.conv_general_dilated(h, p["w2"], (2, 2), "SAME", dimension_numbers=dn)
    return jnp.mean(jax.nn.leaky_relu(h, 0.2), axis=(0, 1, 2))


NETS = {
    # name: (f, params of a seed, input shape)
    "mlp": (mlp, mlp_params, (3, 4)),  # d = 12 > d_z = 5: auto is reverse
    "wide_mlp": (mlp, lambda s: mlp_params(s, d=3, d_z=7), (3,)),  # d = 3 < d_z = 7: forward
    "cnn": (cnn, cnn_params, (6, 6, 2)),
}


def _bound(f, params):
    return f if params is None else partial(f, params)


@partial(jax.jit, static_argnums=0)
def dense_jacobians(f, params, xs: jax.Array) -> jax.Array:
    """``[B, d_z, d]`` Jacobians by ``jax.jacfwd`` (``params`` None for ``f(x)``)."""
    g = _bound(f, params)
    return jax.vmap(lambda x: jax.jacfwd(g)(x).reshape(-1, x.size))(xs)


def dense_norms(f, params, xs) -> np.ndarray:
    """``[B]`` reference ``||J||_F`` from the dense Jacobians."""
    return np.linalg.norm(np.asarray(dense_jacobians(f, params, xs)), axis=(1, 2))


def theoretical_variance(a: np.ndarray, probes: str) -> float:
    """Per-probe variance of Hutchinson's estimate of ``tr(A)`` for a symmetric ``A`` (the
    closed forms: Gaussian ``2 ||A||_F^2``, Rademacher without the diagonal, uniform on the
    sphere of radius ``sqrt(n)``)."""
    fro2, n = np.sum(a**2), a.shape[0]
    return {
        "gaussian": 2 * fro2,
        "rademacher": 2 * (fro2 - np.sum(np.diag(a) ** 2)),
        "sphere": 2 * n / (n + 2) * (fro2 - np.trace(a) ** 2 / n),
    }[probes]
