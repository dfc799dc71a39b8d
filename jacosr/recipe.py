"""The training recipe: what a run trains (:class:`TrainConfig`), decided once per data set
(:func:`resolve`), and the paper's three techniques and their ablation (Table III).

A :class:`TrainConfig` is what a user writes (the command line, ``fit()``): the paper's
defaults, with ``augment="auto"`` and ``self_sup=None`` left for the data set to decide. The
decision is taken once, by :func:`resolve`, where a run's config enters (``fit``, ``run``,
and a grid's builder once it has set the run's data); everything downstream (the step
programs of :mod:`jacosr.step`, the loop of :mod:`jacosr.train`, the run format of
:mod:`jacosr.runs`) takes the :class:`ResolvedTrainConfig` it returns, which ``config.json``
records.

The paper's techniques (Sec. VI, Table III's W, A and S) are one rule, :func:`paper_techniques`
for a data set and :func:`switch_techniques` to turn them on or off in a run, shared by the
ablation (Table III), the dynamics figures (Figs. 9-11) and the sensitivity sweeps (Fig. 14):

* W, weight decay: the paper's 1e-3;
* A, augmentation: the paper's weak augmentation of the images (4 px translation and a
  horizontal flip), without the flip (``translate``) where a flip does not keep the label
  (handwritten digits, or a data set of your own prepared with ``--no-flip``;
  :func:`jacosr.data.paper_augmentation`);
* S, the rotation task: lambda_self 0.1.

By default (``auto``) A and S are on for image data sets and off on ``digits`` and ``toy2d``
(on 8x8 digits a 4 px shift moves half the image; toy2d's 1x1 "images" neither shift nor
rotate); W is on everywhere (``weight_decay`` defaults to the paper's value).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

from jacosr.config import OPTIONAL, require
from jacosr.data import DataConfig, get_augmentation, paper_augmentation
from jacosr.data.splits import resolve_benchmark
from jacosr.jacobian import SIDES
from jacosr.losses import LossConfig
from jacosr.models import ModelConfig
from jacosr.tracking import TrackConfig

TECHNIQUES_OFF_BY_DEFAULT = frozenset({"digits", "toy2d"})
"""Data sets on which ``augment="auto"`` and ``self_sup=None`` resolve to off."""


class Techniques(NamedTuple):
    """The values of the paper's techniques when they are on (Table III's W, A, S)."""

    weight_decay: float
    augment: str
    self_sup: float


PAPER_WEIGHT_DECAY = 1e-3
PAPER_SELF_SUP = 0.1


def paper_techniques(data: DataConfig) -> Techniques:
    """The paper's W, A and S for the images of ``data`` (a resolved data config: no
    benchmark left): weight decay 1e-3, the paper's weak augmentation for those images
    (:func:`jacosr.data.paper_augmentation`: no flip where a flip changes the label) and
    lambda_self 0.1."""
    augment = paper_augmentation(data.dataset, data.data_dir)
    return Techniques(PAPER_WEIGHT_DECAY, augment, PAPER_SELF_SUP)


@dataclass(frozen=True)
class JacobianTerms:
    """Terms that train for the Jacobian norm difference (Eq. 20) directly, beyond the paper
    (:mod:`jacosr.jacobian.penalties`; off by default). Both are estimated inside the jitted
    step, in the same training-mode forward pass as the loss, on the upright batch only (the
    rotated copies of the self-supervised task never enter them).

    Attributes:
      jacobian_reg: lambda_known, the weight of the known-class smoothness term
        ``mean_b ||J_f(x_b)||_F^2`` over the batch (Hoffman, Roberts and Yaida 2019); 0: off.
      jacobian_reg_probes: random projections per sample of the unbiased estimate of
        ``||J||_F^2`` (its variance falls as 1/k, its cost grows as k); also the probes of the
        open-space term.
      jacobian_reg_side: ``input`` (one JVP per probe, the cheaper on convolutional
        backbones) or ``output`` (one VJP per probe, Hoffman et al.'s form); both are unbiased
        for ``||J||_F^2`` and differentiated through (double backprop).
      open_space_reg: lambda_open, the weight of the open-space term: at a point drawn mid-path
        between each training sample and one of another known class (``x_t = (1 - t) x_a + t
        x_b``, t uniform in [0.25, 0.75]: where the paper's Fig. 3 has the norm peak), a hinge
        ``relu(1 - ||J(x_t)||^2 / (ratio^2 mean_b ||J(x_b)||^2))`` that asks the path norm to
        exceed the known-class norm by ``open_space_ratio`` and stops there (it cannot grow
        without bound: the path norm rising or the known norm falling meets it); 0: off.
      open_space_ratio: the ratio of the path's norm to the known-class norm that the
        open-space term asks for.

    Refused when built (``ValueError`` naming the flag): a negative or infinite weight, fewer
    than 1 probe, an unknown side, a ratio that is not positive and finite.
    """

    jacobian_reg: float = 0.0
    jacobian_reg_probes: int = 1
    jacobian_reg_side: str = "input"
    open_space_reg: float = 0.0
    open_space_ratio: float = 2.0

    def __post_init__(self):
        for flag, value in (
            ("--jacobian-reg", self.jacobian_reg),
            ("--open-space-reg", self.open_space_reg),
        ):
            require(0 <= value < math.inf, flag, ">= 0 and finite (0: off)", value)
        require(
            self.jacobian_reg_probes >= 1, "--jacobian-reg-probes", ">= 1", self.jacobian_reg_probes
        )
        require(
            self.jacobian_reg_side in SIDES,
            "--jacobian-reg-side",
            f"one of {', '.join(SIDES)}",
            self.jacobian_reg_side,
        )
        require(
            0 < self.open_space_ratio < math.inf,
            "--open-space-ratio",
            "> 0 and finite",
            self.open_space_ratio,
        )

    @property
    def enabled(self) -> bool:
        """Whether either term is on (the step then estimates Jacobian norms)."""
        return self.jacobian_reg > 0 or self.open_space_reg > 0


@dataclass(frozen=True)
class TrainConfig:
    """A training run (paper defaults: SGD momentum 0.9, cosine LR 0.1 -> 1e-5, weight decay
    1e-3, batch 128, 20k steps; weak augmentation and the rotation task with lambda_self 0.1 on
    image data sets).

    Attributes:
      steps: number of optimisation steps.
      batch_size: images per step, drawn without replacement within an epoch.
      lr: initial learning rate of the cosine schedule.
      lr_min: final learning rate of the cosine schedule.
      momentum: SGD momentum.
      weight_decay: L2 weight decay added to the gradient (PyTorch-style coupled decay); 0
        turns it off (the ablation's "W").
      augment: on-device augmentation of the training batches (``jacosr.data.AUGMENTATIONS``:
        none, weak, translate, strong), or ``auto``: the paper's weak augmentation for the
        images (``weak``: 4 px translation and horizontal flip; ``translate``, without the
        flip, on handwritten digits and data sets prepared with ``--no-flip``), ``none`` on
        digits and toy2d (too small for a 4 px shift). The ablation's "A".
      self_sup: lambda_self, the weight of the self-supervised rotation loss; 0 turns the
        rotation task off. None (auto): the paper's 0.1 on image data sets, 0 on digits and
        toy2d. The ablation's "S".
      seed: seed of initialisation, batch order and dropout.
      log_every: steps per metrics.jsonl line (each line holds the means over its steps; the
        last line may cover fewer).
      dispatch_steps: at most this many steps run in one device dispatch (one compiled loop);
        a dispatch also ends at each checkpoint and at the last step. Larger amortises the
        host's work per dispatch; it changes no line of the log.
      checkpoint_every: steps between checkpoints (a multiple of log_every, so that a resumed
        run starts on a log line).
      keep_checkpoints: how many recent checkpoints to keep (at least 1: the run resumes and
        is evaluated from its last checkpoint).
      track: measurements of the model during training, one line of dynamics.jsonl per
        tracked step (off by default; see :mod:`jacosr.tracking`). Part of the run's
        identity: the rows a resumed run must reproduce depend on it.
      jacobian: the Jacobian training terms (:class:`JacobianTerms`; off by default, and then
        left out of config.json).

    Refused when built (``ValueError`` naming the flag, before any workdir exists): fewer than
    1 step, image per batch, step per log line or dispatch, or checkpoint kept;
    checkpoint_every not a positive multiple of log_every; lr not a positive finite number;
    lr_min outside [0, lr]; momentum outside [0, 1); a negative or infinite weight_decay or
    self_sup; an unknown augmentation; a tracked step beyond steps, or more tracking points
    than steps + 1.

    ``augment="auto"`` and ``self_sup=None`` are decided for the data set by :func:`resolve`.
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    steps: int = 20_000
    batch_size: int = 128
    lr: float = 0.1
    lr_min: float = 1e-5
    momentum: float = 0.9
    weight_decay: float = PAPER_WEIGHT_DECAY
    augment: str = "auto"
    self_sup: float | None = None
    seed: int = 0
    log_every: int = 100
    dispatch_steps: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    track: TrackConfig = field(default_factory=TrackConfig)
    jacobian: JacobianTerms = field(default_factory=JacobianTerms, metadata={OPTIONAL: True})

    def __post_init__(self):
        for flag, value in (
            ("--steps", self.steps),
            ("--batch-size", self.batch_size),
            ("--log-every", self.log_every),
            ("--dispatch-steps", self.dispatch_steps),
            ("--keep-checkpoints", self.keep_checkpoints),
        ):
            require(value >= 1, flag, ">= 1", value)
        require(
            self.checkpoint_every >= 1 and self.checkpoint_every % self.log_every == 0,
            "--checkpoint-every",
            f"a positive multiple of --log-every ({self.log_every})",
            self.checkpoint_every,
        )
        require(
            0 < self.lr < math.inf, "--lr", "> 0 and finite (the initial learning rate)", self.lr
        )
        require(
            0 <= self.lr_min <= self.lr,
            "--lr-min",
            f"between 0 and --lr ({self.lr}) (the final learning rate)",
            self.lr_min,
        )
        require(0 <= self.momentum < 1, "--momentum", "in [0, 1)", self.momentum)
        require(
            0 <= self.weight_decay < math.inf,
            "--weight-decay",
            ">= 0 and finite (0: off)",
            self.weight_decay,
        )
        require(
            self.self_sup is None or 0 <= self.self_sup < math.inf,
            "--self-sup",
            ">= 0 and finite (0 turns the rotation task off)",
            self.self_sup,
        )
        if self.augment != "auto":
            get_augmentation(self.augment)
        require(
            all(s <= self.steps for s in self.track.track_steps),
            "--track-steps",
            f"steps between 0 and --steps ({self.steps})",
            self.track.track_steps,
        )
        require(
            self.track.track_points <= self.steps + 1,
            "--track-points",
            f"at most --steps + 1 ({self.steps + 1}) distinct steps",
            self.track.track_points,
        )


@dataclass(frozen=True)
class ResolvedTrainConfig(TrainConfig):
    """A :class:`TrainConfig` whose techniques are decided: ``augment`` names an augmentation
    (never ``auto``) and ``self_sup`` is a number (never None); a ``data.benchmark`` is
    resolved into its data set, classes and image size.

    Made by :func:`resolve` (or read back from a workdir's ``config.json``, which holds it).
    ``dataclasses.replace`` of a resolved config is resolved too: what is replaced is given
    explicitly (:func:`switch_techniques`).
    """

    augment: str = field(kw_only=True)
    self_sup: float = field(kw_only=True)

    def __post_init__(self):
        super().__post_init__()
        if self.augment == "auto" or self.self_sup is None:
            raise ValueError(
                f"a ResolvedTrainConfig has a concrete augment and self_sup, got "
                f"augment={self.augment!r}, self_sup={self.self_sup!r}; make it with "
                "jacosr.recipe.resolve(config), which decides them for the data set"
            )


def resolve(config: TrainConfig) -> ResolvedTrainConfig:
    """``config`` with the techniques decided for its data set: ``augment="auto"`` and
    ``self_sup=None`` become the paper's (:func:`paper_techniques`) on image data sets and
    off on digits and toy2d; values set by hand stay. A ``benchmark`` is resolved into the
    data set, classes and image size it sets (:func:`jacosr.data.splits.resolve_benchmark`),
    so that config.json records them. A resolved config is returned as it is."""
    if isinstance(config, ResolvedTrainConfig):
        return config
    data = resolve_benchmark(config.data)
    on = data.dataset not in TECHNIQUES_OFF_BY_DEFAULT
    paper = paper_techniques(data)
    augment = (paper.augment if on else "none") if config.augment == "auto" else config.augment
    self_sup = (paper.self_sup if on else 0.0) if config.self_sup is None else config.self_sup
    given = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    decided = {"data": data, "augment": augment, "self_sup": float(self_sup)}
    return ResolvedTrainConfig(**{**given, **decided})


def switch_techniques(
    base: ResolvedTrainConfig,
    *,
    weight_decay: bool | None = None,
    augment: bool | None = None,
    rotation: bool | None = None,
) -> ResolvedTrainConfig:
    """``base`` with the paper's techniques that are given switched on (True) or off (False),
    the others as they are.

    On is ``base``'s own value where ``base`` has the technique on (so ``--augment strong``,
    ``--weight-decay 5e-4`` or ``--self-sup 0.5`` choose what "on" means), else the paper's
    for ``base``'s data (:func:`paper_techniques`); off is 0 or ``none``. The one rule of
    the ablation, the dynamics figures and the sensitivity sweeps."""
    paper = paper_techniques(base.data)
    changes: dict = {}
    if weight_decay is not None:
        on = base.weight_decay or paper.weight_decay
        changes["weight_decay"] = on if weight_decay else 0.0
    if augment is not None:
        on = base.augment if base.augment != "none" else paper.augment
        changes["augment"] = on if augment else "none"
    if rotation is not None:
        on = base.self_sup or paper.self_sup
        changes["self_sup"] = on if rotation else 0.0
    return dataclasses.replace(base, **changes)


def run_name(config: ResolvedTrainConfig) -> str:
    """A run's name from what it trains: the loss, then ``+W`` (weight decay), ``+A`` (the
    paper's augmentation for its data; ``+A-<name>`` another one) and ``+S`` (the rotation
    task) when on, e.g. ``movr+W`` or ``sce+W+A``."""
    parts = [config.loss.loss]
    if config.weight_decay > 0:
        parts.append("W")
    if config.augment != "none":
        paper = paper_techniques(config.data).augment
        parts.append("A" if config.augment == paper else f"A-{config.augment}")
    if config.self_sup > 0:
        parts.append("S")
    return "+".join(parts)


# Table III: the ablation of the method's components


class Switches(NamedTuple):
    """Which of Table III's components are on: the loss family (OvR, N: normalised
    embeddings and prototypes, m: the margin) and the techniques (W, A, S)."""

    ovr: bool = False
    n: bool = False
    m: bool = False
    w: bool = False
    a: bool = False
    s: bool = False


SWITCH_LABELS = ("OvR", "N", "m", "W", "A", "S")


class Row(NamedTuple):
    """A row of Table III: its label, its block (the table's first column) and switches."""

    label: str
    block: str
    switches: Switches

    @property
    def description(self) -> str:
        """``"a: N+W+A+S"``: the label and the switches that are on (``SCE`` when none is)."""
        on = [name for name, value in zip(SWITCH_LABELS, self.switches, strict=True) if value]
        return f"{self.label}: {'+'.join(on) or 'SCE'}"


_ON = Switches(*[True] * 6)
ROWS = (
    Row("Baseline", "", Switches()),
    Row("m-OvR", "", Switches(ovr=True, n=True, m=True)),
    Row("a", "one out", Switches(n=True, w=True, a=True, s=True)),
    Row("b", "one out", Switches(ovr=True, w=True, a=True, s=True)),
    Row("c", "one out", _ON._replace(w=False)),
    Row("d", "one out", _ON._replace(a=False)),
    Row("e", "w/o A+S", Switches(w=True)),
    Row("f", "w/o A+S", Switches(n=True, w=True)),
    Row("g", "w/o A+S", Switches(ovr=True, n=True, m=True, w=True)),
    Row("h", "w/o S", Switches(w=True, a=True)),
    Row("i", "w/o S", Switches(n=True, w=True, a=True)),
    Row("j", "w/o S", Switches(ovr=True, n=True, m=True, w=True, a=True)),
    Row("k", "on m", _ON._replace(m=False)),
    Row("Ours", "", _ON),
)
"""Table III's rows in the paper's order. Rows a and b are garbled in our copy of the paper;
we read them as "without OvR" (N-SCE with W, A, S) and "without N" (OvR with W, A, S, and no
m, which needs unit vectors): the one-out block removes each component once."""

_LOSS_FAMILY = {
    (False, False): "sce",
    (True, False): "doc",
    (False, True): "nsce",
    (True, True): "movr",
}


def ablation_config(switches: Switches, base: ResolvedTrainConfig) -> ResolvedTrainConfig:
    """The run of one row of Table III: ``base`` with its loss and techniques set by
    ``switches``.

    The loss's scale and margins (when m is on) come from ``base.loss``; W, A and S are
    switched by :func:`switch_techniques` (the paper's values for ``base``'s data where
    ``base`` has them off)."""
    if switches.m and not (switches.ovr and switches.n):
        raise ValueError(f"the margin m is defined for normalised OvR only; got {switches}")
    loss = dataclasses.replace(
        base.loss,
        loss=_LOSS_FAMILY[(switches.ovr, switches.n)],
        margin_pos=base.loss.margin_pos if switches.m else 0.0,
        margin_neg=base.loss.margin_neg if switches.m else 0.0,
    )
    switched = switch_techniques(
        base, weight_decay=switches.w, augment=switches.a, rotation=switches.s
    )
    return dataclasses.replace(switched, loss=loss)
