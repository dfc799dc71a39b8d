"""Detectors: one object per unknown score, for any model -- a jacosr run, a plain JAX function,
or precomputed logits and embeddings (from PyTorch or any other framework).

In the style of pytorch-ood: build a detector from a model, ``fit`` it on known training data
when its score needs that (:class:`MaxCosine`, :class:`OpenMax`; for the others ``fit`` does
nothing), then ``score`` inputs::

    detector = jacosr.OpenMax(model).fit(x_train, y_train)
    s = detector.score(x_test)              # [N] float: higher = more likely unknown, always
    unknown = detector.predict(x_test, t)   # [N] bool: s > t

``score`` is the unknown score (pytorch-ood's ``Detector.predict``); ``predict`` is the decision
at a threshold, which the caller picks, e.g. ``jacosr.threshold_at_reject_rate(
detector.score(x_val), 0.05)`` rejects 5% of known validation samples. Every detector scores
through the registry :data:`jacosr.scores.SCORES`, the same code the evaluation table runs: no
score exists twice.

What a detector takes as its model (:func:`as_network`):

* a jacosr run: its workdir (``str`` or ``Path``) or what :func:`jacosr.runs.load_run` returns;
  the loss comes from the run's config. Inputs are images as the data hold them (uint8, or
  float32 in [-1, 1]).
* a jacosr model, ``(graphdef, state)`` or an :class:`~jacosr.models.OpenSetNet`, with
  ``loss=`` (the loss it was trained with) for the scores that read logits.
* a :class:`Network`: any pure JAX function of ONE unbatched input, ``embed(x) -> z: [D]``,
  optionally ``logits(x) -> [K]``, and their ``params`` (``embed(params, x)`` then). Inputs are
  passed as given. A bare callable is taken as ``embed``.
* nothing: the detector scores precomputed arrays, ``fit_features(labels, embeddings=...,
  logits=...)`` and ``score_features(embeddings=..., logits=...)``. This is the path for models
  of other frameworks (PyTorch: ``logits = model(x).detach().cpu().numpy()``).

What each score reads: logits (:class:`LossScore`, :class:`MaxSoftmax`, :class:`MaxLogit`,
:class:`Energy`, :class:`OpenMax`), embeddings (:class:`MaxCosine`), or the model itself
(:class:`JacobianNorm`, :class:`StochasticJacobianNorm`: they differentiate the embedding with
respect to the input, so they need a differentiable JAX function; arrays are refused).
Logits are used as given (softmax for MSP, logsumexp for the energy, the softmax
cross-entropy at the pseudo label for the loss score), except for a jacosr model, whose head's
class scores (cosines, distances) become logits through its loss (scale, margins; see
:class:`jacosr.losses.LossSpec`).

To turn scores into the usual table: ``jacosr.open_set_metrics(score_known, score_unknown,
known_correct)`` per score, and :func:`jacosr.format_metrics` for the rows.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from jacosr.data import to_float
from jacosr.evaluate import forward, map_padded, predict
from jacosr.losses import LossConfig
from jacosr.models import ModelState, OpenSetNet, Outputs, embedding_apply, split_model
from jacosr.runs import load_run
from jacosr.scores import SCORES, ScoreConfig, ScoreContext, Scorer

LOGITS_AS_GIVEN = LossConfig(loss="sce")
"""The loss of logits "as given": ``sce``'s softmax logits are the class scores themselves and
its loss is the softmax cross-entropy, so MSP, max-logit, energy, OpenMax and the loss score
read a model's logits unchanged."""

DEFAULT_SCORE_CONFIG = ScoreConfig()

FORWARD_BATCH = 512
"""Samples per compiled call of a :class:`Network`'s forward pass (the last batch padded)."""


