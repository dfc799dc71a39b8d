"""Shared fixtures. Global jax configuration belongs here and in entry points only."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

from jacosr.config import configure_xla

configure_xla()  # XLA_FLAGS is read once, when jax starts its backend
