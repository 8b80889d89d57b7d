//! Shared by the GPU benches: device time from CUDA events, and the GPU
//! policy (skip without a device unless `NVLM_VISION_REQUIRE_GPU=1`).
#![allow(dead_code)] // each bench uses a different subset

// The same GPU policy as the tests.
#[path = "../../tests/common/gpu.rs"]
mod gpu;
#[allow(unused_imports)] // not every bench touches the GPU
pub use gpu::gpu_or_skip;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion};
use cudarc::driver::sys::CUevent_flags;
use nvlm_vision::cuda::Gpu;
use std::time::{Duration, Instant};

/// Deterministic random bytes (xorshift), a different stream per `seed`:
/// bench inputs are never zeros, which can run faster than real data.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = 0x2545_F491_4F6C_DD1D ^ seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Calls of a sample whose host time is taken: the launch queue cannot
/// fill in so few (it holds about a thousand), so their rate is the host's
/// own, not one the GPU paces.
const HOST_PROBE_CALLS: u64 = 256;

/// One timed sample: the GPU's time between the events around `calls`
/// calls, and the host's time to queue the first of them.
pub struct Sample {
    pub gpu: Duration,
    pub calls: u64,
    pub host_per_call: Duration,
}

impl Sample {
    /// Whether the GPU likely waited on the host: it queues a call in at
    /// least 90% of the time the GPU takes to run one, so the events time
    /// the host's dispatch rate, not the GPU's work.
    fn host_bound(&self) -> bool {
        self.host_per_call.as_secs_f64() * 10.0 >= self.gpu.as_secs_f64() / self.calls as f64 * 9.0
    }
}

/// GPU time of `iters` calls of `launch(i)` queued back to back on the
/// GPU's stream, from CUDA events around them, with the host's time to
/// queue the first [`HOST_PROBE_CALLS`]. `launch` gets the iteration index
/// so callers can rotate among input sets larger than L2. Panics on any
/// CUDA error: a bench that fails must not report a time.
pub fn device_time(gpu: &Gpu, iters: u64, mut launch: impl FnMut(u64)) -> Sample {
    let ctx = gpu.context();
    let stream = gpu.stream();
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("event");
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("event");
    start.record(stream).expect("record start");
    let probe = iters.min(HOST_PROBE_CALLS);
    let queueing = Instant::now();
    (0..probe).for_each(&mut launch);
    let host = queueing.elapsed();
    (probe..iters).for_each(&mut launch);
    end.record(stream).expect("record end");
    let ms = start.elapsed_ms(&end).expect("elapsed time");
    Sample {
        gpu: Duration::from_secs_f64(f64::from(ms) * 1e-3),
        calls: iters.max(1),
        host_per_call: host / probe.max(1) as u32,
    }
}

/// A criterion group of GPU benches: each id is timed by CUDA events
/// ([`device_time`]), and reports on one `dispatch:` line whether the GPU
/// waited on the host (scripts/gpu_summary.py lists those ids).
pub struct DeviceGroup<'a> {
    pub group: BenchmarkGroup<'a, WallTime>,
    name: String,
}

impl<'a> DeviceGroup<'a> {
    pub fn new(c: &'a mut Criterion, name: &str) -> Self {
        DeviceGroup {
            group: c.benchmark_group(name),
            name: name.to_string(),
        }
    }

    /// Benches `id` (`<impl>/<case>`), `sample(iters)` timing `iters`
    /// calls.
    pub fn bench(&mut self, id: &str, mut sample: impl FnMut(u64) -> Sample) {
        let (mut samples, mut host_bound, mut calls) = (0u32, 0u32, 0f64);
        let (mut gpu_s, mut host_s) = (0f64, 0f64);
        self.group.bench_function(id, |b| {
            b.iter_custom(|iters| {
                let s = sample(iters);
                samples += 1;
                host_bound += u32::from(s.host_bound());
                calls += s.calls as f64;
                gpu_s += s.gpu.as_secs_f64();
                host_s += s.host_per_call.as_secs_f64() * s.calls as f64;
                s.gpu
            })
        });
        if samples > 0 {
            eprintln!(
                "dispatch: {}/{id}: host {:.2} us/call, GPU {:.2} us/call, {host_bound} of \
                 {samples} samples host-bound",
                self.name,
                host_s * 1e6 / calls,
                gpu_s * 1e6 / calls
            );
        }
    }

    pub fn finish(self) {
        self.group.finish();
    }
}

/// Whether to bench the sm_90a kernels: the GPU runs them, and
/// `NVLM_VISION_BENCH_SKIP_HOPPER` is unset (run.sh sets it when a Hopper
/// test step timed out: a kernel that hangs would hold every bench binary
/// to its time limit and leave no time for the rest). Prints why not.
pub fn bench_hopper(gpu: &Gpu, what: &str) -> bool {
    if let Ok(why) = std::env::var("NVLM_VISION_BENCH_SKIP_HOPPER") {
        eprintln!("skipped: {what} (NVLM_VISION_BENCH_SKIP_HOPPER={why})");
        return false;
    }
    match nvlm_vision::hopper::require_sm90a(gpu, what) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}