def _call(fn: Callable, params: Any, x: jax.Array) -> jax.Array:
    return fn(x) if params is None else fn(params, x)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _forward_functions(embed: Callable, logits: Callable | None, params: Any, xs: jax.Array):
    def one(x):
        k = None if logits is None else _call(logits, params, x)
        return Outputs(_call(embed, params, x), k)

    return jax.vmap(one)(xs)


@dataclass(frozen=True, eq=False)
class Network:
    """A model as the detectors see it.

    Attributes:
      embed: the representation of ONE unbatched input, ``embed(x: [...]) -> [D]``, or
        ``embed(params, x)`` with ``params`` -- the Jacobian engine's convention
        (:mod:`jacosr.jacobian`). A batched ``g(xs: [B, ...]) -> [B, D]`` becomes
        ``lambda x: g(x[None])[0]``.
      logits: the class logits of ONE input, ``logits(x) -> [K]`` (or ``logits(params, x)``),
        or None when the model has none (then only :class:`MaxCosine` and the Jacobian
        detectors apply).
      params: the arrays ``embed`` and ``logits`` take first, or None. Passed as traced
        arguments: another ``params`` of the same shapes compiles nothing again.
      loss: how the class scores become logits and what the loss score is:
        :data:`LOGITS_AS_GIVEN` for ``logits``; a jacosr model's training loss; None when not
        known (a jacosr model given without it: the scores of logits refuse it).
      graphdef: a jacosr model's graph (:meth:`from_model`): its forward pass is
        :func:`jacosr.evaluate.predict` (the head's class scores, RPL's radius, ...), and its
        inputs are images, uint8 or float32 in [-1, 1] (:func:`jacosr.data.to_float`).
    """

    embed: Callable[..., jax.Array]
    logits: Callable[..., jax.Array] | None = None
    params: Any = None
    loss: LossConfig | None = LOGITS_AS_GIVEN
    graphdef: nnx.GraphDef | None = None

    @classmethod
    def from_model(
        cls, graphdef: nnx.GraphDef, state: ModelState, loss: LossConfig | None = None
    ) -> Network:
        """A jacosr model (:func:`jacosr.models.split_model`); ``loss``: the loss it was trained
        with, needed by the scores that read logits."""
        return cls(embedding_apply(graphdef), params=state, loss=loss, graphdef=graphdef)

    @classmethod
    def from_run(cls, run: str | os.PathLike | tuple) -> Network:
        """A jacosr run: its workdir, or the ``(config, data, graphdef, state)`` that
        :func:`jacosr.runs.load_run` returns; the loss is the run's."""
        config, _, graphdef, state = (
            load_run(Path(run)) if isinstance(run, str | os.PathLike) else run
        )
        return cls.from_model(graphdef, state, loss=config.loss)

    def inputs(self, x) -> np.ndarray:
        """``x: [N, ...]`` as ``embed`` takes it: float32 in [-1, 1] for a jacosr model, else as
        given (as a NumPy array)."""
        return np.asarray(to_float(np.asarray(x)) if self.graphdef is not None else x)

    def output_shapes(self, x: np.ndarray) -> Outputs:
        """The outputs of ONE input of ``x: [N, ...]``, traced, not computed: ``Outputs`` of
        ``jax.ShapeDtypeStruct``, ``embedding: [D]`` and ``class_scores: [K]`` (None without a
        ``logits`` function) for a well-made model. Raises what the model raises when it
        cannot take an input of that shape."""
        one = jax.ShapeDtypeStruct((1, *x.shape[1:]), x.dtype)
        if self.graphdef is not None:
            fn = functools.partial(forward, self.graphdef)
        else:
            fn = functools.partial(_forward_functions, self.embed, self.logits)
        out = jax.eval_shape(fn, self.params, one)  # cached by jit, as the forward pass
        return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), out)

    def outputs(self, x) -> Outputs:
        """The forward pass of ``x: [N, ...]``: ``Outputs`` of NumPy arrays, ``embedding: [N, D]``
        and ``class_scores: [N, K]`` (the logits; None without a ``logits`` function)."""
        if self.graphdef is not None:
            return predict(self.graphdef, self.params, np.asarray(x), batch_size=FORWARD_BATCH)
        return map_padded(
            lambda xs: _forward_functions(self.embed, self.logits, self.params, xs),
            self.inputs(x),
            FORWARD_BATCH,
        )


