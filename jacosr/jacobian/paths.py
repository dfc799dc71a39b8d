"""Straight paths between samples (the paper's Fig. 3): their points and projected lengths.

``x_t = (1 - t) x0 + t x1`` for ``t`` in ``[0, 1]``. The norm profile along a path is the
exact or estimated norm at its points: pass :func:`path_points` (flattened to one batch,
possibly with other samples, as ``jacosr.experiments.interp`` does) to
:func:`jacosr.jacobian.jacobian_norms` or :func:`jacosr.jacobian.estimate_sqnorms`.
:func:`path_length` integrates the embedding's speed along each path, one JVP per point.
"""

from typing import Any

import jax
import numpy as np

from jacosr.jacobian.driver import (
    DEFAULT_MAX_BYTES,
    _check_chunk_size,
    _host_batch,
    _map_chunks,
    _nbytes,
    _plan,
    _target_bytes,
)
from jacosr.jacobian.kernels import (
    Fn,
    _abstract,
    _bind,
    _embedding_shape,
    _example,
    _nan_unless_finite,
)


def path_points(x0s, x1s, ts):
    """``x_t = (1 - t) x0 + t x1`` for every pair and every ``t``: ``[P, T, ...]``.

    NumPy in, NumPy out (JAX arrays give JAX arrays, also under ``jit``; anything else, e.g. a
    nested list, is taken as ``np.asarray`` makes it).

    Args:
      x0s, x1s: ``[P, ...]`` path ends (e.g. ``x0`` from class i, ``x1`` from class j).
      ts: ``[T]`` positions in ``[0, 1]``.
    """
    x0s, x1s = (x if isinstance(x, jax.Array) else np.asarray(x) for x in (x0s, x1s))
    t = np.asarray(ts, dtype=x0s.dtype).reshape(1, -1, *([1] * (x0s.ndim - 1)))
    with np.errstate(invalid="ignore"):  # 0 * inf: a NaN point, whose norms are NaN anyway
        return (1 - t) * x0s[:, None] + t * x1s[:, None]


def _check_pairs(x0s, x1s) -> tuple[np.ndarray, np.ndarray]:
    x0s, x1s = _host_batch(x0s, "x0s"), _host_batch(x1s, "x1s")
    if x0s.shape != x1s.shape:
        raise ValueError(f"x0s and x1s must have the same shape; got {x0s.shape}, {x1s.shape}")
    return x0s, x1s


def _speeds(f: Fn, params: Any, xs: jax.Array, directions: jax.Array) -> jax.Array:
    """``||J(x) dx||`` for each ``(x, dx)``: one JVP each; NaN where anything is not finite."""
    g = _bind(f, params)

    def speed(x, dx):
        z, dz = jax.jvp(g, (x,), (dx,))
        return _nan_unless_finite(jax.numpy.linalg.norm(dz), x, dx, z)

    return jax.vmap(speed)(xs, directions)


_speeds_jit = jax.jit(_speeds, static_argnames="f")


def path_length(
    f: Fn,
    x0s,
    x1s,
    *,
    params: Any = None,
    num_points: int = 129,
    max_bytes: int = DEFAULT_MAX_BYTES,
    chunk_size: int | None = None,
) -> np.ndarray:
    """Projected path length ``L = int_0^1 ||d f(x_t) / dt|| dt`` of each straight path: ``[P]``.

    ``d f(x_t) / dt = J(x_t) (x1 - x0)``, one JVP per point (no finite differences), chunked
    as in :func:`jacosr.jacobian.jacobian_norms`. Quadrature: the composite trapezoidal rule
    on ``num_points`` equally spaced ``t`` in ``[0, 1]`` (ends included). The speed is only
    piecewise smooth for ReLU-like nets, where higher-order rules gain nothing; the error is
    ``O(1 / num_points^2)`` on smooth pieces.

    Args:
      f, params: as in :func:`jacosr.jacobian.jacobian_norms`.
      x0s, x1s: ``[P, ...]`` path ends.
      num_points: ``T >= 2`` quadrature nodes.
      max_bytes, chunk_size: as in :func:`jacosr.jacobian.jacobian_norms`.

    Returns:
      ``[P]`` NumPy lengths; NaN for a path with a point, a direction, an embedding or a speed
      that is not finite.
    """
    x0s, x1s = _check_pairs(x0s, x1s)
    _check_chunk_size(chunk_size)
    if num_points < 2:
        raise ValueError(f"num_points must be at least 2; got {num_points}")
    target = _target_bytes(max_bytes)
    params = jax.device_put(params)
    _embedding_shape(f, params, _example(x0s))
    ts = np.linspace(0.0, 1.0, num_points, dtype=x0s.dtype)
    points = path_points(x0s, x1s, ts)
    flat = points.reshape(-1, *points.shape[2:])
    directions = np.repeat(x1s - x0s, num_points, axis=0)

    def compiled(chunk: int):
        spec = jax.ShapeDtypeStruct((chunk, *flat.shape[1:]), flat.dtype)
        return _speeds_jit.lower(f, _abstract(params), spec, spec).compile()

    kernel, chunk, workers = _plan(compiled, flat.shape[0], target, chunk_size, _nbytes(params))
    speeds = _map_chunks(
        lambda x, dx: kernel(params, x, dx), (flat, directions), chunk, workers
    ).reshape(points.shape[:2])
    return np.trapezoid(speeds, ts, axis=1)
