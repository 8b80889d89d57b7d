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

/// Device 0 and device 1's default stream, for the refusal of another
/// device's streams and buffers, or `None` (after printing why) without a
/// device or on a host with one.
pub fn two_devices_or_skip(test: &str) -> Option<(Arc<Gpu>, Arc<cudarc::driver::CudaStream>)> {
    let gpu = gpu_or_skip(test)?;
    let devices = cudarc::driver::CudaContext::device_count().unwrap();
    if devices < 2 {
        eprintln!("{test}: one CUDA device, so another device's buffers are not exercised");
        return None;
    }
    let other = cudarc::driver::CudaContext::new(1)
        .unwrap()
        .default_stream();
    Some((gpu, other))
}

/// Asserts that `result` is device 0's refusal of device 1's `what`.
pub fn assert_refused_as_of_device_1(result: nvlm_vision::Result<()>, what: &str) {
    match result {
        Err(nvlm_vision::Error::OfAnotherContext {
            what: named,
            its_device: 1,
            gpu_device: 0,
        }) => assert_eq!(named, what),
        other => panic!("{what} of device 1: {other:?}"),
    }
}
