//! The CUDA side: a context and stream, and the kernel modules compiled by
//! build.rs and embedded in the crate, loaded on first use.

use crate::error::{Error, Result};
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaStream, DeviceRepr, DeviceSlice};
use std::sync::{Arc, OnceLock};

/// Declares the kernel modules: one `kernels/<file>.cu` each, compiled by
/// build.rs into `OUT_DIR/<file>.fatbin`. Adding a kernel file means adding
/// one line here.
macro_rules! kernel_modules {
    ($($variant:ident => $file:literal),+ $(,)?) => {
        /// A kernel module (one `kernels/*.cu` file).
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum KernelModule { $($variant),+ }

        impl KernelModule {
            const ALL: &'static [KernelModule] = &[$(KernelModule::$variant),+];

            fn file(self) -> &'static str {
                match self { $(KernelModule::$variant => concat!($file, ".fatbin")),+ }
            }

            /// The embedded fatbin, or `None` in a build without nvcc.
            fn fatbin(self) -> Option<&'static [u8]> {
                match self {
                    $(
                        #[cfg(nvlm_vision_kernels)]
                        KernelModule::$variant => Some(include_bytes!(
                            concat!(env!("OUT_DIR"), "/", $file, ".fatbin")
                        )),
                        #[cfg(not(nvlm_vision_kernels))]
                        KernelModule::$variant => None,
                    )+
                }
            }
        }
    };
}

kernel_modules! {
    Preprocess => "preprocess",
    HopperSelftest => "hopper_selftest",
    Attention => "attention",
    AttentionHopper => "attention_hopper",
    Projector => "projector",
    ProjectorHopper => "projector_hopper",
}

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
unsafe impl DeviceRepr for crate::abi::NvlmFusedPreprocess {}
unsafe impl DeviceRepr for crate::abi::NvlmHopperAttention {}
unsafe impl DeviceRepr for crate::abi::NvlmTmaSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmClusterSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmTma4dSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmPipelineSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmWgmmaSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmWgmmaSwizzledSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmWgmmaRsSelftest {}
unsafe impl DeviceRepr for crate::abi::NvlmFlashAttention {}
unsafe impl DeviceRepr for crate::abi::NvlmQkRmsNorm {}
unsafe impl DeviceRepr for crate::abi::NvlmProjectorFront {}
unsafe impl DeviceRepr for crate::abi::NvlmBiasGelu {}
unsafe impl DeviceRepr for crate::abi::NvlmHopperLinear {}

/// Lets `function` take `bytes` of dynamic shared memory: above 48 KiB a
/// kernel needs this explicit opt-in (up to 163 KiB on sm_80, 227 KiB on
/// sm_90).
pub(crate) fn allow_dynamic_smem(function: &CudaFunction, bytes: u32) -> Result<()> {
    function
        .set_attribute(
            cudarc::driver::sys::CUfunction_attribute_enum::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
            bytes as i32,
        )
        .map_err(driver_error("cuFuncSetAttribute(max dynamic shared memory)"))
}

/// Makes `ctx` current on this thread. cudarc first returns (and clears)
/// any error it stored from a call that could not return one, such as an
/// event record in a buffer guard's drop; the message says so, since that
/// error is not the binding's.
pub(crate) fn bind_context(ctx: &CudaContext) -> Result<()> {
    ctx.bind_to_thread().map_err(|e| {
        Error::Cuda(format!(
            "cuCtxSetCurrent, or an earlier asynchronous call whose error cudarc stored \
             (an event record or wait on a buffer's use): {e}"
        ))
    })
}

pub(crate) fn driver_error(call: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Cuda(format!("{call}: {e}"))
}

/// Fails with [`Error::CudaUnavailable`] when this build has no kernels or
/// the driver library cannot be loaded.
fn ensure_kernels_and_driver() -> Result<()> {
    if KernelModule::ALL.iter().any(|m| m.fatbin().is_none()) {
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
    Ok(())
}

type LoadedModules = [OnceLock<Arc<CudaModule>>; KernelModule::ALL.len()];

/// One CUDA device: a context, the stream this crate's work is queued on,
/// and the lazily loaded kernel modules (shared by every [`Gpu`] made from
/// this one with [`Gpu::on_stream`]).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    modules: Arc<LoadedModules>,
    compute_capability: (i32, i32),
    multiprocessors: u32,
}