def as_network(model: Any) -> Network | None:
    """The :class:`Network` of whatever a detector was given (see the module docstring):
    None, a Network, a workdir, a ``load_run`` result, ``(graphdef, state)``, an
    :class:`~jacosr.models.OpenSetNet`, or a callable (taken as ``embed``)."""
    if model is None or isinstance(model, Network):
        return model
    if isinstance(model, str | os.PathLike) or (isinstance(model, tuple) and len(model) == 4):
        return Network.from_run(model)
    if isinstance(model, tuple) and len(model) == 2 and isinstance(model[0], nnx.GraphDef):
        return Network.from_model(*model)
    if isinstance(model, OpenSetNet):
        return Network.from_model(*split_model(model))
    if type(model).__module__.split(".")[0] == "torch":
        raise TypeError(
            "a PyTorch model cannot be differentiated or run by JAX: export its logits and/or "
            "features as NumPy arrays and pass them to fit_features / score_features (the "
            "Jacobian detectors need a JAX function of the inputs)"
        )
    if callable(model):
        return Network(model)
    raise TypeError(
        f"cannot score with a {type(model).__name__}: give a jacosr workdir or run, "
        "(graphdef, state), a jacosr.Network, a JAX function x -> embedding, or nothing (then "
        "score arrays with score_features)"
    )


def _features(embeddings, logits) -> Outputs:
    def array(a):
        return None if a is None else np.asarray(a)

    return Outputs(array(embeddings), array(logits))


