"""Shared fixtures. Global jax configuration belongs here and in entry points only."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
