"""jacosr.jacobian.paths: path points in closed form, path lengths against a fine
finite-difference polyline and the closed form of a linear map; NaN for broken paths."""

from functools import partial

import jax
import numpy as np
import pytest
from jacobian_nets import batch, mlp, mlp_params, normal, relu_mlp

from jacosr import jacobian as jj


def test_path_points_interpolate_linearly():
    x0s, x1s = batch((2, 3), n=4, seed=1), batch((2, 3), n=4, seed=2)
    points = jj.path_points(x0s, x1s, [0.0, 0.25, 1.0])
    assert points.shape == (4, 3, 2, 3) and points.dtype == np.float32
    np.testing.assert_array_equal(points[:, 0], x0s)
    np.testing.assert_array_equal(points[:, 2], x1s)
    np.testing.assert_allclose(points[:, 1], 0.75 * x0s + 0.25 * x1s, rtol=1e-6)


@partial(jax.jit, static_argnums=0)
def embed_points(f, params, points):
    return jax.vmap(jax.vmap(lambda x: f(params, x)))(points)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def test_path_length_equals_fine_finite_difference_polyline(x64):
    params = mlp_params(5, dtype=np.float64)
    x0s = batch((3, 4), n=2, seed=1, dtype=np.float64)
    x1s = batch((3, 4), n=2, seed=2, dtype=np.float64)
    zs = np.asarray(embed_points(mlp, params, jj.path_points(x0s, x1s, np.linspace(0, 1, 20_001))))
    polyline = np.sum(np.linalg.norm(np.diff(zs, axis=1), axis=2), axis=1)
    got = jj.path_length(mlp, x0s, x1s, params=params, num_points=257)
    np.testing.assert_allclose(got, polyline, rtol=1e-5)


def test_path_length_of_linear_map_is_norm_of_mapped_displacement():
    w = normal(0, (4, 6))
    x0s, x1s = batch((6,), n=3, seed=1), batch((6,), n=3, seed=2)
    got = jj.path_length(lambda x: w @ x, x0s, x1s, num_points=3)
    np.testing.assert_allclose(got, np.linalg.norm((x1s - x0s) @ w.T, axis=1), rtol=1e-5)


def test_path_through_a_non_finite_point_has_nan_length():
    ends = batch((3, 4), n=5, seed=3)
    # NaN and inf in one pixel; an infinite embedding (relu_mlp at x[0, 0] == 0).
    ends[1, 2, 1], ends[2, 0, 3], ends[3, 0, 0] = np.nan, np.inf, 0.0
    x0s, x1s = ends[:4], np.roll(ends, 1, axis=0)[:4]  # path 0 joins two good samples
    lengths = jj.path_length(relu_mlp, x0s, x1s, params=mlp_params(2), num_points=3)
    assert np.array_equal(np.isnan(lengths), [False, True, True, True])


def test_paths_take_nested_lists():
    f, xs = partial(mlp, mlp_params(0)), batch((3, 4), n=2)
    x1s = xs[::-1]
    points = jj.path_points(xs.tolist(), x1s.tolist(), [0.5])  # float64, as np.asarray makes
    np.testing.assert_allclose(points, (xs + x1s)[:, None] / 2, rtol=1e-6)
    np.testing.assert_array_equal(
        jj.path_length(f, xs.tolist(), x1s.tolist(), num_points=3),
        jj.path_length(f, xs, x1s, num_points=3),
    )


def test_bad_paths_are_refused():
    f, xs = partial(mlp, mlp_params(0)), batch((3, 4))
    with pytest.raises(ValueError, match="x0s and x1s must have the same shape"):
        jj.path_length(f, xs, xs[:2])
    with pytest.raises(ValueError, match="num_points must be at least 2; got 1"):
        jj.path_length(f, xs, xs, num_points=1)
    with pytest.raises(ValueError, match=r"x1s must be a non-empty batch"):
        jj.path_length(f, xs, np.zeros((0, 3, 4), np.float32))