impl Gpu {
    /// Opens device `ordinal` (its primary context); the work is queued on
    /// the context's default (legacy) stream. Fails with
    /// [`Error::CudaUnavailable`] when this build has no kernels, the driver
    /// library is missing, or there is no such device.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>> {
        ensure_kernels_and_driver()?;
        let ctx = CudaContext::new(ordinal)
            .map_err(|e| Error::CudaUnavailable(format!("no usable CUDA device {ordinal}: {e}")))?;
        Gpu::open(ctx.default_stream())
    }

    /// The device of `stream`'s context, with this crate's work queued on
    /// `stream`: for an engine that orders the vision path on a stream of
    /// its own. Buffers used across streams are ordered by cudarc's event
    /// tracking, as for any cudarc work; cudarc tracks only while
    /// `ctx.is_managing_stream_synchronization()` (a stream made by
    /// `new_stream` or `fork` exists and tracking is enabled), so an engine
    /// that wraps its own streams, or disables tracking, orders them itself.
    pub fn from_stream(stream: Arc<CudaStream>) -> Result<Arc<Gpu>> {
        ensure_kernels_and_driver()?;
        Gpu::open(stream)
    }

    /// This device and its already loaded kernels, with the work queued on
    /// `stream` instead: one [`Gpu`] per engine stream without loading the
    /// modules again. `stream` must belong to this GPU's context.
    pub fn on_stream(&self, stream: Arc<CudaStream>) -> Result<Arc<Gpu>> {
        self.check_own_context(stream.context(), "stream")?;
        Ok(Arc::new(Gpu {
            ctx: self.ctx.clone(),
            stream,
            modules: self.modules.clone(),
            compute_capability: self.compute_capability,
            multiprocessors: self.multiprocessors,
        }))
    }

    fn open(stream: Arc<CudaStream>) -> Result<Arc<Gpu>> {
        let ctx = stream.context().clone();
        use cudarc::driver::sys::CUdevice_attribute::{
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR as MAJOR,
            CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR as MINOR,
            CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT as SMS,
        };
        let get = |a| {
            ctx.attribute(a)
                .map_err(driver_error("cuDeviceGetAttribute"))
        };
        let compute_capability = (get(MAJOR)?, get(MINOR)?);
        let multiprocessors = get(SMS)? as u32;
        Ok(Arc::new(Gpu {
            ctx,
            stream,
            modules: Arc::new(std::array::from_fn(|_| OnceLock::new())),
            compute_capability,
            multiprocessors,
        }))
    }

    /// (major, minor) compute capability of the device, read once when it
    /// was opened.
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }

    /// The device's streaming multiprocessors (the size of a persistent
    /// grid), read once when it was opened.
    pub fn multiprocessor_count(&self) -> u32 {
        self.multiprocessors
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    /// `Ok` when `ctx`, the context `what` (a caller's stream or buffer)
    /// was made in, is this GPU's: work queued here cannot use another's.
    pub fn check_own_context(&self, ctx: &CudaContext, what: &'static str) -> Result<()> {
        check_same_context(&self.ctx, ctx, what)
    }

    /// `Ok` when the device buffer `what` was allocated in this GPU's
    /// context: a kernel given another device's memory faults (without peer
    /// access, which this crate does not rely on), and the fault poisons
    /// the context.
    pub fn check_own_buffer<T>(
        &self,
        buffer: &impl DeviceSlice<T>,
        what: &'static str,
    ) -> Result<()> {
        check_buffer_context(&self.ctx, buffer, what)
    }

    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// A function of `module`, loading the module on first use. The
    /// low-level door to the kernels, for tests and for callers who launch
    /// them with their own cudarc code; the stage APIs use it internally.
    pub fn function(&self, module: KernelModule, name: &str) -> Result<CudaFunction> {
        // cuModuleGetFunction, and what callers then ask of the function
        // (cuFuncSetAttribute, cuOccupancy*), run in the thread's current
        // context; cudarc binds none for them.
        bind_context(&self.ctx)?;
        self.module(module)?
            .load_function(name)
            .map_err(driver_error(name))
    }

    /// Loads every kernel module now rather than on first use: call it
    /// before capturing this GPU's stream into a CUDA graph, since a module
    /// is not loaded while a capture is under way.
    pub fn load_kernels(&self) -> Result<()> {
        KernelModule::ALL
            .iter()
            .try_for_each(|&m| self.module(m).map(drop))
    }

    fn module(&self, module: KernelModule) -> Result<Arc<CudaModule>> {
        let slot = &self.modules[module as usize];
        if let Some(m) = slot.get() {
            return Ok(m.clone());
        }
        if self.is_capturing()? {
            return Err(Error::Unsupported(format!(
                "loading the {} kernels while the stream is being captured into a CUDA graph \
                 (module loading is not a stream operation); call Gpu::load_kernels() before \
                 capturing",
                module.file()
            )));
        }
        let fatbin = module.fatbin().expect("checked in Gpu::new");
        let loaded = self
            .ctx
            .load_module(cudarc::nvrtc::Ptx::from_binary(fatbin.to_vec()))
            .map_err(driver_error(module.file()))?;
        Ok(slot.get_or_init(|| loaded).clone())
    }

    /// Whether this GPU's stream is being captured into a CUDA graph.
    pub fn is_capturing(&self) -> Result<bool> {
        is_capturing(&self.stream)
    }

    /// Refuses `what` on a stream under capture while cudarc tracks
    /// events (see [`check_capturable`]).
    pub(crate) fn check_capturable(&self, what: &str) -> Result<()> {
        check_capturable(&self.stream, what)
    }

    /// Refuses `what` (work that uploads from pageable host memory) on a
    /// stream under capture.
    pub(crate) fn check_not_capturing(&self, what: &str) -> Result<()> {
        if self.is_capturing()? {
            return Err(Error::Unsupported(format!(
                "{what} while the stream is being captured into a CUDA graph: it copies from \
                 pageable host memory (the tables of an image shape it has not kept, v1's on \
                 every call, host images), which a graph cannot hold; run it outside the capture"
            )));
        }
        Ok(())
    }
}

