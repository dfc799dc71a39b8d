"""The reference of the benchmarks' ``% peak`` columns: XLA's float32 matrix product here.

A program's FLOP count (XLA's ``cost_analysis``) over its time, against the FLOP rate of a
float32 ``n x n`` matrix product timed in the same process: how close the program comes to
what this machine's matrix units deliver through XLA, by wall time and per CPU-second (FLOP
per CPU-second of each; steadier when other jobs share the cores, blind to idle cores).
"""

from __future__ import annotations

import time


def matmul_peak(n: int = 2048, min_seconds: float = 1.0) -> tuple[float, float]:
    """FLOP/s of XLA's float32 ``n x n`` matrix product on the default device, by wall time
    and per CPU-second of this process."""
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    product = jax.jit(lambda a: a @ a).lower(a).compile()
    product(a).block_until_ready()
    calls, wall, cpu = 0, time.perf_counter(), time.process_time()
    while calls == 0 or time.perf_counter() - wall < min_seconds:
        product(a).block_until_ready()
        calls += 1
    flops = 2 * n**3 * calls
    return flops / (time.perf_counter() - wall), flops / (time.process_time() - cpu)