class Detector:
    """One unknown score as an object: ``fit`` (where the score fits on known training data),
    ``score`` (``[N]``, higher = more likely unknown), ``predict`` (``score > threshold``), and
    the same on precomputed arrays (``fit_features``, ``score_features``). See the module
    docstring for the models it takes.

    ``reads`` says what the score reads: ``"logits"``, ``"embeddings"`` or ``"inputs"`` (the
    Jacobian scores, which differentiate ``embed``); ``min_width`` the fewest classes (logits)
    or dimensions (embeddings) it tells samples apart with.

    Every entry checks its arguments, with one ``ValueError`` naming the detector, the
    argument, the shape got and the shape expected: logits ``[N, K]`` and embeddings ``[N, D]``,
    given or computed by the model (traced on one input before anything runs: a model that
    fails on ``x[0]``, or gives a scalar or ``[K, 1]`` per input, is named as such), once
    fitted of the width fitted on; labels ``[N]`` ints; finite training features."""

    reads: str = "logits"
    min_width: int = 1

    def __init__(
        self,
        score: str,
        model: Any = None,
        *,
        loss: LossConfig | None = None,
        config: ScoreConfig = DEFAULT_SCORE_CONFIG,
    ):
        self.name = score
        self.spec = SCORES[score]
        self.network = as_network(model)
        self.config = config
        if loss is None:
            loss = self.network.loss if self.network is not None else LOGITS_AS_GIVEN
        self.loss = loss
        what = type(self).__name__
        if self.reads == "inputs" and self.network is None:
            raise ValueError(
                f"{what} differentiates the embedding with respect to the input, so it needs a "
                "differentiable JAX function (a jacosr run or model, or jacosr.Network(embed)); "
                "precomputed embeddings or logits have no Jacobian"
            )
        if self.reads == "logits" and self.loss is None:
            raise ValueError(
                f"{what} reads logits, and a jacosr model's class scores become logits through "
                "the loss it was trained with: pass loss=<its LossConfig> (a run's config.loss), "
                "or give the run (its workdir) instead of (graphdef, state)"
            )
        self._scorer: Scorer | None = None
        self._width: int | None = None  # K or D of the features fitted on

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, fitted={self._scorer is not None})"

    # fitting

    def fit(self, x, labels) -> Detector:
        """Fit on known training inputs ``x: [N, ...]`` with labels ``[N]`` int in ``[0, K)``
        (every class present); nothing to fit for most scores. Returns the detector."""
        if not self.spec.fits_on_train:
            return self
        self._scorer, self._width = None, None  # a new fit, of any width
        net, x = self._inputs(x, "fit")
        return self._fit(net.outputs(x), labels, "fit")

    def fit_features(self, labels, *, embeddings=None, logits=None) -> Detector:
        """:meth:`fit` on precomputed known-training features: ``embeddings: [N, D]`` and/or
        ``logits: [N, K]``, ``labels: [N]``. Returns the detector."""
        if not self.spec.fits_on_train:
            return self
        self._scorer, self._width = None, None
        train = self._checked(_features(embeddings, logits), "fit_features")
        return self._fit(train, labels, "fit_features")

    def _fit(self, train: Outputs, labels, verb: str) -> Detector:
        """Fit on ``train`` (its field the score reads checked to be ``[N, width]``) and
        ``labels``; refused: labels that are not ``[N]`` ints, non-finite features (one would
        make every score NaN), and what the score's own fit refuses (labels out of range, a
        class without samples; :func:`jacosr.scores.check_train_labels`)."""
        field, arg = self._field()
        where, features = f"{type(self).__name__}.{verb}", getattr(train, field)
        labels, n = np.asarray(labels), len(features)
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"{where}: labels must be [N] ints, one per training sample (N = {n}); got "
                f"{labels.dtype} of shape {labels.shape}"
            )
        bad = np.flatnonzero(~np.isfinite(features).all(axis=1))
        if len(bad):
            rows = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
            raise ValueError(
                f"{where}: the {arg} of {len(bad)} of the {n} training samples are not finite "
                f"(NaN or inf; rows {rows}): fitted on, they would make every score NaN; drop "
                "those samples, or find why the model gives them"
            )
        try:
            self._scorer = self.spec.make(self._context(train, labels))
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
        self._width = features.shape[1]
        return self

    def _context(self, train: Outputs | None = None, labels=None) -> ScoreContext:
        net = self.network
        return ScoreContext(
            loss=self.loss,
            config=self.config,
            embedding_apply=None if net is None else net.embed,
            model_state=None if net is None else net.params,
            train=train,
            train_labels=labels,
        )

    def _ready(self) -> Scorer:
        if self._scorer is None:
            if self.spec.fits_on_train:
                raise ValueError(
                    f"{type(self).__name__} fits on known training data first: call "
                    "fit(x_train, y_train) or fit_features(y_train, ...)"
                )
            self._scorer = self.spec.make(self._context())
        return self._scorer

    # scoring

    def score(self, x) -> np.ndarray:
        """Unknown scores of ``x: [N, ...]`` (as the model takes them), ``[N]`` float, higher
        = more likely unknown. The Jacobian detectors show a progress bar and, for a long call,
        the estimated time (see :func:`jacosr.jacobian.jacobian_norms`)."""
        scorer = self._ready()
        net, x = self._inputs(x, "score")
        if self.reads == "inputs":
            return np.asarray(scorer(None, net.inputs(x)))
        return np.asarray(scorer(net.outputs(x), None))

    def score_features(self, *, embeddings=None, logits=None) -> np.ndarray:
        """Unknown scores of precomputed features, ``embeddings: [N, D]`` and/or ``logits:
        [N, K]`` (the one the score reads), ``[N]`` float, higher = more likely unknown."""
        if self.reads == "inputs":
            raise ValueError(
                f"{type(self).__name__} differentiates the model, so it scores inputs, not "
                "features: call score(x) with a differentiable JAX model"
            )
        scorer = self._ready()
        features = self._checked(_features(embeddings, logits), "score_features")
        return np.asarray(scorer(features, None))

    def predict(self, x, threshold: float) -> np.ndarray:
        """``[N]`` bool, True = unknown: ``score(x) > threshold``."""
        return self.score(x) > threshold

    # checks

    def _network(self, verb: str) -> Network:
        if self.network is None:
            raise ValueError(
                f"{type(self).__name__} was built without a model, so it cannot {verb} inputs: "
                f"use {verb}_features with precomputed arrays, or build it from a model"
            )
        return self.network

    def _inputs(self, x, verb: str) -> tuple[Network, np.ndarray]:
        """The network and ``x`` as a NumPy array, once ``x`` is known to be a batch ``[N,
        ...]`` the model takes, giving outputs of the shapes the score reads: traced on one
        input (:meth:`Network.output_shapes`), before anything is computed."""
        net = self._network(verb)
        where, x = f"{type(self).__name__}.{verb}", np.asarray(x)
        if x.ndim == 0 or len(x) == 0:
            raise ValueError(
                f"{where}: x must be a batch [N, ...] of N >= 1 inputs, one per row; got shape "
                f"{x.shape}"
            )
        if net.graphdef is not None and x.ndim != 4:
            one = " (one image? x[None] is a batch of it)" if x.ndim == 3 else ""
            raise ValueError(
                f"{where}: a jacosr model takes images x: [N, H, W, C]; got shape {x.shape}{one}"
            )
        try:
            shapes = net.output_shapes(x)
        except (TypeError, ValueError, IndexError) as err:
            raise ValueError(
                f"{where}: the model fails on one input of shape {x.shape[1:]} (x: {x.shape} "
                f"is taken as [N, ...], one input per row; is that how the model takes it?): "
                f"{err}"
            ) from err
        self._checked(shapes, verb, x.shape)
        return net, x

    def _field(self) -> tuple[str, str]:
        """The field of ``Outputs`` the score reads and the argument that gives it."""
        if self.reads == "logits":
            return "class_scores", "logits"
        return "embedding", "embeddings"

    def _checked(self, out: Outputs, verb: str, x_shape: tuple | None = None) -> Outputs:
        """``out`` if it holds what the score reads, of the shape the score needs, else an
        error naming the detector, the argument, the shape got and the shape expected.

        ``out``: the arrays given to ``verb`` (``logits: [N, K]``, ``embeddings: [N, D]``, N
        >= 1), or, with ``x_shape`` (the shape of the inputs), the model's outputs for ONE
        input (``[K]``, ``[D]``; :meth:`Network.output_shapes`). The width is at least
        :attr:`min_width`, and once fitted, the one fitted on."""
        field, arg = self._field()
        got, where = getattr(out, field), f"{type(self).__name__}.{verb}"
        if got is None:
            raise ValueError(
                f"{type(self).__name__} reads {arg}: pass {arg}=[N, ...] to the *_features "
                "methods, or give the model a logits function (jacosr.Network(embed, logits))"
            )
        size, unit = ("K", "classes") if arg == "logits" else ("D", "dimensions")
        if self._width is not None:
            need = f"{size} = {self._width} {unit}, as fitted"
        else:
            alike = ": with one, every sample scores alike" if self.min_width > 1 else ""
            need = f"{size} >= {self.min_width} {unit}{alike}"
        shape, per_input = tuple(got.shape), x_shape is not None
        ok = len(shape) == (1 if per_input else 2) and shape[-1] >= self.min_width
        if ok and self._width in (None, shape[-1]) and (per_input or shape[0] >= 1):
            return out
        if per_input:
            output = "logits" if arg == "logits" else "embedding"
            raise ValueError(
                f"{where}: the model's {output} must be [{size}] for one input "
                f"({need}), so [N, {size}] for x: [N, ...]; it gives shape {shape} for one "
                f"input of shape {x_shape[1:]} (x: {x_shape})"
            )
        raise ValueError(
            f"{where}: {arg} must be [N, {size}] (N >= 1 samples, {need}); got shape {shape}"
        )