fn is_capturing(stream: &CudaStream) -> Result<bool> {
    let status = stream
        .capture_status()
        .map_err(driver_error("cuStreamIsCapturing"))?;
    Ok(status != cudarc::driver::sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE)
}

/// `Ok` when `ctx`, the context of the stream or buffer `what`, is `own`.
pub(crate) fn check_same_context(
    own: &CudaContext,
    ctx: &CudaContext,
    what: &'static str,
) -> Result<()> {
    if ctx != own {
        return Err(Error::OfAnotherContext {
            what,
            its_device: ctx.ordinal(),
            gpu_device: own.ordinal(),
        });
    }
    Ok(())
}

/// `Ok` when the device buffer `what` was allocated in context `own`.
pub(crate) fn check_buffer_context<T>(
    own: &CudaContext,
    buffer: &impl DeviceSlice<T>,
    what: &'static str,
) -> Result<()> {
    check_same_context(own, buffer.stream().context(), what)
}

/// Refuses `what` on a stream under capture while cudarc tracks events
/// (`is_managing_stream_synchronization`): every buffer access would then
/// wait on an event recorded outside the capture, which invalidates it,
/// and cudarc would report that only at some later, unrelated call. Without
/// tracking nothing is checked, and a capture costs no driver call here.
pub(crate) fn check_capturable(stream: &CudaStream, what: &str) -> Result<()> {
    if stream.context().is_managing_stream_synchronization() && is_capturing(stream)? {
        return Err(Error::Unsupported(format!(
            "{what} while the stream is being captured into a CUDA graph with cudarc's event \
             tracking on: its waits on events recorded before the capture would invalidate \
             it; call `unsafe {{ ctx.disable_event_tracking() }}` before capturing, and order \
             the streams yourself"
        )));
    }
    Ok(())
}
