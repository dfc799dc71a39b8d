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
  e.g. SLURM, Open MPI, Kubernetes/TPU pods). Each process says on stderr that it waits for
  the others and stops with a one-line error when they have not all joined within
  ``--distributed-timeout`` seconds (jax itself would abort with a C++ stack trace); process 0
  first checks that the coordinator's port is free. Then :func:`devices` holds every process's
  devices and the mesh spans them all; every process runs the same program on the same global
  batch indices and feeds its own devices their shards (the training set is replicated on
  every device: each process loads it, which is cheap at the paper's scale, CIFAR's 50,000
  32x32x3 bytes being 150 MB). Only :func:`is_writer` (process 0) writes: the workdir's
  marker, lock and ``config.json``, ``metrics.jsonl``, ``results.json``, figures, progress
  bars; every process takes part in each Orbax save and restore (collective).

Grids of independent runs (:func:`jacosr.grids.run_grid`) have a second option,
``--spread-runs``: one run per local device, side by side in threads (:func:`on_device` puts
each run's programs on its own device). Use it for many small runs on a machine with several
GPUs (the tables' MLP/LeNet/VGG32 runs keep one GPU busy each); use data parallelism (the
default) for one big run, or when a run's batch does not fit one device.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jacosr.config import EXIT_ERROR, print_error, require

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
      coordinator_address: ``host:port`` of process 0's coordinator (``on``): process 0's
        machine and a free port on it, the same in every process.
      num_processes: how many processes take part (``on``).
      process_id: this process's number, 0 .. num_processes - 1 (``on``).
      distributed_timeout: how many seconds a process waits for all the others to join
        before it stops with an error (``on``, ``auto``).
    """

    distributed: Literal["off", "on", "auto"] = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    distributed_timeout: int = 300

    def __post_init__(self):
        explicit = (self.coordinator_address, self.num_processes, self.process_id)
        require(
            self.distributed == "on" or all(v is None for v in explicit),
            "--distributed",
            "on when --coordinator-address, --num-processes or --process-id is given",
            self.distributed,
        )
        require(
            self.coordinator_address is None or _host_port(self.coordinator_address) is not None,
            "--coordinator-address",
            "host:port, process 0's machine and a port in 1 .. 65535 (e.g. localhost:12345 "
            "or 10.0.0.1:12345)",
            self.coordinator_address,
        )
        require(
            self.distributed_timeout >= 1, "--distributed-timeout", ">= 1", self.distributed_timeout
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


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``"host:port"`` (an IPv6 host in brackets: ``[::1]:12345``), or
    None when ``address`` is not one."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        return None
    return host, int(port)


def _check_port_free(address: str) -> None:
    """Refuse (``OSError``) a coordinator port that another program holds on this machine:
    process 0 binds it on every interface, as jax's coordinator does, whose gRPC server
    crashes the process instead of raising when the port is taken."""
    port = _host_port(address)[1]
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # IPv4 too, as gRPC
        where = ("::", port)
    except OSError:  # no IPv6 here
        probe, where = socket.socket(socket.AF_INET, socket.SOCK_STREAM), ("", port)
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC: TIME_WAIT is free
        try:
            probe.bind(where)
        except OSError as err:
            if err.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                f"port {port} is in use by another program on this machine, so process 0 "
                f"cannot start its coordinator at {address}; choose a free port in "
                "--coordinator-address (the same in every process), or stop that program",
            ) from None


def _others(process_id: int, num_processes: int) -> str:
    """All processes but this one: ``"process 1"``, ``"processes 0 and 2"``, ``"processes 1,
    2 and 3"``, ``"processes 0 .. 7 other than 3"``."""
    others = [i for i in range(num_processes) if i != process_id]
    if len(others) == 1:
        return f"process {others[0]}"
    if len(others) <= 3:
        return f"processes {', '.join(map(str, others[:-1]))} and {others[-1]}"
    if process_id == 0:
        return f"processes 1 .. {num_processes - 1}"
    return f"processes 0 .. {num_processes - 1} other than {process_id}"


def _wait_for_coordinator(address: str, deadline: float, timeout: int) -> None:
    """Wait until process 0's coordinator at ``address`` accepts connections, or raise
    ``TimeoutError`` at ``deadline`` (``time.monotonic()``; ``timeout`` seconds in all)."""
    host, port = _host_port(address)
    while True:
        left = deadline - time.monotonic()
        try:
            socket.create_connection((host, port), timeout=max(left, 0.1)).close()
            return
        except OSError:
            if left <= 0:
                raise TimeoutError(
                    f"process 0 did not start its coordinator at {address} within {timeout} "
                    "s (--distributed-timeout); start process 0 with the same "
                    "--coordinator-address and --num-processes, or raise --distributed-timeout"
                ) from None
            time.sleep(min(0.1, left))


@contextlib.contextmanager
def _stop_after(deadline: float, message: str) -> Iterator[None]:
    """Stop the process with ``error: <message>`` (status 2) if the block is still running
    at ``deadline`` (``time.monotonic()``): ``jax.distributed.initialize`` cannot be
    interrupted, and at its own timeout it aborts the process with a C++ stack trace."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(deadline - time.monotonic()):
            print_error(message)
            os._exit(EXIT_ERROR)

    threading.Thread(target=watch, name="jacosr-distributed-timeout", daemon=True).start()
    try:
        yield
    finally:
        done.set()


JAX_TIMEOUT_MARGIN = 60
"""Seconds jax's own initialization timeout adds to ``--distributed-timeout``, so that
:func:`_stop_after` says what happened before jax aborts."""


def initialize(config: DistributedConfig) -> None:
    """Start ``jax.distributed`` as ``config`` says (nothing when ``distributed="off"``).

    Call it before anything touches jax's devices (entry points do, right after parsing).
    Process 0 first refuses a coordinator port in use (``OSError``); each process prints on
    stderr that it waits for the others, and a process other than 0 waits for process 0's
    coordinator first (``TimeoutError`` when it does not answer). A process whose peers have
    not all joined within ``config.distributed_timeout`` seconds stops with ``error: ...``
    (status 2) naming the address, the processes and the flag. Flags that jax was to detect
    and did not (no cluster) are a ``ValueError`` naming them.

    CPU collectives across processes go through gloo (jax's CPU default has none; the setting
    does not touch GPU collectives, which are NCCL's)."""
    if config.distributed == "off":
        return
    address, n, pid = config.coordinator_address, config.num_processes, config.process_id
    timeout = config.distributed_timeout
    deadline = time.monotonic() + timeout
    if None in (address, n, pid):  # jax detects the rest, or says it cannot
        who, where = "the other processes of the cluster that jax detects", ""
        late = "not every process of the cluster joined"
    else:
        if pid == 0:
            _check_port_free(address)
        who, where = (_others(pid, n) if n > 1 else "no other process"), f" at {address}"
        late = f"{who} did not join" if n == 2 else f"not all of {who} joined"
    if n != 1:
        print(
            f"process {'?' if pid is None else pid} of {n or '?'}: waiting up to {timeout} s "
            f"for {who} to join{where} (--distributed-timeout)",
            file=sys.stderr,
            flush=True,
        )
    if pid not in (None, 0) and address is not None:
        _wait_for_coordinator(address, deadline, timeout)
    late += (
        f"{where} within {timeout} s (--distributed-timeout); start every process with the "
        "same --coordinator-address and --num-processes and its own --process-id, or raise "
        "--distributed-timeout"
    )
    try:
        with _stop_after(deadline, late):
            jax.distributed.initialize(
                coordinator_address=address,
                num_processes=n,
                process_id=pid,
                initialization_timeout=timeout + JAX_TIMEOUT_MARGIN,
            )
    except ValueError:  # jax was to detect a flag and did not
        if None not in (address, n, pid):
            raise
        flags = ("--coordinator-address", "--num-processes", "--process-id")
        missing = [f for f, value in zip(flags, (address, n, pid), strict=True) if value is None]
        raise ValueError(
            f"--distributed {config.distributed} needs {', '.join(missing)}: jax detected no "
            "cluster (SLURM, Open MPI, Kubernetes, TPU pods) to take them from; pass "
            "--distributed on with --coordinator-address HOST:PORT (process 0's machine and a "
            "free port), --num-processes and --process-id"
        ) from None
    jax.config.update("jax_cpu_collectives_implementation", "gloo")


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


def spread_devices(spread: bool) -> list:
    """The devices a grid spreads its runs over (``--spread-runs``, :func:`jacosr.grids.
    run_grid`): the local ones when ``spread`` with one process, else none (one run at a
    time, each on :func:`devices`). With several processes every run takes them all, so
    nothing is spread."""
    if not spread or jax.process_count() > 1:
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