class LossScore(Detector):
    """The training loss at the pseudo label ``argmax_k`` (Eq. 22;
    :func:`jacosr.scores.score_loss`). ``loss``: the model's training loss (a jacosr run's is
    taken from it); for logits as given, the softmax cross-entropy. ``margin=False``: m-OvR's
    loss without its angular margins (:func:`jacosr.scores.score_loss_no_margin`)."""

    min_width = 2

    def __init__(self, model: Any = None, *, loss: LossConfig | None = None, margin: bool = True):
        super().__init__("loss" if margin else "loss_no_margin", model, loss=loss)


class MaxSoftmax(Detector):
    """Negative maximum softmax probability (Hendrycks & Gimpel 2017)."""

    min_width = 2

    def __init__(self, model: Any = None, *, loss: LossConfig | None = None):
        super().__init__("msp", model, loss=loss)


class MaxLogit(Detector):
    """Negative maximum logit (Vaze et al. 2022)."""

    def __init__(self, model: Any = None, *, loss: LossConfig | None = None):
        super().__init__("max_logit", model, loss=loss)


class Energy(Detector):
    """Free energy ``-logsumexp_k z_k`` (Liu et al. 2020, temperature 1)."""

    def __init__(self, model: Any = None, *, loss: LossConfig | None = None):
        super().__init__("energy", model, loss=loss)


