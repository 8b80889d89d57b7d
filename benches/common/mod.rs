//! Shared by the GPU benches: device time from CUDA events, and the GPU
//! policy (skip without a device unless `NVLM_VISION_REQUIRE_GPU=1`).
#![allow(dead_code)] // each bench uses a different subset

// The same GPU policy as the tests.
#[path = "../../tests/common/gpu.rs"]
mod gpu;
#[allow(unused_imports)] // not every bench touches the GPU
pub use gpu::gpu_or_skip;

use cudarc::driver::sys::CUevent_flags;
use nvlm_vision::cuda::Gpu;
use std::time::Duration;

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

/// GPU time of `iters` calls of `launch(i)` queued back to back on the
/// GPU's stream, from CUDA events around them (for criterion's
/// `iter_custom`). `launch` gets the iteration index so callers can rotate
/// among input sets larger than L2. Panics on any CUDA error: a bench that
/// fails must not report a time.
pub fn device_time(gpu: &Gpu, iters: u64, mut launch: impl FnMut(u64)) -> Duration {
    let ctx = gpu.context();
    let stream = gpu.stream();
    let start = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("event");
    let end = ctx
        .new_event(Some(CUevent_flags::CU_EVENT_DEFAULT))
        .expect("event");
    start.record(stream).expect("record start");
    for i in 0..iters {
        launch(i);
    }
    end.record(stream).expect("record end");
    let ms = start.elapsed_ms(&end).expect("elapsed time");
    Duration::from_secs_f64(f64::from(ms) * 1e-3)
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
