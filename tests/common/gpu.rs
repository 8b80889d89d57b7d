//! The GPU test policy: without a usable device a GPU test prints one
//! "skipped" line and passes; with `NVLM_VISION_REQUIRE_GPU=1` it fails.

use nvlm_vision::cuda::Gpu;
use std::sync::Arc;

/// Device 0, or `None` (after printing why) when the test should skip.
pub fn gpu_or_skip(test: &str) -> Option<Arc<Gpu>> {
    match Gpu::new(0) {
        Ok(gpu) => Some(gpu),
        Err(e) => {
            let required = std::env::var("NVLM_VISION_REQUIRE_GPU").is_ok_and(|v| v == "1");
            assert!(!required, "{test}: NVLM_VISION_REQUIRE_GPU=1 but {e}");
            eprintln!("skipped: no CUDA device ({test}: {e})");
            None
        }
    }
}

/// Device 0 when it runs this build's sm_90a code (compute capability 9.0),
/// else `None` after printing why: Hopper tests skip on other GPUs, unless
/// `NVLM_VISION_REQUIRE_HOPPER=1` (run.sh sets it when `nvidia-smi` reports
/// compute capability 9.0, so the crate's own check cannot skip them there).
pub fn hopper_or_skip(test: &str) -> Option<Arc<Gpu>> {
    let gpu = gpu_or_skip(test)?;
    if let Err(e) = nvlm_vision::hopper::require_sm90a(&gpu, test) {
        let required = std::env::var("NVLM_VISION_REQUIRE_HOPPER").is_ok_and(|v| v == "1");
        assert!(!required, "{test}: NVLM_VISION_REQUIRE_HOPPER=1 but {e}");
        eprintln!("skipped: {e}");
        return None;
    }
    Some(gpu)
}

/// Device 1's default stream, for the refusal of another device's streams
/// and buffers, or `None` (after printing that `test` does not exercise
/// it) on a host with one device.
pub fn second_device_stream(test: &str) -> Option<Arc<cudarc::driver::CudaStream>> {
    let devices = cudarc::driver::CudaContext::device_count().unwrap();
    if devices < 2 {
        eprintln!("{test}: one CUDA device, so another device's buffers are not exercised");
        return None;
    }
    Some(
        cudarc::driver::CudaContext::new(1)
            .unwrap()
            .default_stream(),
    )
}
