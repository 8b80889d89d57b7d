"""CUDA-event timing for the peer scripts, by the Rust benches' method
(benches/common/mod.rs, `device_time`): each sample is k calls queued back
to back between one pair of events, and a call's time is the sample's
elapsed time over k. Timing each call between its own events, with a
synchronisation after it, would add the host's dispatch time (Python, torch,
backend selection) to every call, which the Rust side does not pay.

Before each sample the GPU spins (torch.cuda._sleep) for longer than the
host takes to queue the sample's calls, so calls whose dispatch takes longer
than their GPU time (a small copy) are still timed back to back. Warm-up is
by time (clocks up, caches and backend choices made), not a call count.
"""
import math
import statistics
import time

import torch

WARMUP_S = 0.5
SAMPLE_MS = 2.0  # each sample's GPU time: far above event resolution
SAMPLES = 25
# Below CUDA's queue of pending launches (about a thousand), so that a
# sample's calls are all queued while the spin before it runs.
MAX_CALLS_PER_SAMPLE = 512
# Spin cycles per microsecond of host time: above any Hopper clock (MHz),
# so the spin outlasts the host's queueing. Capped at 50 ms.
SPIN_CYCLES_PER_US = 2000
MAX_SPIN_US = 50_000
CALIBRATION_SPIN_US = 5_000


def device_median_us(fn, inputs):
    """Median GPU time in µs of one `fn(inputs[i % len(inputs)])`, the
    inputs taken in turn (sets that together exceed L2 defeat its reuse)."""
    calls = 0

    def call():
        nonlocal calls
        fn(inputs[calls % len(inputs)])
        calls += 1

    start_wall = time.perf_counter()
    while time.perf_counter() - start_wall < WARMUP_S:
        for _ in range(4):
            call()
        torch.cuda.synchronize()

    # One calibration sample: the GPU time and the host's queueing time per
    # call, behind a spin so that a host slower than the GPU is not timed.
    n = 8
    can_spin = hasattr(torch.cuda, "_sleep")
    if can_spin:
        torch.cuda._sleep(CALIBRATION_SPIN_US * SPIN_CYCLES_PER_US)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    t0 = time.perf_counter()
    start.record()
    for _ in range(n):
        call()
    end.record()
    host_us = (time.perf_counter() - t0) * 1e6 / n
    end.synchronize()
    gpu_us = start.elapsed_time(end) * 1e3 / n
    k = max(1, min(MAX_CALLS_PER_SAMPLE, math.ceil(SAMPLE_MS * 1e3 / max(gpu_us, 1e-3))))
    spin = int(min(MAX_SPIN_US, 2 * k * host_us) * SPIN_CYCLES_PER_US)

    pairs = []
    for _ in range(SAMPLES):
        if can_spin:
            torch.cuda._sleep(spin)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(k):
            call()
        end.record()
        pairs.append((start, end))
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) * 1e3 / k for s, e in pairs)
