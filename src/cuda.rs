//! The CUDA side: a context and stream, and the kernel modules compiled by
//! build.rs and embedded in the crate, loaded once per context on first use.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr};
use std::sync::{Arc, OnceLock};

#[cfg(nvlm_vision_kernels)]
const PREPROCESS_FATBIN: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/preprocess.fatbin"
)));
#[cfg(not(nvlm_vision_kernels))]
const PREPROCESS_FATBIN: Option<&[u8]> = None;

/// The ptxas resource report (registers, spills, shared memory per kernel
/// and architecture) of this build, or `None` when it has no kernels.
pub fn ptxas_report() -> Option<&'static str> {
    #[cfg(nvlm_vision_kernels)]
    return Some(include_str!(concat!(env!("OUT_DIR"), "/ptxas_report.txt")));
    #[cfg(not(nvlm_vision_kernels))]
    None
}

// SAFETY: plain `repr(C)` data (integers and device addresses), the layout
// the kernels declare in kernels/abi.h.
unsafe impl DeviceRepr for crate::abi::NvlmIntermediate {}
unsafe impl DeviceRepr for crate::abi::NvlmTileWrite {}

pub(crate) fn driver_error(call: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{call}: {e}"))
}

/// One CUDA device: its primary context, the stream work is queued on, and
/// the lazily loaded kernel modules.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    preprocess: OnceLock<Arc<CudaModule>>,
}

impl Gpu {
    /// Opens device `ordinal`. Fails with [`Error::CudaUnavailable`] when
    /// this build has no kernels, the driver library is missing, or there is
    /// no such device.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        if PREPROCESS_FATBIN.is_none() {
            return Err(Error::CudaUnavailable(
                "this build of nvlm-vision has no CUDA kernels (nvcc was not found at build time)"
                    .into(),
            ));
        }
        // SAFETY: only probes whether the driver library can be loaded.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::CudaUnavailable(
                "the CUDA driver library (libcuda) is not loadable".into(),
            ));
        }
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::CudaUnavailable(format!("no usable CUDA device {ordinal}: {e}")))?;
        let stream = ctx.default_stream();
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            preprocess: OnceLock::new(),
        }))
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A function of the preprocessing module, loading it on first use.
    pub(crate) fn preprocess_function(&self, name: &str) -> Result<CudaFunction> {
        let module = match self.preprocess.get() {
            Some(m) => m.clone(),
            None => {
                let fatbin = PREPROCESS_FATBIN.expect("checked in Gpu::new");
                let module = self
                    .ctx
                    .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
                    .map_err(driver_error("loading preprocess.fatbin"))?;
                self.preprocess.get_or_init(|| module).clone()
            }
        };
        module.load_function(name).map_err(driver_error(name))
    }
}
