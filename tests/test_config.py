"""Configs and the command-line boundary: the XLA flags of the entry points, every refused
config value and its message, the JSON round trip, and ``run_command``'s one-line errors."""

import errno
import logging
import math
import os
import sys
import threading
import warnings

import pytest

from jacosr.config import (
    DEBUG_ENV,
    DEBUG_NOTE,
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    MAKE_ROOM,
    XLA_CPU_FLAGS,
    cli,
    configure_xla,
    from_dict,
    run_command,
    to_dict,
)
from jacosr.data import DataConfig, DataNotPreparedError
from jacosr.evaluate import EvalConfig
from jacosr.losses import LossConfig
from jacosr.models import ModelConfig
from jacosr.recipe import JacobianTerms
from jacosr.scores import ScoreConfig

# --- the XLA flags ------------------------------------------------------------------------


def test_configure_xla_adds_the_flags_to_the_users_own(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/dump")
    configure_xla()
    configure_xla()  # idempotent

    assert os.environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/dump", *XLA_CPU_FLAGS]


def test_configure_xla_keeps_a_users_value_of_the_same_flag(monkeypatch):
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    monkeypatch.setenv("XLA_FLAGS", mine)
    configure_xla()

    assert os.environ["XLA_FLAGS"].split() == [mine, *XLA_CPU_FLAGS[1:]]


def test_configure_xla_without_any_flags_set(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    configure_xla()

    assert os.environ["XLA_FLAGS"].split() == list(XLA_CPU_FLAGS)


# --- refused config values: (config, fields, the exact message) ---------------------------

MARGIN = "an angle in [0, pi) radians (0: no margin)"
SCALE = "> 0 (T, the inverse temperature of the cosine logits)"
TEMPERATURE = "> 0 (tau, the temperature of GCPL's and RPL's distance logits)"
WEIGHT_PL = ">= 0 (lambda of GCPL's prototype and RPL's radius term; 0: off)"
BACKBONES = "lenet, mlp, resnet18, vgg32, wrn16_4"
FIXED = "256 with --backbone wrn16_4 (its representation is its pooled last feature map)"
SCORE_NAMES = (
    "energy, jacobian, jacobian_stochastic, loss, loss_no_margin, max_cosine, max_logit, msp, "
    "openmax"
)
REJECT = "a fraction in [0, 1) (of known-val rejected by the macro-F1 threshold)"
TAIL = ">= 2 (the Weibull fit needs two distances per class)"
SOURCES = (
    "cifar10, cifar100, digits, imagenet_crop, imagenet_resize, imagenet_resized/32x32, "
    "lsun_crop, lsun_resize, mnist, svhn_cropped, tinyimagenet, toy2d, or the name of a data "
    "set prepared from your own files (letters, digits, '.', '_', '+' and '-'; python -m "
    "jacosr.data.prepare NAME --from PATH)"
)
KNOWN = "at least 2 distinct class indices >= 0 (open-set recognition needs two known classes)"
UNKNOWN = "unset (every class that is not known) or distinct class indices >= 0"
VAL = "a fraction in [0, 1) (0: no known-val, and no macro-F1)"
BENCHMARKS = "mnist, svhn, cifar10, cifar+10, cifar+50, tinyimagenet"
REFUSED = [
    (JacobianTerms, {"jacobian_reg": -1.0}, "--jacobian-reg must be >= 0 and finite (0: off)"),
    (
        JacobianTerms,
        {"open_space_reg": float("inf")},
        "--open-space-reg must be >= 0 and finite (0: off)",
    ),
    (JacobianTerms, {"jacobian_reg_probes": 0}, "--jacobian-reg-probes must be >= 1"),
    (
        JacobianTerms,
        {"jacobian_reg_side": "sideways"},
        "--jacobian-reg-side must be one of output, input",
    ),
    (JacobianTerms, {"open_space_ratio": 0.0}, "--open-space-ratio must be > 0 and finite"),
    (LossConfig, {"loss": "arcface"}, "--loss must be one of doc, gcpl, movr, nsce, rpl, sce"),
    (LossConfig, {"margin_pos": -0.1}, f"--margin-pos must be {MARGIN}"),
    (LossConfig, {"margin_pos": math.pi}, f"--margin-pos must be {MARGIN}"),
    (LossConfig, {"margin_neg": 4.0}, f"--margin-neg must be {MARGIN}"),
    (LossConfig, {"margin_neg": math.nan}, f"--margin-neg must be {MARGIN}"),
    (LossConfig, {"scale": 0.0}, f"--scale must be {SCALE}"),
    (LossConfig, {"scale": math.inf}, f"--scale must be {SCALE}"),
    (LossConfig, {"temperature": 0.0}, f"--temperature must be {TEMPERATURE}"),
    (LossConfig, {"weight_pl": -0.1}, f"--weight-pl must be {WEIGHT_PL}"),
    (ModelConfig, {"backbone": "vit"}, f"--backbone must be one of {BACKBONES}"),
    (ModelConfig, {"width": 0}, "--width must be >= 1"),
    (ModelConfig, {"embed_dim": 0}, "--embed-dim must be >= 1"),
    (ModelConfig, {"backbone": "wrn16_4"}, f"--embed-dim must be {FIXED}", 128),
    (EvalConfig, {"scores": ()}, f"--scores must be at least one of {SCORE_NAMES}"),
    (
        EvalConfig,
        {"scores": ("loss", "odin")},
        f"--scores must be names out of {SCORE_NAMES}",
        "odin",
    ),
    (EvalConfig, {"reject_rate": 1.0}, f"--reject-rate must be {REJECT}"),
    (EvalConfig, {"reject_rate": -0.1}, f"--reject-rate must be {REJECT}"),
    (
        ScoreConfig,
        {"jacobian_estimator": "girard"},
        "--jacobian-estimator must be one of hutchinson, xnystrace",
    ),
    (
        ScoreConfig,
        {"jacobian_probes": 0},
        "--jacobian-probes must be >= 1 with --jacobian-estimator hutchinson",
    ),
    (
        ScoreConfig,
        {"jacobian_estimator": "xnystrace", "jacobian_probes": 1},
        "--jacobian-probes must be >= 2 with --jacobian-estimator xnystrace",
    ),
    (ScoreConfig, {"openmax_tail": 1}, f"--openmax-tail must be {TAIL}"),
    (ScoreConfig, {"openmax_alpha": 0}, "--openmax-alpha must be >= 1"),
    (DataConfig, {"dataset": "../cifar11"}, f"--dataset must be one of {SOURCES}"),
    (
        DataConfig,
        {"unknown_dataset": "svhn cropped"},
        f"--unknown-dataset must be unset or one of {SOURCES}",
    ),
    (DataConfig, {"known": ()}, f"--known must be {KNOWN}"),
    (DataConfig, {"known": (3,)}, f"--known must be {KNOWN}"),
    (DataConfig, {"known": (1, 1, 2)}, f"--known must be {KNOWN}"),
    (DataConfig, {"known": (-1, 2)}, f"--known must be {KNOWN}"),
    (DataConfig, {"unknown": ()}, f"--unknown must be {UNKNOWN}"),
    (DataConfig, {"split_seed": -1}, "--split-seed must be >= 0"),
    (DataConfig, {"val_fraction": -0.1}, f"--val-fraction must be {VAL}"),
    (DataConfig, {"val_fraction": 1.0}, f"--val-fraction must be {VAL}"),
    (DataConfig, {"benchmark": "cifar100"}, f"--benchmark must be unset or one of {BENCHMARKS}"),
    (DataConfig, {"protocol_split": 5}, "--protocol-split must be one of the standard splits 0..4"),
    (DataConfig, {"image_size": 0}, "--image-size must be unset (the native size) or >= 1"),
]
"""(config, its fields, the message before "; got <value>"[, the value when it is not the
last field's])."""


@pytest.mark.parametrize(
    "case", REFUSED, ids=[f"{c[0].__name__}-{'-'.join(map(str, c[1].values()))}" for c in REFUSED]
)
def test_refused_config_values_name_the_flag_and_the_valid_range(case):
    cls, fields, expected, *value = case
    value = value[0] if value else list(fields.values())[-1]
    with pytest.raises(ValueError) as err:
        cls(**fields)
    assert str(err.value) == f"{expected}; got {value!r}"


@pytest.mark.parametrize(
    "config",
    [
        LossConfig(loss="rpl", margin_pos=0.0, margin_neg=3.0, temperature=0.5, weight_pl=0.0),
        ModelConfig(backbone="resnet18", embed_dim=512),
        EvalConfig(scores=("jacobian_stochastic",), reject_rate=0.0, score=ScoreConfig(
            jacobian_estimator="xnystrace", jacobian_probes=2, openmax_tail=2, openmax_alpha=1
        )),
        DataConfig(benchmark="cifar+50", protocol_split=4, image_size=1, val_fraction=0.5),
        DataConfig(known=(3, 0), unknown=(9,), unknown_dataset="lsun_crop"),
    ],
)  # fmt: skip
def test_valid_edge_values_round_trip_through_config_json(config):
    assert from_dict(type(config), to_dict(config)) == config


def test_config_json_with_a_refused_value_fails_with_the_flag():
    stored = {**to_dict(LossConfig()), "margin_pos": -0.5}
    with pytest.raises(ValueError, match=r"^--margin-pos must be an angle in \[0, pi\)"):
        from_dict(LossConfig, stored)


def test_cli_reports_a_refused_value_as_a_short_parse_error(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(LossConfig, args=["--scale", "-1"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--scale must be > 0" in err and "Traceback" not in err
    assert len(err.splitlines()) < 10


def test_cli_help_carries_the_debug_note_and_a_runnable_usage(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(LossConfig, args=["--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # undo the help's line wrapping
    assert out.startswith("usage: python -m jacosr.losses ")
    assert "Which loss, and its hyper-parameters (paper defaults)." in out
    assert " ".join(DEBUG_NOTE.split()) in out


# --- run_command: the command-line boundary -----------------------------------------------


class NonFinite(FloatingPointError):
    """Stands in for jacosr.train.NonFiniteLossError (a FloatingPointError)."""


USER_ERRORS = [
    ValueError("--lr must be > 0; got -1"),
    FileNotFoundError(errno.ENOENT, "No such file or directory", "runs/x/config.json"),
    PermissionError(errno.EACCES, "Permission denied", "/data"),
    DataNotPreparedError("cifar10 is not prepared; run `python -m jacosr.data.prepare cifar10`"),
    NonFinite("training diverged at step 7"),
    ModuleNotFoundError("building 'cifar10' needs TensorFlow; pip install 'jacosr[data]'"),
]


def _main_raising(error, seen=None):
    def main(argv):
        if seen is not None:
            seen.append(argv)
        raise error

    return main


@pytest.mark.parametrize("error", USER_ERRORS, ids=lambda e: type(e).__name__)
def test_user_errors_are_one_line_and_status_2(error, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_command(_main_raising(error), ["--steps", "3"])
    assert exit_.value.code == EXIT_ERROR == 2
    captured = capsys.readouterr()
    assert captured.err == f"error: {error}\n"
    assert captured.out == ""


@pytest.mark.parametrize(
    "error, line",
    [
        (
            OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl"),
            "could not write runs/x/metrics.jsonl: No space left on device",
        ),
        (OSError(errno.EFBIG, "File too large"), "File too large"),
        (OSError(errno.EDQUOT, "Disk quota exceeded", "r.json"), "could not write r.json: Disk"),
    ],
)
def test_no_room_names_the_file_and_says_to_make_room_and_resume(error, line, capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_command(_main_raising(error), [])
    assert exit_.value.code == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"error: {line}") and err.endswith(f"; {MAKE_ROOM}\n")
    assert MAKE_ROOM.startswith("make room (free disk space, or raise the file-size limit)")


class _RaisesWhenCollected:
    def __del__(self):
        raise RuntimeError("Event loop is closed")  # Python ignores it: sys.unraisablehook


class _OrbaxThread(threading.Thread):
    """Stands in for Orbax's save threads (orbax.checkpoint's _SignalingThread)."""


_OrbaxThread.__module__ = "orbax.checkpoint.stand_in"


def _orbax_thread_reporting(threads: list) -> object:
    """A command's ``main`` that starts a thread which, once the command has failed, reports
    as Orbax's save threads do (an absl log record from Orbax's code, asyncio's error log, an
    exception Python ignores), then fails on a full disk."""

    def report(failed: threading.Event) -> None:
        failed.wait()
        orbax = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "future.py")
        record = dict(name="absl", levelno=logging.ERROR, levelname="ERROR", pathname=orbax)
        logging.getLogger("absl").handle(logging.makeLogRecord({**record, "msg": "thread died"}))
        logging.getLogger("asyncio").error("Task exception was never retrieved")
        _RaisesWhenCollected()

    def main(argv):
        failed = threading.Event()
        threads.append(_OrbaxThread(target=report, args=(failed,)))
        threads[-1].start()
        failed.set()  # the thread reports while the error goes up, or after it
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/metrics.jsonl")

    return main


@pytest.mark.parametrize("debug", [False, True])
def test_what_orbax_threads_report_is_dropped_unless_debug(debug, caplog, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    ignored, threads = [], []
    monkeypatch.setattr(sys, "unraisablehook", ignored.append)
    with pytest.raises(SystemExit if not debug else OSError):
        run_command(_orbax_thread_reporting(threads), ["--debug"] if debug else [])
    threads[0].join()  # run_command waits for it unless --debug
    reported = [(r.name, r.getMessage()) for r in caplog.records]
    if debug:
        assert reported == [
            ("absl", "thread died"),
            ("asyncio", "Task exception was never retrieved"),
        ]
        assert len(ignored) == 1
    else:
        assert reported == [] and ignored == []
    assert logging.getLogger("absl").filters == logging.getLogger("asyncio").filters == []
    assert sys.unraisablehook == ignored.append


def test_interrupt_says_how_to_resume_with_status_130(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit) as exit_:
        run_command(_main_raising(KeyboardInterrupt()), [])
    assert exit_.value.code == EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "error: interrupted; re-run the same command to resume\n"


def test_a_multi_line_message_becomes_one_line(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(SystemExit):
        run_command(_main_raising(ValueError("first line\n  second line\n")), [])
    assert capsys.readouterr().err == "error: first line second line\n"


@pytest.mark.parametrize("error", [ValueError("bad value"), KeyboardInterrupt()])
def test_debug_flag_keeps_the_exception_and_is_not_passed_on(error, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    seen = []
    with pytest.raises(type(error)) as raised:
        run_command(_main_raising(error, seen), ["--lr", "1", "--debug", "--steps", "2"])
    assert raised.value is error
    assert seen == [["--lr", "1", "--steps", "2"]]


@pytest.mark.parametrize(
    ("value", "debug"), [("1", True), ("yes", True), ("0", False), ("", False)]
)
def test_debug_environment_variable(value, debug, monkeypatch):
    monkeypatch.setenv(DEBUG_ENV, value)
    expected = ValueError if debug else SystemExit
    with pytest.raises(expected):
        run_command(_main_raising(ValueError("bad value")), [])


def test_a_bug_keeps_its_traceback(monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)
    with pytest.raises(KeyError):
        run_command(_main_raising(KeyError("a bug, not a user error")), [])


def test_success_returns_and_reads_sys_argv_by_default(monkeypatch):
    monkeypatch.setattr("sys.argv", ["prog", "--debug", "--x", "1"])
    seen = []
    run_command(seen.append)
    assert seen == [["--x", "1"]]


def test_a_warning_is_one_line_unless_debug(capsys, monkeypatch):
    monkeypatch.delenv(DEBUG_ENV, raising=False)

    def main(argv):
        warnings.warn("checkpoint 9 is damaged\n(its data do not match)", UserWarning, stacklevel=1)

    with warnings.catch_warnings():
        warnings.simplefilter("always")
        run_command(main, [])
        assert capsys.readouterr().err == (
            "warning: checkpoint 9 is damaged (its data do not match)\n"
        )
        with pytest.warns(UserWarning, match="damaged"):
            run_command(main, ["--debug"])
