"""What the tests share: the tiny grid the experiment tests train, how a refused setting is
checked, and which convolutions XLA's CPU backend runs at speed."""

from pathlib import Path

import jax
import pytest

TINY_GRID = ["--steps", "40", "--log-every", "20", "--checkpoint-every", "40"]
TINY_GRID += ["--width", "32", "--embed-dim", "16", "--seeds", "2"]
"""The digits MLP at width 32 with a 16-d embedding, 40 steps (a log line every 20, one
checkpoint at the end), 2 seeds."""


def refused(main, argv: list[str], workdir: Path, capsys) -> str:
    """Run an experiment's ``main`` with ``argv`` and ``--workdir workdir``; check that the
    command line is refused (exit status 2) before ``workdir`` exists, and return the parser's
    message, unwrapped and unboxed."""
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--workdir", str(workdir)])
    assert exit_.value.code == 2
    assert not workdir.exists()
    return " ".join(capsys.readouterr().err.replace("│", " ").split())


CANONICAL = "dim_numbers = [b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]"


def canonical(line: str) -> bool:
    """Whether a StableHLO convolution is in XLA's canonical form (NHWC input, HWIO kernel, no
    input dilated by zeros), the one its CPU backend runs at speed inside loops too."""
    return CANONICAL in line and "lhs_dilate = [1, 1]" in line


def convolutions(fn, *args) -> list[str]:
    """The convolutions of ``fn``'s StableHLO, one line each."""
    text = jax.jit(fn).lower(*args).as_text()
    return [line for line in text.splitlines() if "stablehlo.convolution" in line]
