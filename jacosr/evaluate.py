"""Evaluate a trained model on an open-set split: closed-set accuracy and unknown detection."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import numpy as np
from flax import nnx

from jacosr.data import OpenSetData, to_float
from jacosr.losses import LossConfig
from jacosr.metrics import metric_accuracy, metric_auroc
from jacosr.models import ModelState, Outputs, apply_model
from jacosr.scores import score_fn


@partial(jax.jit, static_argnums=0)
def _forward(graphdef: nnx.GraphDef, state: ModelState, x: jax.Array) -> Outputs:
    return apply_model(graphdef, state, to_float(x), train=False)[0]


def predict(
    graphdef: nnx.GraphDef, state: ModelState, x: np.ndarray, *, batch_size: int = 512
) -> Outputs:
    """Eval-mode outputs for ``x: [N, H, W, C]`` (float32 or uint8), as numpy arrays.

    Runs in fixed-size batches (the last one padded) so every call with the same batch size
    reuses one compiled function.
    """
    n = len(x)
    pad = -n % batch_size
    xp = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
    parts = [
        _forward(graphdef, state, xp[i : i + batch_size]) for i in range(0, len(xp), batch_size)
    ]
    return jax.tree.map(lambda *a: np.concatenate(a)[:n], *parts)


def evaluate(
    graphdef: nnx.GraphDef,
    state: ModelState,
    data: OpenSetData,
    loss_config: LossConfig,
    scores: Sequence[str] = ("loss", "msp"),
) -> dict:
    """Closed-set accuracy on known-test and, per score, the AUROC of known vs unknown test.

    Scores follow "higher = more likely unknown" (see :mod:`jacosr.scores`); the AUROC treats
    unknown as the positive class. Returns a JSON-serialisable dict that also records the split.
    """
    score_fns = {name: score_fn(name) for name in scores}
    known = predict(graphdef, state, data.known_test.x)
    unknown = predict(graphdef, state, data.unknown_test.x)
    accuracy = metric_accuracy(np.argmax(known.logits, -1), data.known_test.y)
    auroc = {
        name: metric_auroc(np.asarray(fn(known, loss_config)), np.asarray(fn(unknown, loss_config)))
        for name, fn in score_fns.items()
    }
    return {"accuracy": accuracy, "auroc": auroc, "split": data.describe()}
