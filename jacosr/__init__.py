"""jacosr: open-set recognition by the Jacobian norm of the representation (JAX / Flax NNX).

The flat public API, what a user imports (``from jacosr import MaxSoftmax, open_set_metrics``):
the detectors (:mod:`jacosr.detectors`), the metrics and the table, the Jacobian engine's two
drivers, what trains, loads and evaluates a run, and what brings a user's data (arrays,
files, an open-set split). Each name is imported from its module on first use (PEP 562),
so that ``import jacosr.data`` or a command does not pay for importing all of them.
"""

import importlib

# name -> the module that defines it; sorted by name.
_EXPORTS = {
    "CheckpointStore": "jacosr.checkpoint",
    "DETECTORS": "jacosr.detectors",
    "DataConfig": "jacosr.data",
    "Detector": "jacosr.detectors",
    "Energy": "jacosr.detectors",
    "EvalConfig": "jacosr.evaluate",
    "JacobianNorm": "jacosr.detectors",
    "LossConfig": "jacosr.losses",
    "LossScore": "jacosr.detectors",
    "MaxCosine": "jacosr.detectors",
    "MaxLogit": "jacosr.detectors",
    "MaxSoftmax": "jacosr.detectors",
    "Network": "jacosr.detectors",
    "OpenMax": "jacosr.detectors",
    "OpenSetData": "jacosr.data",
    "ScoreConfig": "jacosr.scores",
    "StochasticJacobianNorm": "jacosr.detectors",
    "TrainConfig": "jacosr.recipe",
    "embedding_apply": "jacosr.models",
    "embedding_fn": "jacosr.models",
    "estimate_sqnorms": "jacosr.jacobian",
    "find_runs": "jacosr.runs",
    "fit": "jacosr.train",
    "format_metrics": "jacosr.evaluate",
    "format_table": "jacosr.evaluate",
    "jacobian_norms": "jacosr.jacobian",
    "load_open_set": "jacosr.data",
    "load_run": "jacosr.runs",
    "metric_jacobian_norm_difference": "jacosr.metrics",
    "open_set_metrics": "jacosr.metrics",
    "open_set_split": "jacosr.data",
    "prepare": "jacosr.data.prepare",
    "read_files": "jacosr.data",
    "source_from_arrays": "jacosr.data",
    "threshold_at_reject_rate": "jacosr.metrics",
    "to_float": "jacosr.data",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'jacosr' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
