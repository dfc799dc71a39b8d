"""Several devices and several processes (jacosr.distributed), on CPU.

Two subprocess set-ups, each started once per module and shared by the tests:

- four forced host devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``): this file
  run as a script (``devices`` mode) trains a tiny digits run on all four devices (data
  parallel), computes its Jacobian norms on the four and on one (``on_device``), tries a batch
  that does not split over the devices, and runs a two-seed grid spread one run per device
  (each run on its device alone: the plain one-device path, whose seed 0 is the reference
  curve), twice (the second reads back); it prints one JSON line;
- two processes (``jax.distributed`` over gloo, one device each) running ``python -m
  jacosr.train`` on the same tiny run, killed by ``JACOSR_FAULT`` after step 15 (both
  processes: the fault point follows a collective), then re-run to resume.

The references are the one-device run of the first set-up (the plain path, as on any
one-device machine) and single-device evaluation in this process. Data parallel training
changes only the order of float additions (the gradient and BatchNorm all-reduces), so the
logged losses must agree to ``LOSS_RTOL``; the Jacobian engine's samples do not interact, so
its norms must agree to float tolerance.

Every subprocess has a timeout: a hang (a collective waiting for a dead peer) fails the test
instead of blocking the suite; no result depends on timing.

The start of several processes (:func:`jacosr.distributed.initialize`) is checked where a
peer never comes, so that its outcome is certain: a coordinator address that is no
``host:port``, a coordinator port another program holds, process 1 without process 0 (in this
process: it fails before jax's own start), process 0 without process 1 (a subprocess: it stops
the process), each with a ``--distributed-timeout`` of a second.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

TIMEOUT = 300  # seconds; generous (slow CI), only turns a hang into a failure
LOSS_RTOL = 1e-5
TERMS_RTOL = 5e-5  # the terms differentiate twice: float reassociation weighs a little more
NORM_RTOL = 1e-5
STEPS, BATCH = 20, 8
TINY = dict(steps=STEPS, batch_size=BATCH, log_every=5, dispatch_steps=10, checkpoint_every=10)
FLAGS = [
    "--width", "32", "--embed-dim", "16", "--steps", str(STEPS), "--batch-size", str(BATCH),
    "--log-every", "5", "--dispatch-steps", "10", "--checkpoint-every", "10",
]  # fmt: skip


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env["XLA_FLAGS"] = (
        f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}"
    )
    env.pop("JACOSR_FAULT", None)
    return env


def _losses(metrics_text: str) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in map(json.loads, metrics_text.splitlines())]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# Starting several processes: refused flags, a port in use, a peer that never comes

ADDRESS_ERROR = "--coordinator-address must be host:port"


@pytest.mark.parametrize("address", ["nohostport", "host:", ":123", "host:0", "h:65536", "h:x"])
def test_a_coordinator_address_must_be_host_port(address):
    """(The command line refuses it when parsed: tests/test_cli.py.)"""
    from jacosr.distributed import DistributedConfig

    with pytest.raises(ValueError, match=rf"{ADDRESS_ERROR}, .*; got '{address}'"):
        DistributedConfig("on", address)
    for valid in ("localhost:1", "[::1]:65535", "10.0.0.1:12345"):
        DistributedConfig("on", valid)


def test_no_coordinator_and_no_cluster_names_the_flags():
    """In a fresh process (jax refuses to start its distributed client once it has computed,
    as the suite's other tests make it), and without the variables of any cluster jax
    detects (a CI machine under SLURM would otherwise join it)."""
    env = {
        k: v
        for k, v in _env(1).items()
        if not k.startswith(("SLURM_", "OMPI_", "PMI_", "KUBERNETES_", "TPU_", "MEGASCALE_"))
    }
    script = (
        "from jacosr.distributed import DistributedConfig, initialize\n"
        "for mode in ('on', 'auto'):\n"
        "    try:\n"
        "        initialize(DistributedConfig(mode))\n"
        "    except ValueError as err:\n"
        "        print(err)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"--distributed {mode} needs --coordinator-address, --num-processes, --process-id: "
        "jax detected no cluster (SLURM, Open MPI, Kubernetes, TPU pods) to take them "
        "from; pass --distributed on with --coordinator-address HOST:PORT (process 0's "
        "machine and a free port), --num-processes and --process-id"
        for mode in ("on", "auto")
    ]


def test_a_coordinator_port_in_use_is_refused():
    from jacosr.distributed import DistributedConfig, initialize

    with socket.socket() as other:  # another program, listening on the port
        other.bind(("localhost", 0))
        other.listen()
        port = other.getsockname()[1]
        with pytest.raises(OSError) as err:
            initialize(DistributedConfig("on", f"localhost:{port}", 1, 0))
    assert str(err.value) == (
        f"port {port} is in use by another program on this machine, so process 0 cannot start "
        f"its coordinator at localhost:{port}; choose a free port in --coordinator-address (the "
        "same in every process), or stop that program"
    )


def test_process_1_without_process_0_says_it_waits_then_stops(capsys):
    from jacosr.distributed import DistributedConfig, initialize

    address = f"localhost:{_free_port()}"  # no process 0 there
    with pytest.raises(TimeoutError) as err:
        initialize(DistributedConfig("on", address, 2, 1, distributed_timeout=1))
    assert capsys.readouterr().err == (
        f"process 1 of 2: waiting up to 1 s for process 0 to join at {address} "
        "(--distributed-timeout)\n"
    )
    assert str(err.value) == (
        f"process 0 did not start its coordinator at {address} within 1 s "
        "(--distributed-timeout); start process 0 with the same --coordinator-address and "
        "--num-processes, or raise --distributed-timeout"
    )


def test_process_0_without_process_1_says_it_waits_then_stops(tmp_path):
    address = f"localhost:{_free_port()}"
    command = [sys.executable, "-m", "jacosr.train", "--workdir", str(tmp_path / "run")]
    command += ["--distributed", "on", "--coordinator-address", address]
    command += ["--num-processes", "2", "--process-id", "0", "--distributed-timeout", "1"]
    done = subprocess.run(command, env=_env(1), capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 2, done.stderr[-3000:]
    assert done.stderr.splitlines()[-2:] == [
        f"process 0 of 2: waiting up to 1 s for process 1 to join at {address} "
        "(--distributed-timeout)",
        f"error: process 1 did not join at {address} within 1 s (--distributed-timeout); start "
        "every process with the same --coordinator-address and --num-processes and its own "
        "--process-id, or raise --distributed-timeout",
    ]
    assert "Check failure" not in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "run").exists()


# The four-device subprocess


def _devices_worker(root: Path) -> dict:
    """Run in the subprocess with four devices; returns what the tests check."""
    import dataclasses

    import jax

    from jacosr.data import load_open_set
    from jacosr.distributed import on_device
    from jacosr.evaluate import EvalConfig
    from jacosr.grids import run_grid, seed_grid
    from jacosr.jacobian import estimate_sqnorms, jacobian_norms
    from jacosr.models import ModelConfig, embedding_apply
    from jacosr.recipe import JacobianTerms, TrainConfig, resolve
    from jacosr.runs import hardware
    from jacosr.train import fit

    assert len(jax.devices()) == 4
    config = TrainConfig(model=ModelConfig(width=32, embed_dim=16), **TINY)
    data = load_open_set(resolve(config).data)
    graphdef, state = fit(config, data, root / "four", progress=False)
    xs = data.known_test.x[:37]  # not a multiple of 4: the last chunk is padded
    f = embedding_apply(graphdef)
    key = jax.random.key(3)
    norms4 = jacobian_norms(f, xs, params=state)
    est4, err4 = estimate_sqnorms(f, xs, key, params=state)
    terms = dataclasses.replace(config, jacobian=JacobianTerms(0.1, 2, "input", 0.1))
    fit(terms, data, root / "terms-four", progress=False)
    with on_device(jax.devices()[0]):
        norms1 = jacobian_norms(f, xs, params=state)
        est1, err1 = estimate_sqnorms(f, xs, key, params=state)
        on_one = hardware()
        fit(terms, data, root / "terms-one", progress=False)
    try:
        fit(dataclasses.replace(config, batch_size=6), data, root / "odd", progress=False)
        refused = None
    except ValueError as err:
        refused = str(err)
    grid = seed_grid({"row": resolve(config)}, 2)
    evaluation = EvalConfig(scores=("msp",))
    # spread: the seeds on devices 0 and 1, each run the plain one-device run
    first = run_grid(grid, root / "grid", evaluation, spread_runs=True, progress=False)
    stamps = {n: (root / "grid" / n / "metrics.jsonl").stat().st_mtime_ns for n in grid}
    again = run_grid(grid, root / "grid", evaluation, spread_runs=True, progress=False)
    restamps = {n: (root / "grid" / n / "metrics.jsonl").stat().st_mtime_ns for n in grid}
    return {
        "one": (root / "grid" / "row" / "seed0" / "metrics.jsonl").read_text(),
        "four": (root / "four" / "metrics.jsonl").read_text(),
        "terms": [(root / f"terms-{n}" / "metrics.jsonl").read_text() for n in ("one", "four")],
        "norms": [norms1.tolist(), norms4.tolist()],
        "estimates": [est1.tolist(), est4.tolist(), err1.tolist(), err4.tolist()],
        "refused": refused,
        "grid": {n: (root / "grid" / n / "metrics.jsonl").read_text() for n in grid},
        "grid_same": first == again,
        "grid_untouched": stamps == restamps,
        "grid_accuracy": [first[n].accuracy for n in grid],
        "hardware": {"all": hardware(), "one": on_one, "grid": [first[n].hardware for n in grid]},
    }


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory):
    root = tmp_path_factory.mktemp("four-devices")
    done = subprocess.run(
        [sys.executable, __file__, "devices", str(root)],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return root, json.loads(done.stdout.strip().splitlines()[-1])


def test_four_devices_train_the_one_device_curve(four_devices):
    root, out = four_devices
    one, four = _losses(out["one"]), _losses(out["four"])
    assert [s for s, _ in one] == [5, 10, 15, 20] == [s for s, _ in four]
    np.testing.assert_allclose([v for _, v in four], [v for _, v in one], rtol=LOSS_RTOL)
    assert sorted(os.listdir(root / "four" / "checkpoints")) == ["10", "20"]
    assert {"config.json", "metrics.jsonl", "checkpoints"} <= set(os.listdir(root / "four"))


def test_the_jacobian_terms_train_the_one_device_curve_on_four(four_devices):
    """Both Jacobian terms on: the batch, its path points and their probes are sharded over
    the devices, and the step is the one-device step up to the order of float additions."""
    _, out = four_devices
    one, four = (_losses(text) for text in out["terms"])
    assert [s for s, _ in one] == [5, 10, 15, 20] == [s for s, _ in four]
    np.testing.assert_allclose([v for _, v in four], [v for _, v in one], rtol=TERMS_RTOL)
    assert _losses(out["four"]) != four  # the terms change the objective


def test_four_devices_jacobian_norms_equal_one_device(four_devices):
    _, out = four_devices
    norms1, norms4 = map(np.array, out["norms"])
    assert norms1.shape == norms4.shape == (37,)
    assert np.all(norms1 > 0)
    np.testing.assert_allclose(norms4, norms1, rtol=NORM_RTOL)
    est1, est4, err1, err4 = map(np.array, out["estimates"])
    np.testing.assert_allclose(est4, est1, rtol=NORM_RTOL, atol=1e-7)
    np.testing.assert_allclose(err4, err1, rtol=NORM_RTOL, atol=1e-7)


def test_batch_must_split_over_devices(four_devices):
    _, out = four_devices
    assert out["refused"] == (
        "--batch-size must be a multiple of the number of devices (4), which each take an "
        "equal share; got 6"
    )


def test_spread_grid_runs_each_seed_and_resumes(four_devices):
    _, out = four_devices
    assert set(out["grid"]) == {"row/seed0", "row/seed1"}
    seed0, seed1 = _losses(out["grid"]["row/seed0"]), _losses(out["grid"]["row/seed1"])
    assert [s for s, _ in seed1] == [s for s, _ in seed0] == [5, 10, 15, 20]
    assert seed0 != seed1
    assert out["grid_same"] and out["grid_untouched"]  # the re-run read back, trained nothing
    assert all(0 < a <= 1 for a in out["grid_accuracy"])


def test_what_a_run_ran_on_is_recorded(four_devices):
    """results.json says how many devices trained the run: a spread run one."""
    _, out = four_devices
    every, one, grid = (out["hardware"][k] for k in ("all", "one", "grid"))
    assert (every["platform"], every["devices"], every["processes"]) == ("cpu", 4, 1)
    assert one["devices"] == 1 and one["jax"] == every["jax"] and every["jaxlib"]
    assert [h["devices"] for h in grid] == [1, 1]


# The two-process run


def _two_processes(workdir: Path, fault: str | None) -> list[subprocess.CompletedProcess]:
    port = _free_port()
    env = _env(1)
    if fault:
        env["JACOSR_FAULT"] = fault
    command = [sys.executable, "-m", "jacosr.train", *FLAGS, "--scores", "msp", "jacobian"]
    command += ["--workdir", str(workdir), "--distributed", "on"]
    command += ["--coordinator-address", f"localhost:{port}", "--num-processes", "2"]
    procs = [
        subprocess.Popen(
            [*command, "--process-id", str(i)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    done = []
    try:
        for proc in procs:
            stdout, stderr = proc.communicate(timeout=TIMEOUT)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("two-processes") / "run"
    killed = _two_processes(workdir, "after-step:15")
    after_kill = {
        "checkpoints": sorted(os.listdir(workdir / "checkpoints")),
        "metrics": (workdir / "metrics.jsonl").read_text(),
    }
    resumed = _two_processes(workdir, None)
    return workdir, killed, after_kill, resumed


def test_two_processes_killed_and_resumed(two_processes, four_devices):
    workdir, killed, after_kill, resumed = two_processes
    assert [p.returncode for p in killed] == [-signal.SIGKILL] * 2, killed[0].stderr[-2000:]
    assert after_kill["checkpoints"] == ["10"]
    assert [s for s, _ in _losses(after_kill["metrics"])] == [5, 10, 15]
    assert [p.returncode for p in resumed] == [0, 0], resumed[0].stderr[-2000:]
    # Resumed from step 10: every line once, and the single-device curve.
    losses = _losses((workdir / "metrics.jsonl").read_text())
    reference = _losses(four_devices[1]["one"])
    assert [s for s, _ in losses] == [5, 10, 15, 20]
    np.testing.assert_allclose([v for _, v in losses], [v for _, v in reference], rtol=LOSS_RTOL)
    assert sorted(os.listdir(workdir / "checkpoints")) == ["10", "20"]


def test_only_process_zero_writes(two_processes):
    workdir, _, _, resumed = two_processes
    assert f"wrote {workdir / 'results.json'}" in resumed[0].stdout
    # No table, no "wrote" line (gloo's own connection lines aside).
    assert [x for x in resumed[1].stdout.splitlines() if not x.startswith("[Gloo]")] == []
    results = json.loads((workdir / "results.json").read_text())
    assert list(results["scores"]) == ["msp", "jacobian"]
    assert (results["hardware"]["processes"], results["hardware"]["devices"]) == (2, 2)


def test_two_process_jacobian_scores_equal_one_device(two_processes, tmp_path):
    """The exact Jacobian norms of the evaluation, sharded over both processes, give the AUROC
    that single-device evaluation of the same checkpoint gives here."""
    from jacosr.evaluate import EvalConfig, evaluate
    from jacosr.runs import load_run

    workdir = tmp_path / "copy"
    shutil.copytree(two_processes[0], workdir)
    config, data, graphdef, state = load_run(workdir)
    here = evaluate(graphdef, state, data, config.loss, EvalConfig(scores=("jacobian",)))
    there = json.loads((workdir / "results.json").read_text())["scores"]["jacobian"]
    assert abs(here["scores"]["jacobian"]["auroc"] - there["auroc"]) < 1e-4
    assert 0.5 < there["auroc"] < 1


if __name__ == "__main__":
    mode, root = sys.argv[1:]
    assert mode == "devices"
    from jacosr.config import configure_xla

    configure_xla()
    print(json.dumps(_devices_worker(Path(root))))