class MaxCosine(Detector):
    """Negative maximum cosine similarity of the embedding to the known-train class means;
    fit on known training data."""

    reads = "embeddings"

    def __init__(self, model: Any = None):
        super().__init__("max_cosine", model)


class OpenMax(Detector):
    """Log-probability of OpenMax's unknown class (Bendale & Boult 2016): a Weibull fit per class
    on the ``tail`` largest distances to the class's mean logit vector, recalibrating the
    ``alpha`` top classes; fit on known training data."""

    min_width = 2

    def __init__(
        self, model: Any = None, *, loss: LossConfig | None = None, tail: int = 20, alpha: int = 2
    ):
        config = ScoreConfig(openmax_tail=tail, openmax_alpha=alpha)
        super().__init__("openmax", model, loss=loss, config=config)


class JacobianNorm(Detector):
    """Exact Jacobian norm ``||d embed / dx||_F`` per input (the paper's quantity, Eq. 20)."""

    reads = "inputs"

    def __init__(self, model: Any):
        super().__init__("jacobian", model)


class StochasticJacobianNorm(Detector):
    """``sqrt`` of an unbiased estimate of ``||d embed / dx||_F^2`` from ``probes`` random
    probes per input (``estimator``: ``hutchinson`` or ``xnystrace``; ``seed`` of the probes).
    Cheaper than exact for large embeddings and inputs (see the README's Jacobian engine)."""

    reads = "inputs"

    def __init__(
        self, model: Any, *, estimator: str = "hutchinson", probes: int = 8, seed: int = 0
    ):
        config = ScoreConfig(jacobian_estimator=estimator, jacobian_probes=probes, score_seed=seed)
        super().__init__("jacobian_stochastic", model, config=config)


DETECTORS: dict[str, Callable[..., Detector]] = {
    "loss": LossScore,
    "loss_no_margin": functools.partial(LossScore, margin=False),
    "msp": MaxSoftmax,
    "max_logit": MaxLogit,
    "energy": Energy,
    "max_cosine": MaxCosine,
    "openmax": OpenMax,
    "jacobian": JacobianNorm,
    "jacobian_stochastic": StochasticJacobianNorm,
}
"""The detector of each registered score (:data:`jacosr.scores.SCORES`), by score name:
``DETECTORS[name](model, ...)``."""
