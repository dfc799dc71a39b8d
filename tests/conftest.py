"""Shared fixtures. Global jax configuration belongs here and in entry points only.

Compilation dominates the suite's time, so the test run shares one persistent XLA compilation
cache (a temporary folder, removed at the end): every process of the run (pytest-xdist's
workers and the ``python -m jacosr...`` subprocesses the tests start) compiles each distinct
program once. The cache is keyed by the program, the jax/XLA versions and flags, so it changes
no result; a ``JAX_COMPILATION_CACHE_DIR`` set by the user is used as it is and kept.

The tests' programs are tiny, so compiling them costs more than running them, and XLA's CPU
backend compiles them the cheap way with the flags below (README, "Two commands", has the
times; the few tests that compute much, the shared 2000-step digits run and VGG32's full
Jacobians, run slower this way, the suite as a whole faster), unless ``XLA_FLAGS`` already sets
them or this jaxlib's XLA does not know one:

- ``--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true``: no LLVM
  optimisation of the machine code;
- ``--xla_cpu_use_fusion_emitters=false``: fused loops emitted by XLA's LLVM IR emitters, not
  its MLIR fusion emitters, whose per-program set-up dominates a tiny program's compilation.
  XLA then fuses for those emitters, so values may differ from a default build in the last
  bits, as between compiler versions.

Every process of the run shares the flags (the subprocesses inherit ``XLA_FLAGS``), so
results compared across processes are computed alike; every test passes with and without
them.

The objects the test modules and their imports leave are frozen once collection has finished
(``gc.freeze``): they live to the end anyway, and each full collection (Python's own, and the
one a failed command makes, :func:`jacosr.config.run_command`) then skips them instead of
walking the whole heap of jax, flax and the tests.
"""

import fcntl
import gc
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    # Set before pytest-xdist starts its workers, which inherit it (and so share the cache).
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="jacosr-test-xla-cache-")
    os.environ["JACOSR_TEST_OWNS_CACHE"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0",
    "--xla_llvm_disable_expensive_passes=true",
    "--xla_cpu_use_fusion_emitters=false",
)


def _xla_accepts(flags: list[str]) -> bool:
    """Whether this jaxlib's XLA takes ``flags``: XLA ends the process on a flag it does not know,
    and its flags come and go with its versions (the fusion-emitter flag goes with the older
    emitters). A fresh process that only parses them answers."""
    parse = "import jaxlib.xla_client as xc; xc.CompileOptions()"
    env = {**os.environ, "XLA_FLAGS": " ".join(flags)}
    done = subprocess.run([sys.executable, "-c", parse], env=env, capture_output=True)
    return done.returncode == 0


if not os.environ.get("PYTEST_XDIST_WORKER"):  # the workers inherit what their controller set
    wanted = [f for f in TEST_XLA_FLAGS if f.split("=")[0] not in os.environ.get("XLA_FLAGS", "")]
    if wanted and not _xla_accepts(wanted):
        wanted = [f for f in wanted if _xla_accepts([f])]
    os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *wanted]).strip()

from jacosr.config import configure_xla  # noqa: E402 (after the environment is set)

configure_xla()  # XLA_FLAGS is read once, when jax starts its backend

# Property tests draw the same examples on every run: a failure is reproducible, never a
# matter of which run drew it.
settings.register_profile("jacosr", derandomize=True, deadline=None)
settings.load_profile("jacosr")


def pytest_collection_finish(session):
    """Freeze what collection left (in each xdist worker, which collects for itself)."""
    gc.collect()
    gc.freeze()


def pytest_sessionfinish(session):
    """Remove the run's compilation cache (in the process that made it: the controller)."""
    owned = os.environ.get("JACOSR_TEST_OWNS_CACHE")
    if owned and not hasattr(session.config, "workerinput"):
        shutil.rmtree(owned, ignore_errors=True)


def _run_root(tmp_path_factory) -> Path:
    """A folder of this test run shared by its xdist workers (their basetemps' parent), or the
    basetemp itself without xdist (its parent would be shared with earlier runs)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory):
    """The README's first training run (digits, known 0..5, m-OvR, the default MLP, 2000
    steps), trained once per test run and shared by every test and xdist worker that asks:
    ``(workdir, results)``. The first worker to get the lock trains; the others find the run
    finished, so ``run`` only reads its checkpoint back and evaluates it. Read-only for tests:
    copy it (``shutil.copytree``) before changing anything in it."""
    from jacosr.recipe import TrainConfig
    from jacosr.train import run

    root = _run_root(tmp_path_factory)
    workdir = root / "digits-movr-2000"
    with open(root / "digits-movr-2000.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks until the worker that trains has finished
        results = run(TrainConfig(steps=2000), workdir, progress=False)
    return workdir, results
