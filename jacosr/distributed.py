"""Several devices and several processes: jax's own mesh (``jax.sharding``) and
``jax.distributed``, nothing home-made.

What runs where:

- **One device** (the default on a CPU or a one-GPU machine): nothing here is used; the
  training dispatch and the Jacobian engine compile exactly the programs they always did.
- **Several devices, one process** (one host with several GPUs; tests: ``XLA_FLAGS=
  --xla_force_host_platform_device_count=4``): :func:`data_mesh` is a 1-D mesh, axis
  ``"data"``, over every device in scope (:func:`devices`). Training is data parallel: the
  state and the training set are replicated on every device, each step's global batch indices
  are drawn from (seed, step) as on one device and constrained to be sharded along ``"data"``,
  so each device gathers, augments and differentiates only its shard; GSPMD inserts the
  gradient all-reduce, and BatchNorm's batch means are over the global batch (GSPMD all-reduces
  them too), so a step on N devices is the step on one, up to float reassociation. The Jacobian
  engine shards the samples of each chunk along ``"data"``.
- **Several processes** (hosts, or one process per GPU): :func:`initialize` starts
  ``jax.distributed`` from a :class:`DistributedConfig` (``--coordinator-address``,
  ``--num-processes``, ``--process-id``, or ``--distributed auto``: jax's cluster detection,
  e.g. SLURM, Open MPI, Kubernetes/TPU pods). Then :func:`devices` holds every process's
  devices and the mesh spans them all; every process runs the same program on the same global
  batch indices and feeds its own devices their shards (the training set is replicated on
  every device: each process loads it, which is cheap at the paper's scale, CIFAR's 50,000
  32x32x3 bytes being 150 MB). Only :func:`is_writer` (process 0) writes: the workdir's
  marker, lock and ``config.json``, ``metrics.jsonl``, ``results.json``, figures, progress
  bars; every process takes part in each Orbax save and restore (collective).

Grids of independent runs (:func:`jacosr.experiments.grid.run_grid`) have a second option,
``--spread-runs``: one run per local device, side by side in threads (:func:`on_device` puts
each run's programs on its own device). Use it for many small runs on a machine with several
GPUs (the tables' MLP/LeNet/VGG32 runs keep one GPU busy each); use data parallelism (the
default) for one big run, or when a run's batch does not fit one device.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jacosr.config import require

AXIS = "data"
"""The mesh's one axis: the batch (training) or the samples (Jacobian norms) are split along
it."""


@dataclass(frozen=True)
class DistributedConfig:
    """Several processes (hosts, or one process per GPU): ``jax.distributed``. Not part of a
    run's identity: a run resumes on any number of processes and devices.

    Attributes:
      distributed: ``off`` (one process; the default), ``on`` (start ``jax.distributed`` from
        the three flags below, each of which may be left out where jax detects it) or
        ``auto`` (let jax detect the cluster: SLURM, Open MPI, Kubernetes, TPU pods). Every
        process runs the same command; process 0 alone writes.
      coordinator_address: ``host:port`` of process 0's coordinator (``on``).
      num_processes: how many processes take part (``on``).
      process_id: this process's number, 0 .. num_processes - 1 (``on``).
    """

    distributed: Literal["off", "on", "auto"] = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    def __post_init__(self):
        explicit = (self.coordinator_address, self.num_processes, self.process_id)
        require(
            self.distributed == "on" or all(v is None for v in explicit),
            "--distributed",
            "on when --coordinator-address, --num-processes or --process-id is given",
            self.distributed,
        )
        require(
            self.num_processes is None or self.num_processes >= 1,
            "--num-processes",
            ">= 1",
            self.num_processes,
        )
        require(
            self.process_id is None
            or 0 <= self.process_id < (self.num_processes or self.process_id + 1),
            "--process-id",
            "in 0 .. --num-processes - 1",
            self.process_id,
        )


def initialize(config: DistributedConfig) -> None:
    """Start ``jax.distributed`` as ``config`` says (nothing when ``distributed="off"``).

    Call it before anything touches jax's devices (entry points do, right after parsing).
    CPU collectives across processes go through gloo (jax's CPU default has none; the setting
    does not touch GPU collectives, which are NCCL's)."""
    if config.distributed == "off":
        return
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=config.coordinator_address,
        num_processes=config.num_processes,
        process_id=config.process_id,
    )


