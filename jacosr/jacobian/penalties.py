"""Jacobian terms for a training objective: differentiable per-sample ``||J||_F^2`` of the
training-mode network, and the open-space term on paths between classes.

Beyond the paper: its Eq. 20 (the Jacobian norm difference, JND) is a side effect of metric
learning; these terms let an objective ask for it directly.

* known-class smoothness: ``mean_b ||J(x_b)||_F^2`` over the upright batch, estimated by
  :func:`batched_sqnorms` from random projections (Hutchinson's estimator, as in Hoffman,
  Roberts and Yaida 2019, "Robust Learning with Jacobian Regularization");
* open-space sharpness: :func:`open_space_points` draws one point ``x_t`` mid-path between
  each sample and a sample of another class (the paper's Fig. 3), and
  :func:`open_space_hinge` asks their norm to exceed the known-class norm by a ratio.

Unlike the rest of the engine, :func:`batched_sqnorms` takes a BATCHED function ``f(params,
xs: [N, ...]) -> z: [N, D]``: the training-mode network, whose BatchNorm normalises each sample
by the statistics of its batch, is not a function of one unbatched input (a ``vmap`` of it
would normalise every sample by itself). Everything here is pure and jit-compatible, draws its
randomness only from the ``key`` it is given (pass keys folded from the step's key: a resumed
run is then bit-identical), and uses plain ``jnp`` ops along the batch axis, so it runs data
parallel with the batch sharded over devices (GSPMD gathers what a row needs from others).

One forward pass serves the objective and both terms: concatenate the upright batch (first),
any other rows (the rotated copies of the self-supervised task) and the path points (last),
run :func:`batched_sqnorms` on the training-mode embedding with the objective's other outputs
as ``aux``, and read the known-class estimates from the first rows and the path estimates from
the last. The path points then share the batch's BatchNorm statistics, so the path and
known-class norms in the hinge are norms of the same function (see :func:`open_space_hinge`).
The price: those statistics, and the running averages evaluation uses, include the path
points, as they include the rotated copies. A separate training-mode pass over the points
would cost as much and normalise them by their own statistics (interpolations have a smaller
spread, which BatchNorm would scale back up): a different function from the known batch's.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jacosr.jacobian.kernels import PROBES, SIDES, Array, _check_batch, _registry_get

BatchedFn = Callable[..., Any]
"""``f(xs) -> z`` or, with ``params``, ``f(params, xs) -> z``; ``xs: [N, ...]``, ``z: [N, D]``;
with ``has_aux`` it returns ``(z, aux)``."""


def _probes(name: str, key: Array, n: int, k: int, shape: tuple[int, ...], dtype) -> Array:
    """``[N, k, *shape]`` probes with ``E[v v^T] = I`` over ``shape``: probe ``i`` of sample
    ``b`` is row ``b * k + i`` of one ``[N k, size]`` draw. Sample-major, so that the rows of a
    shard of the samples are one block of the draw, which its device can generate alone (the
    values never depend on the sharding: jax's threefry is partitionable)."""
    return PROBES[name](key, (n * k, math.prod(shape)), dtype).reshape(n, k, *shape)


def batched_sqnorms(
    f: BatchedFn,
    xs: Array,
    key: Array,
    *,
    params: Any = None,
    num_probes: int = 1,
    side: str = "input",
    probes: str = "rademacher",
    has_aux: bool = False,
):
    """Unbiased, differentiable estimates of each sample's ``||dz_b/dx_b||_F^2`` (see below
    for BatchNorm) from ``k = num_probes`` probes per sample, and the embeddings.

    Hutchinson's estimator on the batched function, with one probe per sample drawn
    independently, ``E[p p^T] = I``:

    * ``side="input"`` (the default): one JVP per probe ``U: [N, ...]`` in input space,
      ``J U: [N, D]`` with row ``c`` equal to ``J_c u_c`` when the samples do not interact,
      and ``E ||J_c u_c||^2 = ||J_c||_F^2``;
    * ``side="output"``: one VJP per probe ``V: [N, D]`` in embedding space, ``J^T V: [N,
      ...]`` with row ``b`` equal to ``J_b^T v_b``, ``E ||J_b^T v_b||^2 = ||J_b||_F^2``
      (Hoffman, Roberts and Yaida's form).

    The ``k`` probes share one forward pass (the JVP or the pullback is vmapped over them, and
    the primal does not depend on the probe); the estimate is their mean. The input side is
    ``jax.jvp``, not ``jax.linearize``: linearising would inline the tangent maps' own
    ``custom_jvp`` rules (:mod:`jacosr.models.conv`), so that ``jax.grad`` of the estimate
    would differentiate them with JAX's default rules, which XLA's CPU backend runs on a slow
    path inside the training loop. Being built from ``jax.jvp`` /
    ``jax.vjp``, it is differentiable with respect to ``params``: ``jax.grad`` of a mean of
    estimates is an unbiased estimate of the gradient of the mean squared norm. Why the input
    side by default: both sides cost one pass per probe, but the gradient of the estimate
    differentiates that pass again, and reverse mode over JVPs (the input side) costs several
    times less than reverse mode over VJPs (double backprop) on convolutional backbones, about
    the same on small dense ones (``benchmarks/jacobian_training.py``). Their per-probe
    variances differ only in the diagonal term below; neither side is always the lower. The
    square root of an estimate is a biased (low) estimate of the norm, so penalties use the
    square.

    Per-probe variance, ``A = J_b^T J_b`` (input side, ``[d, d]``) or ``J_b J_b^T`` (output
    side, ``[D, D]``; the same ``||A||_F``), as in :func:`jacosr.jacobian.hutchinson_sqnorms`:
    rademacher (the default, never larger than gaussian) ``2 (||A||_F^2 - sum_i A_ii^2)``,
    gaussian ``2 ||A||_F^2``, sphere (uniform on the sphere of radius ``sqrt(n)``, Hoffman et
    al.'s choice) ``2n/(n+2) (||A||_F^2 - tr(A)^2/n)``, ``n`` the probe dimension.

    BatchNorm in training mode couples the samples: ``z_c`` depends on every ``x_b`` through
    the batch statistics. With ``J_cb = dz_c/dx_b`` and probes independent across samples, the
    estimate's expectation is ``sum_b ||J_cb||_F^2`` for sample ``c`` on the input side (the
    squared norm of the ``c``-th block row of the batch Jacobian ``dZ/dX``: the sensitivity of
    ``z_c`` to the whole batch) and ``sum_c ||J_cb||_F^2`` for sample ``b`` on the output side
    (the block column: the sensitivity of the batch's embeddings to ``x_b``); averaged over the
    batch, both are ``||dZ/dX||_F^2 / N``. A cross block ``J_cb`` (``c != b``) acts only
    through the batch means and variances, each ``O(1/N)``, so the ``N - 1`` cross terms add
    ``O(1/N)`` to the diagonal block's ``||J_bb||_F^2``. That is acceptable, and no estimator
    of ``||J_bb||_F^2`` alone is worth its cost: the norm the paper measures (and the JND) is
    the EVAL-mode one (running statistics, no dependence on the batch), from which ``J_bb``
    itself already differs by ``O(1/N)`` (its statistics depend on ``x_b``) and by the
    batch-versus-running statistics, so removing the cross terms would not make the target
    exact. It would take ``N`` passes, or the product ``(v_b^T (J U)_b) (u_b^T (J^T V)_b)`` of
    a JVP and a VJP, unbiased for ``||J_bb||_F^2`` but signed, with per-probe variance at least
    ``2 ||J_bb||_F^4`` (gaussian Hutchinson's, ``2 ||A||_F^2``, is never larger and is smaller
    unless ``J_bb`` has rank 1). Penalising the cross blocks also keeps the batch statistics
    from spreading one sample's perturbation into every embedding. Dropout: the network is
    differentiated with the step's dropout mask, as the loss is.

    Args:
      f: the batched function, ``f(xs) -> z`` or with ``params`` ``f(params, xs) -> z``,
        ``xs: [N, ...]``, ``z: [N, D]`` floating; with ``has_aux``, ``(z, aux)``.
      xs: ``[N, ...]`` floating inputs (for training: the upright batch first, then other rows).
      key: one PRNG key; the ``N * k`` probes are drawn from it, sample-major: probe ``i`` of
        sample ``b`` is row ``b * k + i`` of one ``[N k, probe size]`` draw of ``probes``.
      params: None for ``f(xs)``, else the pytree ``f`` takes first (differentiate the
        estimates with respect to it).
      num_probes: ``k >= 1`` probes per sample; the variance of the estimate falls as ``1/k``,
        the cost of the probes' passes grows as ``k``.
      side: ``"input"`` (JVPs) or ``"output"`` (VJPs).
      probes: ``"rademacher"``, ``"gaussian"`` or ``"sphere"`` (:data:`jacosr.jacobian.PROBES`).
      has_aux: whether ``f`` returns ``(z, aux)``; ``aux`` (e.g. the network's other outputs
        and its new BatchNorm statistics) is returned as computed by the one forward pass.

    Returns:
      ``(sqnorms, z)``, or ``(sqnorms, z, aux)`` with ``has_aux``: ``sqnorms: [N]`` the
      estimates, ``z: [N, D]`` the embeddings of the same forward pass (differentiable, like
      ``aux``, so the objective's loss can use them: no second forward pass).
    """
    _check_batch(xs)
    _registry_get(dict.fromkeys(SIDES), side, "side")
    _registry_get(PROBES, probes, "probe distribution")
    if num_probes < 1:
        raise ValueError(f"num_probes must be at least 1; got {num_probes}")
    g = f if params is None else functools.partial(f, params)
    n, k = xs.shape[0], num_probes
    if side == "input":
        u = _probes(probes, key, n, k, xs.shape[1:], xs.dtype)
        z, rows, *aux = jax.vmap(
            lambda probe: jax.jvp(g, (xs,), (probe,), has_aux=has_aux),
            in_axes=1,
            out_axes=(None, 1, *([None] if has_aux else [])),
        )(u)  # rows: [N, k, D]
        _check_embedding(z, n)
    else:
        z, pullback, *aux = jax.vjp(g, xs, has_aux=has_aux)
        _check_embedding(z, n)
        v = _probes(probes, key, n, k, z.shape[1:], z.dtype)
        (rows,) = jax.vmap(pullback, in_axes=1, out_axes=1)(v)  # [N, k, ...]
    sqnorms = jnp.mean(jnp.sum(jnp.square(rows.reshape(n, k, -1)), axis=2), axis=1)
    return (sqnorms, z, *aux)


def _check_embedding(z, n: int) -> None:
    if z.ndim != 2 or z.shape[0] != n or not jnp.issubdtype(z.dtype, jnp.floating):
        raise ValueError(
            f"f must map xs: [{n}, ...] to a floating z: [{n}, D]; got {z.dtype}{list(z.shape)}"
        )


class PathPoints(NamedTuple):
    """Points on straight paths between samples of different classes (:func:`open_space_points`).

    ``points: [B, ...]`` with ``points[b] = (1 - t[b]) xs[b] + t[b] xs[partner[b]]``;
    ``partner: [B]`` int, a sample of another class than ``b`` where ``valid[b]``;
    ``t: [B]`` the position on the path (0 where not ``valid``: the point is ``xs[b]``);
    ``valid: [B]`` bool, False for a sample whose class is the only one in the batch.
    """

    points: Array
    partner: Array
    t: Array
    valid: Array


def open_space_points(
    key: Array, xs: Array, labels: Array, *, t_min: float = 0.25, t_max: float = 0.75
) -> PathPoints:
    """One point mid-path from each sample towards a random sample of ANOTHER class.

    The paper's Fig. 3 interpolates ``x_t = (1 - t) x_0 + t x_1`` between samples of two
    different known classes ``C_i, C_j``: near ``t = 0.5`` the path crosses the open set, where
    unknowns arise and the norm peaks; Eq. 13-16 write the Jacobian norm's integral over the
    open set through paths from one class to another. Paths within a class stay (mostly) in the
    known region, where the known-class term lowers the norm; so partners are drawn only among
    the samples whose label differs, uniformly (the argmax of uniform scores over them), and
    ``t`` uniformly in ``[t_min, t_max]``, away from both ends (which are known samples).

    Takes the upright batch and its labels only: the rotated copies of the self-supervised
    task are no class's samples, so they never enter a path (as they enter no class's loss).

    Args:
      key: PRNG key (the pairing and the positions are drawn from it).
      xs: ``[B, ...]`` floating, the upright (augmented) batch.
      labels: ``[B]`` int class labels.
      t_min, t_max: ``0 < t_min <= t_max < 1``, the range of ``t`` (Python floats, checked
        when traced: a config's values, not traced arrays).

    Returns:
      :class:`PathPoints`; a sample with no partner of another class (every sample of a batch
      with one class) is not ``valid``, and its point is the sample itself.
    """
    _check_batch(xs)
    xs, labels = jnp.asarray(xs), jnp.asarray(labels)
    if labels.shape != xs.shape[:1]:
        raise ValueError(f"labels must be [{xs.shape[0]}]; got shape {labels.shape}")
    if not 0 < t_min <= t_max < 1:
        raise ValueError(f"need 0 < t_min <= t_max < 1; got t_min={t_min}, t_max={t_max}")
    b = xs.shape[0]
    pair_key, t_key = jax.random.split(key)
    other = labels[:, None] != labels[None, :]  # [B, B]
    valid = jnp.any(other, axis=1)
    scores = jnp.where(other, jax.random.uniform(pair_key, (b, b)), -1.0)
    partner = jnp.argmax(scores, axis=1)
    t = jax.random.uniform(t_key, (b,), xs.dtype, t_min, t_max)
    t = jnp.where(valid, t, 0.0)
    tb = t.reshape(b, *([1] * (xs.ndim - 1)))
    return PathPoints((1 - tb) * xs + tb * xs[partner], partner, t, valid)


def open_space_hinge(
    path_sqnorms: Array, known_sqnorms: Array, valid: Array, *, ratio: float = 2.0
) -> Array:
    """The open-space term: how far the norm mid-path falls short of ``ratio`` times the
    known-class norm, in ``[0, 1]``, averaged over the valid paths.

        target = ratio^2 * mean_b ||J(x_b)||_F^2                     (known batch)
        term   = mean_{p valid} relu(1 - ||J(x_p)||_F^2 / target)     (path points)

    Why this form:

    * It raises the first expectation of Eq. 20 (the JND) where the paper's analysis puts the
      unknowns: at inter-class path points (Fig. 3), in the high-norm support ``S`` whose
      expected norm inter-class separation increases (Eq. 17-19).
    * It cannot grow without bound: the hinge is 0, with zero gradient, once a path's squared
      norm reaches the target, so the term asks for a ratio of norms (the path RMS norm at least
      ``ratio`` times the known-class one), never for ever larger norms; the value lies in
      ``[0, 1]``. The ratio is met by the path norms rising or the known-class norms falling,
      and its gradient asks for both (the JND's two sides): a target held constant
      (``stop_gradient``) let the known-class norms rise with the path norms, as they share
      the network, and the target with them, so that on digits both grew without bound over
      training (README, "Training for the Jacobian norm difference").
    * The target is relative to the known-class norm, which metric learning and the
      known-class term move by orders of magnitude, so one ``ratio`` suits every backbone and
      every stage of training; the division by the target makes the term dimensionless, so its
      weight means the same throughout, and its gradient ``-grad ||J(x_p)||^2 / target`` is
      a relative push.
    * Squared norms, not norms: only they have unbiased estimates (:func:`batched_sqnorms`);
      the target is the mean of squares (RMS), which pools the batch's known-class estimates
      into a low-variance scale rather than pairing each path with its two noisy ends.

    The hinge of a noisy estimate is biased up (``E relu(1 - X) >= relu(1 - E X)``): near the
    target, probes that undershoot still push; more probes shrink that. Compare norms of ONE
    function: the path estimates from the same training-mode forward pass as the known ones
    (one batch, one set of BatchNorm statistics; see the module docstring).

    Args:
      path_sqnorms: ``[P]`` squared-norm estimates at the path points.
      known_sqnorms: ``[B]`` squared-norm estimates at the known (upright) batch.
      valid: ``[P]`` bool, the paths that exist (:attr:`PathPoints.valid`).
      ratio: ``> 0``, the norm ratio asked for (a Python float, checked when traced).

    Returns:
      scalar in ``[0, 1]``; 0 when no path is valid or the known-class norm is 0.
    """
    if not ratio > 0:
        raise ValueError(f"ratio must be > 0; got {ratio}")
    target = ratio**2 * jnp.mean(known_sqnorms)
    positive = target > 0
    # The double where keeps the untaken branch finite, so its gradient is 0, not NaN.
    shortfall = jax.nn.relu(1.0 - path_sqnorms / jnp.where(positive, target, 1.0))
    shortfall = jnp.where(valid & positive, shortfall, 0.0)
    return jnp.sum(shortfall) / jnp.maximum(jnp.sum(valid), 1)
