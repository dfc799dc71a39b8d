"""What the experiment tests share: the tiny grid they train, and how a refused setting is
checked."""

from pathlib import Path

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