def is_writer() -> bool:
    """Whether this process writes files: process 0 (always, with one process)."""
    return jax.process_index() == 0


_SCOPE: contextvars.ContextVar[tuple[Any, ...] | None] = contextvars.ContextVar(
    "jacosr_devices", default=None
)
"""The devices of the run in progress in this thread (None: all of jax's)."""


def devices() -> list:
    """The devices the run in progress uses: every device of every process, or the one of
    the :func:`on_device` block this thread is in."""
    scope = _SCOPE.get()
    return list(scope) if scope is not None else jax.devices()


@contextlib.contextmanager
def on_device(device) -> Iterator[None]:
    """Run what the block trains and differentiates on ``device`` alone (this thread only):
    :func:`devices` is ``[device]`` and jax's default device is ``device``."""
    token = _SCOPE.set((device,))
    try:
        with jax.default_device(device):
            yield
    finally:
        _SCOPE.reset(token)


_SPREAD_RUNS: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "jacosr_spread_runs", default=False
)
"""Whether the grids run in this context train their runs one per local device."""


@contextlib.contextmanager
def spreading_runs(spread: bool = True) -> Iterator[None]:
    """Within the block, :func:`jacosr.experiments.grid.run_grid` trains its runs side by
    side, one per local device (``--spread-runs`` of every experiment command), or not."""
    token = _SPREAD_RUNS.set(spread)
    try:
        yield
    finally:
        _SPREAD_RUNS.reset(token)


def spread_devices() -> list:
    """The devices a grid spreads its runs over: the local ones inside
    :func:`spreading_runs` with one process, else none (one run at a time, each on
    :func:`devices`). With several processes every run takes them all, so nothing is
    spread."""
    if not _SPREAD_RUNS.get() or jax.process_count() > 1:
        return []
    return jax.local_devices()


def data_mesh() -> Mesh | None:
    """The 1-D mesh (axis :data:`AXIS`) over :func:`devices`, or None for one device (the
    plain path: no mesh, no sharding, today's programs)."""
    found = devices()
    return None if len(found) == 1 else Mesh(np.array(found), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (parameters, optimiser state, training set)."""
    return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    """The leading axis split evenly over the mesh (a batch, the samples of a chunk)."""
    return NamedSharding(mesh, PartitionSpec(AXIS))


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (NumPy or single-device arrays, the same values in every process) replicated
    on every device of ``mesh``, all processes' included."""
    sharding = replicated(mesh)

    def one(a):
        # jax places a PRNG key array on other processes' devices only through its data.
        if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            data = jax.device_put(np.asarray(jax.random.key_data(a)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
        return jax.device_put(a, sharding)

    return jax.tree.map(one, tree)


def put_sharded(tree: Any, mesh: Mesh) -> Any:
    """``tree`` (NumPy, each leaf ``[B, ...]`` with B a multiple of the mesh's size, the same
    values in every process) with its leading axis split over ``mesh``; each process places
    only its devices' rows."""
    return jax.device_put(tree, batch_sharded(mesh))


def fetch(tree: Any) -> Any:
    """``tree``'s arrays as NumPy arrays in every process; an array spread over several
    processes is gathered (a collective: every process must call this)."""

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable and not a.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree.map(one, tree)


def to_local(tree: Any) -> Any:
    """``tree``'s arrays, which may be replicated over several devices or processes, as arrays
    on this thread's default device (for the single-device code: evaluation, plots)."""
    if all(
        isinstance(a, jax.Array) and len(a.sharding.device_set) == 1 for a in jax.tree.leaves(tree)
    ):
        return tree
    return jax.device_put(fetch(tree))


def check_batch(batch_size: int, flag: str = "--batch-size") -> None:
    """Refuse a global batch that does not split evenly over :func:`devices`."""
    n = len(devices())
    require(
        batch_size % n == 0,
        flag,
        f"a multiple of the number of devices ({n}), which each take an equal share",
        batch_size,
    )


def agree(ok: bool) -> bool:
    """Whether process 0 says ``ok`` (every process gets its answer; a collective). With one
    process, ``ok``: the others wait on process 0's outcome before going on (e.g. the workdir
    it opens), and stop too, rather than hang, when it fails."""
    if jax.process_count() == 1:
        return ok
    return bool(multihost_utils.broadcast_one_to_all(np.int32(ok)))


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
