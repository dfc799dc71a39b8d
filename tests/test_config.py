"""The entry points' XLA flags: added once, never over a user's own setting."""

import os

from jacosr.config import XLA_CPU_FLAGS, configure_xla


def test_configure_xla_adds_the_flags_to_the_users_own(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/dump")
    configure_xla()
    configure_xla()  # idempotent

    assert os.environ["XLA_FLAGS"].split() == ["--xla_dump_to=/tmp/dump", *XLA_CPU_FLAGS]


def test_configure_xla_keeps_a_users_value_of_the_same_flag(monkeypatch):
    mine = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    monkeypatch.setenv("XLA_FLAGS", mine)
    configure_xla()

    assert os.environ["XLA_FLAGS"] == mine


def test_configure_xla_without_any_flags_set(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    configure_xla()

    assert os.environ["XLA_FLAGS"].split() == list(XLA_CPU_FLAGS)
