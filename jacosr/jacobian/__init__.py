"""Per-sample Jacobian norms of an embedding: exact, stochastic, and along paths.

The engine knows only a pure function of ONE unbatched input (``x`` of any shape, e.g.
``[H, W, C]``; ``z: [d_z]``), ``f(x) -> z`` or ``f(params, x) -> z`` with ``params=``, and a
batch ``xs: [B, ...]``. ``J = df/dx`` has shape ``[d_z, d]`` with ``d = x.size``; everything
here is about ``||J||_F``, the paper's Jacobian norm. Pass a model's arrays as ``params`` (e.g.
``jacobian_norms(jacosr.models.embedding_apply(graphdef), xs, params=state)``) rather than
closing over them: they are then traced arguments, so one set of compiled programs serves
every state of the architecture (checkpoints during training, before / after training).
The one exception is :mod:`~jacosr.jacobian.penalties`, for training: it takes the BATCHED
training-mode network, whose BatchNorm normalises each sample by its batch.

Two layers, as in optax or matfree, the paths and the training terms:

* :mod:`~jacosr.jacobian.kernels`: jit-compatible kernels that process one chunk (use them
  inside your own ``jit``): :func:`exact_sqnorms`, :func:`hutchinson_sqnorms`,
  :func:`xnystrace_sqnorms`; the probes and :func:`check_estimator`.
* :mod:`~jacosr.jacobian.driver`: drivers that keep peak memory under a byte budget by a host
  loop over fixed-size chunks, on CPU from :data:`CPU_WORKERS` threads:
  :func:`jacobian_norms`, :func:`estimate_sqnorms`.
* :mod:`~jacosr.jacobian.paths`: :func:`path_points` and :func:`path_length` (the paper's
  Fig. 3).
* :mod:`~jacosr.jacobian.penalties`: terms for a training objective, differentiable and
  jit-compatible, on the BATCHED training-mode network: :func:`batched_sqnorms` (known-class
  smoothness), :func:`open_space_points` and :func:`open_space_hinge` (open-space sharpness).

The Jacobian norm difference (Eq. 20) is a metric:
:func:`jacosr.metrics.metric_jacobian_norm_difference`.
"""

from jacosr.jacobian.driver import (
    CPU_CHUNK_BYTES,
    CPU_WORKERS,
    DEFAULT_MAX_BYTES,
    estimate_sqnorms,
    jacobian_norms,
)
from jacosr.jacobian.kernels import (
    ESTIMATOR_PROBES,
    ESTIMATORS,
    MIN_PROBES,
    MODES,
    PROBES,
    SIDES,
    check_estimator,
    exact_sqnorms,
    hutchinson_sqnorms,
    resolve_mode,
    xnystrace_sqnorms,
)
from jacosr.jacobian.paths import path_length, path_points
from jacosr.jacobian.penalties import (
    PathPoints,
    batched_sqnorms,
    open_space_hinge,
    open_space_points,
)

__all__ = [
    "CPU_CHUNK_BYTES",
    "CPU_WORKERS",
    "DEFAULT_MAX_BYTES",
    "ESTIMATORS",
    "ESTIMATOR_PROBES",
    "MIN_PROBES",
    "MODES",
    "PROBES",
    "SIDES",
    "PathPoints",
    "batched_sqnorms",
    "check_estimator",
    "estimate_sqnorms",
    "exact_sqnorms",
    "hutchinson_sqnorms",
    "jacobian_norms",
    "open_space_hinge",
    "open_space_points",
    "path_length",
    "path_points",
    "resolve_mode",
    "xnystrace_sqnorms",
]
