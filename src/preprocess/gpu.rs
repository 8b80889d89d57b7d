//! DHR preprocessing on a CUDA device (kernels/preprocess.cu).
//!
//! The host computes the plan and Pillow's coefficient tables exactly as the
//! CPU path does; the kernels run the same integer passes, so the output is
//! meant to equal [`Preprocessor::run`] byte for byte. Every kernel version
//! is kept, so one GPU run can compare them ([`PreprocessKernel`]).

use crate::abi::{
    NvlmFusedPreprocess, NvlmFusedTarget, NvlmIntermediate, NvlmResamplePass, NvlmTileWrite,
};
use crate::cuda::{Gpu, KernelModule, allow_dynamic_smem, driver_error};
use crate::dtype::{Dtype, TensorElement};
use crate::error::{Error, Result};
use crate::preprocess::coeffs::AxisCoefficients;
use crate::preprocess::cpu::{Passes, PillowVersion, normalization_tables};
use crate::preprocess::{ImageView, PixelFormat, Preprocessor, TilePlan, check_image_size};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaEvent, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig,
    PinnedHostSlice, PushKernelArg,
};
use std::sync::{Arc, Mutex};

/// Which preprocessing kernel runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PreprocessKernel {
    /// v1: per resize target, an optional first pass into a uint8
    /// intermediate in device memory, then a last pass writing normalised
    /// tiles; per-target table uploads and a synchronize per target.
    TwoPassV1,
    /// v2: one launch per image for both targets and both passes, the
    /// intermediate staged in shared memory, all tables in one copy. The
    /// default until a GPU run has measured v3 against it.
    #[default]
    FusedV2,
    /// v3: v2 whose first pass reads the image from shared memory, where
    /// each chunk's input region is copied first (a target whose window is
    /// too wide to stage in 64 KiB, scales above ~400, runs v2's first pass).
    StagedV3,
    /// v4: v3 whose first pass, horizontal first, reads four taps' bytes a
    /// word and sums them with `dp4a` on the weights' byte planes
    /// (vertical-first targets run v3's code).
    StagedDp4aV4,
}

impl PreprocessKernel {
    pub const ALL: [PreprocessKernel; 4] = [
        PreprocessKernel::TwoPassV1,
        PreprocessKernel::FusedV2,
        PreprocessKernel::StagedV3,
        PreprocessKernel::StagedDp4aV4,
    ];

    /// A short name, used in benchmark ids.
    pub fn name(self) -> &'static str {
        match self {
            PreprocessKernel::TwoPassV1 => "v1",
            PreprocessKernel::FusedV2 => "v2",
            PreprocessKernel::StagedV3 => "v3",
            PreprocessKernel::StagedDp4aV4 => "v4",
        }
    }
}

/// An image in device memory, laid out as the [`ImageView`] it was copied from.
pub struct DeviceImage {
    data: CudaSlice<u8>,
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
}

impl DeviceImage {
    /// Copies the bytes `image` spans to the device (queued on the GPU's stream).
    pub fn upload(gpu: &Gpu, image: &ImageView<'_>) -> Result<DeviceImage> {
        let data = gpu
            .stream()
            .clone_htod(image.data())
            .map_err(driver_error("copy image to device"))?;
        Ok(DeviceImage {
            data,
            width: image.width(),
            height: image.height(),
            stride: image.stride(),
            format: image.format(),
        })
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn format(&self) -> PixelFormat {
        self.format
    }
}

/// A tightly packed image in page-locked host memory, for a decoder to
/// write into directly: [`CudaPreprocessor::run_pinned_batch_into`] copies
/// it to the device by DMA, with no CPU copy. The memory is cached (not
/// write-combined), so a decoder may read back what it wrote.
pub struct PinnedImage {
    bytes: PinnedHostSlice<u8>,
    /// Recorded after each copy out of `bytes`; the host waits for it
    /// before writing or freeing them. The crate's own event, not cudarc's:
    /// cudarc records its pinned slices' events only while it tracks streams.
    copied: CudaEvent,
    width: u32,
    height: u32,
    format: PixelFormat,
}

impl PinnedImage {
    /// A zeroed `width` × `height` image of `format`, its rows
    /// `width × bytes_per_pixel` bytes apart.
    pub fn new(gpu: &Gpu, width: u32, height: u32, format: PixelFormat) -> Result<PinnedImage> {
        check_image_size(width, height)?;
        // At most 2^28 pixels of 4 bytes: no overflow.
        let len = width as usize * height as usize * format.bytes_per_pixel();
        // SAFETY: the allocation is zeroed below, before anything reads it.
        let mut bytes = unsafe { gpu.context().alloc_pinned_with_flags::<u8>(len, 0) }
            .map_err(driver_error("alloc pinned image"))?;
        let ptr = bytes.as_mut_ptr().map_err(driver_error("pinned image"))?;
        // SAFETY: `ptr` points to `len` bytes this function owns.
        unsafe { std::ptr::write_bytes(ptr, 0, len) };
        let copied = gpu
            .context()
            .new_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
            .map_err(driver_error("create event"))?;
        Ok(PinnedImage {
            bytes,
            copied,
            width,
            height,
            format,
        })
    }

    /// The pixel bytes, row after row, once any copy out of them still
    /// queued has finished.
    pub fn bytes_mut(&mut self) -> Result<&mut [u8]> {
        self.wait_for_copies()?;
        self.bytes
            .as_mut_slice()
            .map_err(driver_error("wait for the pinned image's copy"))
    }

    /// The image as a view (for the CPU path, say), once any copy out of
    /// it still queued has finished.
    pub fn view(&self) -> Result<ImageView<'_>> {
        self.wait_for_copies()?;
        let bytes = self
            .bytes
            .as_slice()
            .map_err(driver_error("wait for the pinned image's copy"))?;
        ImageView::packed(bytes, self.width, self.height, self.format)
    }

    pub fn width(&self) -> u32 {
        self.width
    }

    pub fn height(&self) -> u32 {
        self.height
    }

    pub fn format(&self) -> PixelFormat {
        self.format
    }

    fn row_bytes(&self) -> usize {
        self.width as usize * self.format.bytes_per_pixel()
    }

    fn wait_for_copies(&self) -> Result<()> {
        self.copied
            .synchronize()
            .map_err(driver_error("wait for the pinned image's copy"))
    }
}

impl Drop for PinnedImage {
    /// The page-locked memory may be freed only once no copy reads it.
    fn drop(&mut self) {
        let _ = self.copied.synchronize();
    }
}

/// [`Preprocessor`]'s work on a GPU.
///
/// v2–v4 keep the coefficient tables of the last 8 image shapes (size,
/// stride, format, dtype; at most 32 MiB) on the device, so that an image
/// of a shape met before is queued without the host's table building,
/// which takes longer than the kernel (100–350 µs on one CPU core at
/// NVLM-D's sizes). They are freed with the preprocessor.
pub struct CudaPreprocessor {
    pub preprocessor: Preprocessor,
    pub kernel: PreprocessKernel,
    gpu: Arc<Gpu>,
    /// [`CudaPreprocessor::run_batch_into`]'s buffers, made on first use.
    staging: Mutex<Option<Staging>>,
    /// v2–v4's tables for the image shapes met most recently.
    launches: Mutex<LaunchCache<CudaSlice<u32>>>,
}

impl CudaPreprocessor {
    /// A preprocessor running the default kernel ([`PreprocessKernel::FusedV2`]).
    pub fn new(preprocessor: Preprocessor, gpu: Arc<Gpu>) -> Self {
        CudaPreprocessor {
            preprocessor,
            kernel: PreprocessKernel::default(),
            gpu,
            staging: Mutex::new(None),
            launches: Mutex::new(LaunchCache::default()),
        }
    }

    pub fn with_kernel(self, kernel: PreprocessKernel) -> Self {
        CudaPreprocessor { kernel, ..self }
    }

    /// Copies `image` (host memory) to the device, preprocesses it and
    /// returns the plan and the `[T, 3, tile, tile]` tensor on the device.
    pub fn run<T: TensorElement + DeviceRepr>(
        &self,
        image: &ImageView<'_>,
    ) -> Result<(TilePlan, CudaSlice<T>)> {
        let plan = self.preprocessor.plan(image.width(), image.height())?;
        // SAFETY: every element is written by run_into before it returns Ok.
        let mut out = unsafe { self.gpu.stream().alloc::<T>(plan.tensor_len()) }
            .map_err(driver_error("alloc output"))?;
        self.run_into(image, &plan, &mut out)?;
        Ok((plan, out))
    }

    /// As [`Preprocessor::run_into`] for a host image, into a device buffer
    /// of exactly `plan.tensor_len()` elements. The work is queued on the
    /// GPU's stream: later work on that stream (a copy back, say) sees the
    /// result.
    pub fn run_into<T: TensorElement + DeviceRepr>(
        &self,
        image: &ImageView<'_>,
        plan: &TilePlan,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.check(image.width(), image.height(), plan, out)?;
        let device_image = DeviceImage::upload(&self.gpu, image)?;
        self.run_device_into(&device_image, plan, out)
    }

    /// Preprocesses several host images, `outs[i]` being image i's tensor
    /// (exactly its plan's `tensor_len()` elements). Each image goes through
    /// one of two pinned staging buffers and is copied on a second stream,
    /// so the copy of image i+1 overlaps the kernel of image i. Every check
    /// runs before any copy. Returns the plans; the work is queued on the
    /// GPU's stream when it returns.
    pub fn run_batch_into<T: TensorElement + DeviceRepr>(
        &self,
        images: &[ImageView<'_>],
        outs: &mut [CudaSlice<T>],
    ) -> Result<Vec<TilePlan>> {
        let images: Vec<HostImage<'_>> = images.iter().map(HostImage::Pageable).collect();
        self.run_staged_batch(&images, outs)
    }

    /// As [`CudaPreprocessor::run_batch_into`] for images the caller wrote
    /// into page-locked memory: each is copied to the device by DMA with no
    /// CPU copy, overlapping the previous image's kernel. An image may be
    /// rewritten as soon as [`PinnedImage::bytes_mut`] returns, which waits
    /// for its copy.
    pub fn run_pinned_batch_into<T: TensorElement + DeviceRepr>(
        &self,
        images: &[&PinnedImage],
        outs: &mut [CudaSlice<T>],
    ) -> Result<Vec<TilePlan>> {
        let images: Vec<HostImage<'_>> = images.iter().map(|i| HostImage::Pinned(i)).collect();
        self.run_staged_batch(&images, outs)
    }

    fn run_staged_batch<T: TensorElement + DeviceRepr>(
        &self,
        images: &[HostImage<'_>],
        outs: &mut [CudaSlice<T>],
    ) -> Result<Vec<TilePlan>> {
        if images.len() != outs.len() {
            return Err(Error::InvalidShape(format!(
                "{} images but {} output tensors",
                images.len(),
                outs.len()
            )));
        }
        let plans = images
            .iter()
            .zip(outs.iter())
            .map(|(image, out)| {
                if let HostImage::Pinned(pinned) = image {
                    let ctx = pinned.bytes.context();
                    if **ctx != **self.gpu.context() {
                        return Err(Error::OfAnotherContext {
                            what: "pinned image",
                            its_device: ctx.ordinal(),
                            gpu_device: self.gpu.context().ordinal(),
                        });
                    }
                }
                let (width, height) = image.size();
                let plan = self.preprocessor.plan(width, height)?;
                self.check(width, height, &plan, out)?;
                Ok(plan)
            })
            .collect::<Result<Vec<_>>>()?;
        // A panic in an earlier batch leaves the buffers reusable: each use
        // waits for the events that guard it first.
        let mut staging = self
            .staging
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if staging.is_none() {
            *staging = Some(Staging::new(&self.gpu)?);
        }
        let Staging { copy_stream, slots } = staging.as_mut().expect("made above");
        let compute = self.gpu.stream();
        for (i, ((image, plan), out)) in images.iter().zip(&plans).zip(outs.iter_mut()).enumerate()
        {
            let slot = &mut slots[i % 2];
            let len = image.len();
            slot.reserve_device(&self.gpu, len)?;
            let host: &[u8] = match image {
                HostImage::Pageable(view) => {
                    slot.reserve_host(&self.gpu, len)?;
                    // The copy out of this host buffer two images ago has finished.
                    slot.copied
                        .synchronize()
                        .map_err(driver_error("wait for staging copy"))?;
                    let host = &mut slot
                        .host
                        .as_mut()
                        .expect("reserved")
                        .as_mut_slice()
                        .map_err(driver_error("pinned staging buffer"))?[..len];
                    host.copy_from_slice(view.data());
                    host
                }
                HostImage::Pinned(pinned) => pinned
                    .bytes
                    .as_slice()
                    .map_err(driver_error("pinned image"))?,
            };
            {
                let device = slot.device.as_mut().expect("reserved");
                // The kernel that last read this device buffer has finished.
                copy_stream
                    .wait(&slot.consumed)
                    .map_err(driver_error("copy stream wait"))?;
                let (dst, _write) = device.device_ptr_mut(copy_stream);
                // SAFETY: `dst` holds at least `len` bytes (reserved). `host` is
                // page-locked, and the host writes or frees it only once the copy
                // is done: a staging buffer after `slot.copied` (synchronized
                // above before the next write, and on drop), a pinned image after
                // its own `copied`; both are recorded below.
                unsafe {
                    cudarc::driver::result::memcpy_htod_async(dst, host, copy_stream.cu_stream())
                }
                .map_err(driver_error("copy image to device"))?;
            }
            if let HostImage::Pinned(pinned) = image {
                pinned
                    .copied
                    .record(copy_stream)
                    .map_err(driver_error("record pinned image copy"))?;
            }
            slot.copied
                .record(copy_stream)
                .map_err(driver_error("record staging copy"))?;
            compute
                .wait(&slot.copied)
                .map_err(driver_error("compute stream wait"))?;
            let device = slot.device.as_ref().expect("reserved");
            let (addr, _read) = device.device_ptr(compute);
            let (width, height) = image.size();
            let source = Source {
                addr,
                width,
                height,
                stride: image.stride(),
                format: image.format(),
            };
            self.queue(source, plan, out)?;
            slot.consumed
                .record(compute)
                .map_err(driver_error("record staging use"))?;
        }
        Ok(plans)
    }

    /// As [`CudaPreprocessor::run_into`] for an image already on the device.
    pub fn run_device_into<T: TensorElement + DeviceRepr>(
        &self,
        image: &DeviceImage,
        plan: &TilePlan,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        self.check(image.width, image.height, plan, out)?;
        // The guard lives until the work is queued, so cudarc records the
        // kernels' reads for work on other streams.
        let (addr, _read) = image.data.device_ptr(self.gpu.stream());
        let source = Source {
            addr,
            width: image.width,
            height: image.height,
            stride: image.stride,
            format: image.format,
        };
        self.queue(source, plan, out)
    }

    /// Queues the preprocessing of `source` (checked against `plan` and
    /// `out` by the caller) on the GPU's stream.
    fn queue<T: TensorElement + DeviceRepr>(
        &self,
        source: Source,
        plan: &TilePlan,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        match self.kernel {
            PreprocessKernel::TwoPassV1 => self.run_v1(source, plan, out),
            PreprocessKernel::FusedV2
            | PreprocessKernel::StagedV3
            | PreprocessKernel::StagedDp4aV4 => self.run_fused(source, plan, out),
        }
    }

    fn launches(&self) -> std::sync::MutexGuard<'_, LaunchCache<CudaSlice<u32>>> {
        self.launches
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn check<T>(&self, width: u32, height: u32, plan: &TilePlan, out: &CudaSlice<T>) -> Result<()> {
        self.preprocessor.check_run(
            (width, height),
            plan,
            out.len(),
            "device output tensor (elements, must be exact)",
        )?;
        self.gpu.check_not_capturing("preprocessing")
    }

    /// v2 or v3: one launch.
    fn run_fused<T: TensorElement + DeviceRepr>(
        &self,
        source: Source,
        plan: &TilePlan,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let stream = self.gpu.stream();
        let key = LaunchKey {
            kernel: self.kernel,
            dtype: T::DTYPE,
            preprocessor: self.preprocessor,
            size: (source.width, source.height),
            stride: source.stride,
            format: source.format,
        };
        let kept = self.launches().get(&key);
        let cached = match kept {
            Some(cached) => cached,
            // Built without the lock: other threads' images need not wait.
            None => {
                let mut launch = FusedLaunch::new::<T>(
                    self.kernel,
                    &self.preprocessor,
                    plan,
                    (source.width, source.height),
                    source.stride,
                    source.format,
                );
                // Every table, one copy, on the stream the kernels run on;
                // an evicted blob is freed in that stream's order too.
                let tables = stream
                    .clone_htod(&launch.blob)
                    .map_err(driver_error("copy tables"))?;
                let bytes = launch.table_bytes();
                launch.blob = Vec::new();
                self.launches().insert(CachedLaunch {
                    key,
                    launch,
                    tables,
                    bytes,
                })
            }
        };
        let launch = &cached.launch;
        // The guards live until after the launch, so cudarc records the
        // kernel's reads and writes for work on other streams.
        let (blob_addr, _blob_read) = cached.tables.device_ptr(stream);
        let (out_addr, _out_write) = out.device_ptr_mut(stream);
        let params = launch.relocated(blob_addr, source.addr, out_addr);
        let f = self.gpu.function(KernelModule::Preprocess, launch.entry)?;
        let config = launch.config();
        allow_dynamic_smem(&f, config.shared_mem_bytes)?;
        // SAFETY: the params describe live device buffers: the image (the
        // caller's), the tensor of plan.tensor_len() elements (checked), and
        // the tables, whose indices stay inside the image (AxisCoefficients'
        // contract). One stream orders the copies, the kernel and the frees.
        unsafe { stream.launch_builder(&f).arg(&params).launch(config) }
            .map_err(driver_error(launch.entry))?;
        Ok(())
    }

    fn run_v1<T: TensorElement + DeviceRepr>(
        &self,
        source: Source,
        plan: &TilePlan,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let pre = &self.preprocessor;
        let stream = self.gpu.stream();
        let tables = normalization_tables::<T>(pre.normalization.mean, pre.normalization.std);
        let flat: Vec<T> = tables.iter().flatten().copied().collect();
        let table = stream
            .clone_htod(&flat)
            .map_err(driver_error("copy normalisation table"))?;
        for target in Target::of(plan) {
            self.resize_into_tiles_v1(source, target, &table, out)?;
        }
        Ok(())
    }

    fn resize_into_tiles_v1<T: TensorElement + DeviceRepr>(
        &self,
        image: Source,
        target: Target,
        table: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let stream = self.gpu.stream();
        let resize = TwoPassV1::new(
            self.preprocessor.pillow,
            (image.width, image.height),
            target,
        );
        let first_tables = resize
            .first
            .as_ref()
            .map(|pass| DeviceAxis::upload(&pass.axis, stream))
            .transpose()?;
        let last_tables = DeviceAxis::upload(&resize.last.axis, stream)?;
        let intermediate = resize
            .intermediate_len(image.format)
            .map(|len| {
                stream
                    .alloc_zeros::<u8>(len)
                    .map_err(driver_error("alloc intermediate"))
            })
            .transpose()?;
        // The guard lives until after the launches, so cudarc records the
        // kernel's write (and makes it wait for readers on other streams).
        let (out_addr, _out_write) = out.device_ptr_mut(stream);
        let launches = resize.params(
            &image,
            &V1Buffers {
                first_tables: first_tables
                    .as_ref()
                    .map_or([0; 3], |t| t.addresses(stream)),
                last_tables: last_tables.addresses(stream),
                intermediate: intermediate.as_ref().map_or(0, |b| device_addr(b, stream)),
                out: out_addr,
                table: device_addr(table, stream),
            },
            T::DTYPE.size_bytes() as u32,
            self.preprocessor.config.tile_size,
        );
        if let Some(params) = &launches.intermediate {
            let f = self
                .gpu
                .function(KernelModule::Preprocess, "resample_to_intermediate")?;
            // SAFETY: the params describe live device buffers of the sizes
            // the kernel indexes (the image checked on the host, the tables
            // and intermediate made for this resize); one stream orders it.
            unsafe {
                stream
                    .launch_builder(&f)
                    .arg(params)
                    .launch(launch_config(&params.pass))
            }
            .map_err(driver_error("resample_to_intermediate"))?;
        }
        let f = self
            .gpu
            .function(KernelModule::Preprocess, "resample_to_tiles")?;
        // SAFETY: as above; the tensor holds every tile this target writes.
        unsafe {
            stream
                .launch_builder(&f)
                .arg(&launches.tiles)
                .launch(launch_config(&launches.tiles.pass))
        }
        .map_err(driver_error("resample_to_tiles"))?;
        // v1 as first written: the tables and the intermediate are dropped
        // only after the kernels finish.
        stream.synchronize().map_err(driver_error("synchronize"))?;
        drop((first_tables, last_tables, intermediate));
        Ok(())
    }
}

/// Two device buffers, the pinned host buffers pageable images are copied
/// through first, and the stream that copies into the device buffers, for
/// [`CudaPreprocessor::run_batch_into`] and
/// [`CudaPreprocessor::run_pinned_batch_into`] (whose images need no host
/// buffer).
struct Staging {
    copy_stream: Arc<CudaStream>,
    slots: [StagingSlot; 2],
}

struct StagingSlot {
    host: Option<PinnedHostSlice<u8>>,
    device: Option<CudaSlice<u8>>,
    /// Recorded on the copy stream after the copy into `device` (out of
    /// `host`, or out of the caller's pinned image).
    copied: CudaEvent,
    /// Recorded on the GPU's stream after the work that reads `device`.
    consumed: CudaEvent,
}

impl Staging {
    fn new(gpu: &Gpu) -> Result<Staging> {
        let ctx = gpu.context();
        // The host waits for `copied` before it rewrites a pinned buffer:
        // blocking, so the wait sleeps instead of spinning a core a decoder
        // could use. `consumed` orders the streams (the host waits on it
        // only before replacing a buffer).
        let event = |flags| {
            ctx.new_event(Some(flags))
                .map_err(driver_error("create event"))
        };
        let slot = || {
            Ok(StagingSlot {
                host: None,
                device: None,
                copied: event(CUevent_flags::CU_EVENT_BLOCKING_SYNC)?,
                consumed: event(CUevent_flags::CU_EVENT_DISABLE_TIMING)?,
            })
        };
        Ok(Staging {
            copy_stream: ctx
                .new_stream()
                .map_err(driver_error("create copy stream"))?,
            slots: [slot()?, slot()?],
        })
    }
}

impl Drop for Staging {
    /// The pinned buffers may be freed only once no copy reads them.
    fn drop(&mut self) {
        for slot in &self.slots {
            let _ = slot.copied.synchronize();
            let _ = slot.consumed.synchronize();
        }
    }
}

impl StagingSlot {
    /// Makes the device buffer hold at least `len` bytes.
    fn reserve_device(&mut self, gpu: &Gpu, len: usize) -> Result<()> {
        if self.device.as_ref().is_some_and(|d| d.len() >= len) {
            return Ok(());
        }
        // The old buffer may still be in use.
        self.copied
            .synchronize()
            .map_err(driver_error("wait for staging copy"))?;
        self.consumed
            .synchronize()
            .map_err(driver_error("wait for staging use"))?;
        // SAFETY: the first `len` bytes are copied in before a kernel reads them.
        self.device = Some(
            unsafe { gpu.stream().alloc::<u8>(len.next_multiple_of(1 << 20)) }
                .map_err(driver_error("alloc staging device buffer"))?,
        );
        // The allocation is ordered on the GPU's stream; the copy stream
        // waits for `consumed` before its first copy into it.
        self.consumed
            .record(gpu.stream())
            .map_err(driver_error("record staging allocation"))?;
        Ok(())
    }

    /// Makes the pinned host buffer hold at least `len` bytes.
    fn reserve_host(&mut self, gpu: &Gpu, len: usize) -> Result<()> {
        if self.host.as_ref().is_some_and(|h| h.len() >= len) {
            return Ok(());
        }
        // The old buffer may still be in use.
        self.copied
            .synchronize()
            .map_err(driver_error("wait for staging copy"))?;
        // SAFETY: the first `len` bytes are written before the copy reads them.
        self.host = Some(
            unsafe {
                gpu.context()
                    .alloc_pinned::<u8>(len.next_multiple_of(1 << 20))
            }
            .map_err(driver_error("alloc pinned staging buffer"))?,
        );
        Ok(())
    }
}

/// A host image for a staged batch: pageable bytes go through a pinned
/// staging buffer (a CPU copy), pinned ones straight to the device.
enum HostImage<'a> {
    Pageable(&'a ImageView<'a>),
    Pinned(&'a PinnedImage),
}

impl HostImage<'_> {
    fn size(&self) -> (u32, u32) {
        match self {
            HostImage::Pageable(v) => (v.width(), v.height()),
            HostImage::Pinned(p) => (p.width, p.height),
        }
    }

    fn stride(&self) -> usize {
        match self {
            HostImage::Pageable(v) => v.stride(),
            HostImage::Pinned(p) => p.row_bytes(),
        }
    }

    fn format(&self) -> PixelFormat {
        match self {
            HostImage::Pageable(v) => v.format(),
            HostImage::Pinned(p) => p.format,
        }
    }

    /// The bytes the copy carries.
    fn len(&self) -> usize {
        match self {
            HostImage::Pageable(v) => v.data().len(),
            HostImage::Pinned(p) => p.bytes.len(),
        }
    }
}

/// An image's device address and layout.
#[derive(Debug, Clone, Copy)]
struct Source {
    addr: u64,
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormat,
}

/// One resize target of a plan: the grid's resized image or the thumbnail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Target {
    size: (u32, u32),
    tiles_across: u32,
    first_output: u32,
}

impl Target {
    fn of(plan: &TilePlan) -> Vec<Target> {
        let t = plan.tile_size;
        let mut targets = vec![Target {
            size: plan.resized,
            tiles_across: plan.grid.cols,
            first_output: 0,
        }];
        if plan.thumbnail {
            targets.push(Target {
                size: (t, t),
                tiles_across: 1,
                first_output: plan.tiles.len() as u32,
            });
        }
        targets
    }
}

/// Side of a v2/v3 patch in output pixels, and its threads (kernels/preprocess.cu).
const PATCH: u32 = 32;
const FUSED_THREADS: u32 = 256;
/// v2's shared memory per block: the staged intermediate of one chunk of a
/// patch's window (256 samples of RGB, 768 of grey).
const SLAB_BYTES: u32 = 24 * 1024;
/// v3's shared memory per block, the slab and the staged input: two blocks
/// (as many as the registers allow) fit an SM of sm_80 (164 KiB) or sm_90.
const STAGED_SMEM_BYTES: u32 = 64 * 1024;

/// Bytes after the last staged row, for v4's first pass. Its last word
/// read for a window starts at a multiple of 4 no further than the window's
/// end + 3, so at most at `round_up4(window)` ≤ the pitch: it ends at most 4
/// bytes past its row. Those bytes are the next row's, or for the last row
/// this slack's (8, a word to spare); all meet zero weights.
const STAGE_READ_SLACK: u64 = 8;

/// How v3 lays out one target's chunk in shared memory (the `chunk_samples`
/// and `stage_*` fields of `NvlmFusedTarget`; all zero: v2's first pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct StagedLayout {
    chunk_samples: u32,
    stage_rows: u32,
    stage_pitch: u32,
    stage_offset: u32,
}

impl StagedLayout {
    /// The largest chunk whose slab and staged input fit in `budget` bytes.
    /// Horizontal first, the staged rows are the chunk's samples (the first
    /// pass's lanes) and the pitch an odd number of words, so the lanes'
    /// byte loads fall in 32 different banks; so is the slab's row pitch,
    /// `32 C + 4` bytes, which the kernel computes the same way. Vertical
    /// first, the staged rows are the patch's widest window along F and
    /// the lanes read along a row.
    fn plan(axes: &FusedAxes, channels: u32, budget: u32) -> StagedLayout {
        let window_f = widest_window(&axes.first);
        let window_s = widest_window(&axes.second);
        let layout = |n: u32| {
            if axes.vertical_first {
                StagedLayout {
                    chunk_samples: n,
                    stage_rows: window_f,
                    stage_pitch: n.next_multiple_of(4),
                    stage_offset: (n * PATCH * channels).next_multiple_of(16),
                }
            } else {
                let mut pitch = window_f.next_multiple_of(4);
                if (pitch / 4).is_multiple_of(2) {
                    pitch += 4;
                }
                StagedLayout {
                    chunk_samples: n,
                    stage_rows: n,
                    stage_pitch: pitch,
                    stage_offset: (n * (PATCH * channels + 4)).next_multiple_of(16),
                }
            }
        };
        // Per sample each order needs a slab row and a staged row of the
        // window, give or take the padding: start there and shrink to fit.
        let per_sample = u64::from(channels) * u64::from(PATCH + 4 + window_f);
        let mut n = (u64::from(budget) / per_sample).min(u64::from(window_s)) as u32;
        while n > 0 && layout(n).bytes(channels) > u64::from(budget) {
            n -= 1;
        }
        if n == 0 {
            return StagedLayout::default();
        }
        layout(n)
    }

    /// Shared memory the layout uses, with 8 bytes after the staged rows
    /// that v4's word reads may touch (times zero weights).
    fn bytes(&self, channels: u32) -> u64 {
        u64::from(self.stage_offset)
            + u64::from(channels * self.stage_rows) * u64::from(self.stage_pitch)
            + STAGE_READ_SLACK
    }
}

/// The most input samples the outputs of one 32-output patch read along
/// `axis` (first and end are monotone in the output).
fn widest_window(axis: &AxisCoefficients) -> u32 {
    (0..axis.out_size)
        .step_by(PATCH as usize)
        .map(|o0| {
            let last = (o0 + PATCH).min(axis.out_size) as usize - 1;
            axis.first[last] + axis.count[last] - axis.first[o0 as usize]
        })
        .max()
        .unwrap_or(0)
}

/// What a fused launch's tables depend on: the same key, the same blob.
/// The plan is the preprocessor's for the size (`check` refuses any other).
#[derive(Debug, Clone, Copy, PartialEq)]
struct LaunchKey {
    kernel: PreprocessKernel,
    dtype: Dtype,
    preprocessor: Preprocessor,
    size: (u32, u32),
    stride: usize,
    format: PixelFormat,
}

/// Launches [`LaunchCache`] keeps, and the most bytes of tables they hold.
const CACHED_LAUNCHES: usize = 8;
const CACHED_LAUNCH_BYTES: usize = 32 << 20;

/// A fused launch (its host blob emptied) and its tables, uploaded (`B`:
/// the device buffer), `bytes` long.
struct CachedLaunch<B> {
    key: LaunchKey,
    launch: FusedLaunch,
    tables: B,
    bytes: usize,
}

/// The fused launches of the image shapes met most recently, their tables
/// kept on the device: an image of a shape met before costs its checks and
/// one launch, not the host's table building (longer than the kernel
/// itself at NVLM-D's sizes; PERF.md) and an upload. Least recently used
/// first; entries go from the front past [`CACHED_LAUNCHES`] or
/// [`CACHED_LAUNCH_BYTES`], and a launch whose tables alone exceed the
/// bytes is used once and not kept.
struct LaunchCache<B> {
    entries: std::collections::VecDeque<Arc<CachedLaunch<B>>>,
}

impl<B> Default for LaunchCache<B> {
    fn default() -> Self {
        LaunchCache {
            entries: Default::default(),
        }
    }
}

impl<B> LaunchCache<B> {
    /// `key`'s entry, now the most recently used.
    fn get(&mut self, key: &LaunchKey) -> Option<Arc<CachedLaunch<B>>> {
        let i = self.entries.iter().position(|e| e.key == *key)?;
        let entry = self.entries.remove(i).expect("found");
        self.entries.push_back(entry.clone());
        Some(entry)
    }

    /// Keeps `entry` (unless its key was kept meanwhile, by another
    /// thread: then that entry) and returns what is kept for its key.
    fn insert(&mut self, entry: CachedLaunch<B>) -> Arc<CachedLaunch<B>> {
        if let Some(kept) = self.get(&entry.key) {
            return kept;
        }
        let entry = Arc::new(entry);
        if entry.bytes <= CACHED_LAUNCH_BYTES {
            self.entries.push_back(entry.clone());
            while self.entries.len() > CACHED_LAUNCHES
                || self.entries.iter().map(|e| e.bytes).sum::<usize>() > CACHED_LAUNCH_BYTES
            {
                self.entries.pop_front();
            }
        }
        entry
    }
}

/// The host side of one v2 or v3 launch: every table in one blob of 32-bit
/// words, and the parameters with addresses as byte offsets into the blob
/// (the image and output addresses zero) until [`FusedLaunch::relocated`].
struct FusedLaunch {
    entry: &'static str,
    blob: Vec<u32>,
    params: NvlmFusedPreprocess,
    blocks: u32,
}

impl FusedLaunch {
    /// `kernel`: [`PreprocessKernel::FusedV2`], [`PreprocessKernel::StagedV3`]
    /// or [`PreprocessKernel::StagedDp4aV4`].
    fn new<T: TensorElement>(
        kernel: PreprocessKernel,
        pre: &Preprocessor,
        plan: &TilePlan,
        (width, height): (u32, u32),
        stride: usize,
        format: PixelFormat,
    ) -> FusedLaunch {
        let (staged, word_taps, entry) = match kernel {
            PreprocessKernel::FusedV2 => (false, false, "preprocess_fused"),
            PreprocessKernel::StagedV3 => (true, false, "preprocess_staged"),
            PreprocessKernel::StagedDp4aV4 => (true, true, "preprocess_staged_dp4a"),
            PreprocessKernel::TwoPassV1 => unreachable!("v1 is not a fused launch"),
        };
        let tables = normalization_tables::<T>(pre.normalization.mean, pre.normalization.std);
        let table_bytes: Vec<u8> = tables
            .iter()
            .flat_map(|t| bytemuck::cast_slice::<T, u8>(t).iter().copied())
            .collect();
        let mut blob = Blob::default();
        let table = blob.push(&table_bytes);
        let mut params = NvlmFusedPreprocess {
            table,
            src_stride: stride as u64,
            src_bpp: format.bytes_per_pixel() as u32,
            channels: format.colour_channels() as u32,
            elem_bytes: T::DTYPE.size_bytes() as u32,
            tile_size: plan.tile_size,
            smem_bytes: if staged {
                STAGED_SMEM_BYTES
            } else {
                SLAB_BYTES
            },
            ..Default::default()
        };
        let mut blocks = 0u32;
        let targets = Target::of(plan);
        params.num_targets = targets.len() as u32;
        for (slot, target) in params.target.iter_mut().zip(&targets) {
            let (out_w, out_h) = target.size;
            let axes = FusedAxes::new(pre.pillow, (width, height), target.size);
            let stage = if staged {
                StagedLayout::plan(&axes, params.channels, STAGED_SMEM_BYTES)
            } else {
                StagedLayout::default()
            };
            // v4's staged horizontal-first pass reads its weights as byte
            // planes (kernels/preprocess.cu, first_pass_words).
            let coeffs_f = if word_taps && stage.chunk_samples != 0 && !axes.vertical_first {
                byte_planes(&axes.first)
            } else {
                tap_major(&axes.first)
            };
            *slot = NvlmFusedTarget {
                first_f: blob.push_words(&axes.first.first),
                count_f: blob.push_words(&axes.first.count),
                coeffs_f: blob.push_words(&coeffs_f),
                first_s: blob.push_words(&axes.second.first),
                count_s: blob.push_words(&axes.second.count),
                coeffs_s: blob.push_words(bytemuck::cast_slice(&axes.second.coeffs)),
                taps_f: axes.first.taps,
                taps_s: axes.second.taps,
                out_width: out_w,
                out_height: out_h,
                vertical_first: u32::from(axes.vertical_first),
                first_block: blocks,
                tiles_across: target.tiles_across,
                first_output: target.first_output,
                chunk_samples: stage.chunk_samples,
                stage_rows: stage.stage_rows,
                stage_pitch: stage.stage_pitch,
                stage_offset: stage.stage_offset,
            };
            blocks += out_w.div_ceil(PATCH) * out_h.div_ceil(PATCH);
        }
        FusedLaunch {
            entry,
            blob: blob.words,
            params,
            blocks,
        }
    }

    /// The size of the tables on the device.
    fn table_bytes(&self) -> usize {
        self.blob.len() * size_of::<u32>()
    }

    /// One block of 256 threads per patch.
    fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks, 1, 1),
            block_dim: (FUSED_THREADS, 1, 1),
            shared_mem_bytes: self.params.smem_bytes,
        }
    }

    /// The parameters with the blob's offsets turned into addresses.
    fn relocated(&self, blob: u64, src: u64, out: u64) -> NvlmFusedPreprocess {
        let mut p = self.params;
        p.src = src;
        p.out = out;
        p.table += blob;
        for t in p.target.iter_mut().take(p.num_targets as usize) {
            for field in [
                &mut t.first_f,
                &mut t.count_f,
                &mut t.coeffs_f,
                &mut t.first_s,
                &mut t.count_s,
                &mut t.coeffs_s,
            ] {
                *field += blob;
            }
        }
        p
    }
}

/// `axis.coeffs` as v4's first pass reads them: per output, its taps in
/// groups of four (past its count, zero weights), each group as four words
/// where word `j` holds byte `j` of the four weights (lowest tap in the
/// lowest byte), at `[(4 group + j) * out_size + output]`: a warp's lanes
/// share one output, so each load is one broadcast.
fn byte_planes(axis: &AxisCoefficients) -> Vec<u32> {
    let (taps, out) = (axis.taps as usize, axis.out_size as usize);
    let groups = taps.div_ceil(4);
    let mut words = vec![0u32; 4 * groups * out];
    for (o, row) in axis.coeffs.chunks_exact(taps).enumerate() {
        for (t, &k) in row.iter().enumerate().take(axis.count[o] as usize) {
            let (group, lane) = (t / 4, t % 4);
            for j in 0..4 {
                let byte = (k as u32 >> (8 * j)) & 0xFF;
                words[(4 * group + j) * out + o] |= byte << (8 * lane);
            }
        }
    }
    words
}

/// `axis.coeffs` transposed to `[taps][out_size]`, as 32-bit words: the
/// first pass's threads take consecutive outputs, so each tap's weights are
/// one contiguous read.
fn tap_major(axis: &AxisCoefficients) -> Vec<u32> {
    let (taps, out) = (axis.taps as usize, axis.out_size as usize);
    let mut words = vec![0u32; taps * out];
    for (o, row) in axis.coeffs.chunks_exact(taps).enumerate() {
        for (t, &k) in row.iter().enumerate() {
            words[t * out + o] = k as u32;
        }
    }
    words
}

/// The tables of one target for v2: the first pass's axis, the second's,
/// and which is vertical. A pass Pillow skips becomes an identity table.
struct FusedAxes {
    first: AxisCoefficients,
    second: AxisCoefficients,
    vertical_first: bool,
}

impl FusedAxes {
    fn new(pillow: PillowVersion, (in_w, in_h): (u32, u32), (out_w, out_h): (u32, u32)) -> Self {
        let horizontal = || AxisCoefficients::bicubic(in_w, out_w);
        let vertical = || AxisCoefficients::bicubic(in_h, out_h);
        let (first, second, vertical_first) = match pillow.passes(in_w, in_h, out_w, out_h) {
            Passes::HorizontalThenVertical => (horizontal(), vertical(), false),
            Passes::VerticalThenHorizontal => (vertical(), horizontal(), true),
            Passes::Horizontal => (AxisCoefficients::identity(in_h), horizontal(), true),
            Passes::Vertical => (AxisCoefficients::identity(in_w), vertical(), false),
            Passes::Copy => (
                AxisCoefficients::identity(in_w),
                AxisCoefficients::identity(in_h),
                false,
            ),
        };
        FusedAxes {
            first,
            second,
            vertical_first,
        }
    }
}

/// 32-bit words, each array starting on a 16-byte boundary.
#[derive(Default)]
struct Blob {
    words: Vec<u32>,
}

impl Blob {
    /// Appends `words`; returns their byte offset.
    fn push_words(&mut self, words: &[u32]) -> u64 {
        let offset = (self.words.len() * 4) as u64;
        self.words.extend_from_slice(words);
        self.words.resize(self.words.len().next_multiple_of(4), 0);
        offset
    }

    /// Appends `bytes` (zero-padded to whole words); returns their byte offset.
    fn push(&mut self, bytes: &[u8]) -> u64 {
        let words: Vec<u32> = bytes
            .chunks(4)
            .map(|c| {
                let mut w = [0u8; 4];
                w[..c.len()].copy_from_slice(c);
                u32::from_le_bytes(w)
            })
            .collect();
        self.push_words(&words)
    }
}

/// One v1 resize of an image into one target's tiles, planned on the host
/// (no device involved, so the host emulation runs the same plan): a first
/// pass into a uint8 intermediate when the resize takes two, then the pass
/// that resamples, normalises and writes the tiles.
struct TwoPassV1 {
    target: Target,
    first: Option<V1Pass>,
    last: V1Pass,
}

/// One v1 pass: the axis it resamples and the size it makes.
struct V1Pass {
    axis: AxisCoefficients,
    vertical: bool,
    size: (u32, u32),
}

/// Where a v1 resize's buffers are on the device; the first pass's tables
/// and the intermediate are 0 for a one-pass resize.
struct V1Buffers {
    /// (first, count, coeffs) of each pass's axis table.
    first_tables: [u64; 3],
    last_tables: [u64; 3],
    intermediate: u64,
    out: u64,
    /// The normalisation table, `[3][256]` of the tensor's dtype.
    table: u64,
}

/// The params of a v1 resize's launches, in launch order.
struct V1Launches {
    intermediate: Option<NvlmIntermediate>,
    tiles: NvlmTileWrite,
}

impl TwoPassV1 {
    fn new(pillow: PillowVersion, (in_w, in_h): (u32, u32), target: Target) -> TwoPassV1 {
        let (out_w, out_h) = target.size;
        let pass = |vertical: bool, size| V1Pass {
            axis: if vertical {
                AxisCoefficients::bicubic(in_h, out_h)
            } else {
                AxisCoefficients::bicubic(in_w, out_w)
            },
            vertical,
            size,
        };
        let (first, last) = match pillow.passes(in_w, in_h, out_w, out_h) {
            Passes::VerticalThenHorizontal => {
                (Some(pass(true, (in_w, out_h))), pass(false, target.size))
            }
            Passes::HorizontalThenVertical => {
                (Some(pass(false, (out_w, in_h))), pass(true, target.size))
            }
            Passes::Vertical => (None, pass(true, target.size)),
            Passes::Horizontal => (None, pass(false, target.size)),
            // Pillow copies; an identity pass is exact (each weight row is
            // a single 1.0 at the centre), so the last pass can do the copy.
            Passes::Copy => (None, pass(false, target.size)),
        };
        TwoPassV1 {
            target,
            first,
            last,
        }
    }

    /// The intermediate's bytes (colour channels only), for a two-pass resize.
    fn intermediate_len(&self, format: PixelFormat) -> Option<usize> {
        self.first
            .as_ref()
            .map(|pass| pass.size.0 as usize * pass.size.1 as usize * format.colour_channels())
    }

    fn params(
        &self,
        image: &Source,
        at: &V1Buffers,
        elem_bytes: u32,
        tile_size: u32,
    ) -> V1Launches {
        let channels = image.format.colour_channels() as u32;
        let source = Plane {
            addr: image.addr,
            stride: image.stride as u64,
            width: image.width,
            height: image.height,
            bpp: image.format.bytes_per_pixel() as u32,
        };
        let intermediate = self.first.as_ref().map(|pass| NvlmIntermediate {
            pass: pass.params(&source, at.first_tables, channels),
            dst: at.intermediate,
        });
        let last_source = match &self.first {
            Some(pass) => Plane {
                addr: at.intermediate,
                stride: u64::from(pass.size.0 * channels),
                width: pass.size.0,
                height: pass.size.1,
                bpp: channels,
            },
            None => source,
        };
        V1Launches {
            intermediate,
            tiles: NvlmTileWrite {
                pass: self.last.params(&last_source, at.last_tables, channels),
                out: at.out,
                table: at.table,
                elem_bytes,
                tile_size,
                tiles_across: self.target.tiles_across,
                first_output: self.target.first_output,
            },
        }
    }
}

impl V1Pass {
    fn params(
        &self,
        src: &Plane,
        [first, count, coeffs]: [u64; 3],
        channels: u32,
    ) -> NvlmResamplePass {
        NvlmResamplePass {
            src: src.addr,
            src_stride: src.stride,
            first,
            count,
            coeffs,
            src_width: src.width,
            src_height: src.height,
            src_bpp: src.bpp,
            channels,
            dst_width: self.size.0,
            dst_height: self.size.1,
            taps: self.axis.taps,
            vertical: u32::from(self.vertical),
        }
    }
}

/// The device copy of one axis table (v1).
struct DeviceAxis {
    first: CudaSlice<u32>,
    count: CudaSlice<u32>,
    coeffs: CudaSlice<i32>,
}

impl DeviceAxis {
    fn upload(axis: &AxisCoefficients, stream: &Arc<CudaStream>) -> Result<DeviceAxis> {
        let copy = driver_error("copy table");
        Ok(DeviceAxis {
            first: stream.clone_htod(&axis.first).map_err(&copy)?,
            count: stream.clone_htod(&axis.count).map_err(&copy)?,
            coeffs: stream.clone_htod(&axis.coeffs).map_err(&copy)?,
        })
    }

    fn addresses(&self, stream: &CudaStream) -> [u64; 3] {
        [
            device_addr(&self.first, stream),
            device_addr(&self.count, stream),
            device_addr(&self.coeffs, stream),
        ]
    }
}

const BLOCK: (u32, u32) = (32, 8);
/// gridDim.y cap; the v1 kernels stride over the remaining rows.
const MAX_GRID_Y: u32 = 65535;

/// A pass's source: `height` rows of `width` pixels of `bpp` bytes.
#[derive(Clone, Copy)]
struct Plane {
    addr: u64,
    stride: u64,
    width: u32,
    height: u32,
    bpp: u32,
}

/// The address of a buffer only this stream uses (v1's tables and
/// intermediate), so no event needs recording after the launch.
fn device_addr<T>(slice: &CudaSlice<T>, stream: &CudaStream) -> u64 {
    let (addr, _sync) = slice.device_ptr(stream);
    addr
}

/// A v1 launch: one thread per pixel of the pass's destination.
fn launch_config(pass: &NvlmResamplePass) -> LaunchConfig {
    let (w, h) = (pass.dst_width, pass.dst_height);
    LaunchConfig {
        grid_dim: (w.div_ceil(BLOCK.0), h.div_ceil(BLOCK.1).min(MAX_GRID_Y), 1),
        block_dim: (BLOCK.0, BLOCK.1, 1),
        shared_mem_bytes: 0,
    }
}

#[cfg(test)]
mod tests {
    //! Without a GPU, every kernel version is checked against the CPU
    //! reference: a line-for-line Rust model of v2's `preprocess_fused` run
    //! on the launch's blob and params (the tables, the pass order, the
    //! identity tables, the patch and block layout, the chunking), and the
    //! kernels' own source (v1 to v4) compiled for the CPU with the address
    //! sanitizer (tests/host_emulation/preprocess_on_cpu.cpp: one thread
    //! per CUDA thread, __syncthreads as a barrier), which executes their
    //! indexing and shared-memory layout, and with the thread sanitizer,
    //! which checks their barriers. v1 runs the host's own plan of its
    //! launches ([`TwoPassV1`]), so its pass order and intermediate are
    //! checked with it.
    use super::*;
    use crate::abi::NvlmFusedTarget;
    use crate::host_emulation::{self, LaunchFile, Memory};
    use crate::preprocess::DhrConfig;
    use std::mem::offset_of;
    use std::path::{Path, PathBuf};

    const GROUP: u32 = 4;
    const ROUNDING: i32 = 1 << 21;

    fn clip8(acc: i32) -> u8 {
        (acc >> 22).clamp(0, 255) as u8
    }

    /// `preprocess_fused` for every block, threads run one after another
    /// between barriers. The slab is poisoned before each chunk so a read
    /// of an entry the first pass did not write shows up as a wrong byte.
    /// Returns the most chunks any patch took, horizontal-first targets
    /// then vertical-first ones.
    fn model(launch: &FusedLaunch, src: &[u8], out: &mut [f32]) -> [u32; 2] {
        let mut most_chunks = [0; 2];
        let p = &launch.params;
        let word = |offset: u64, i: u64| launch.blob[(offset / 4 + i) as usize];
        let c_n = p.channels as usize;
        let table: Vec<f32> = (0..768u64)
            .map(|i| f32::from_bits(word(p.table, i)))
            .collect();
        let mut slab = vec![0u8; p.smem_bytes as usize];
        for block in 0..launch.blocks {
            let second = p.num_targets == 2 && block >= p.target[1].first_block;
            let t = if second { p.target[1] } else { p.target[0] };
            let vf = t.vertical_first != 0;
            let patch = block - t.first_block;
            let across = t.out_width.div_ceil(PATCH);
            let (x0, y0) = ((patch % across) * PATCH, (patch / across) * PATCH);
            let (f0, s0) = if vf { (y0, x0) } else { (x0, y0) };
            let nf = PATCH.min(if vf { t.out_height } else { t.out_width } - f0);
            let ns = PATCH.min(if vf { t.out_width } else { t.out_height } - s0);
            let first_s = |s: u32| word(t.first_s, s.into());
            let count_s = |s: u32| word(t.count_s, s.into());
            let w0 = first_s(s0);
            let w1 = first_s(s0 + ns - 1) + count_s(s0 + ns - 1);
            let rows = p.smem_bytes / (PATCH * p.channels);
            let index = |s_local: u32, f_local: u32| {
                (if vf {
                    f_local * rows + s_local
                } else {
                    s_local * PATCH + f_local
                }) as usize
                    * c_n
            };
            let mut acc = vec![[[ROUNDING; 3]; GROUP as usize]; FUSED_THREADS as usize];
            let chunks = &mut most_chunks[usize::from(vf)];
            *chunks = (*chunks).max((w1 - w0).div_ceil(rows));
            let mut c0 = w0;
            while c0 < w1 {
                let n = rows.min(w1 - c0);
                slab.fill(0xA5);
                for tid in 0..FUSED_THREADS {
                    let mut i = tid;
                    while i < n * PATCH {
                        let (f_local, s_local) = if vf {
                            (i / n, i % n)
                        } else {
                            (i % PATCH, i / PATCH)
                        };
                        i += FUSED_THREADS;
                        if f_local >= nf {
                            continue;
                        }
                        let (f, s) = (f0 + f_local, c0 + s_local);
                        let start = word(t.first_f, f.into());
                        let mut a = [ROUNDING; 3];
                        for tap in 0..word(t.count_f, f.into()) {
                            let out_f = if vf { t.out_height } else { t.out_width };
                            let w =
                                word(t.coeffs_f, u64::from(tap) * u64::from(out_f) + u64::from(f))
                                    as i32;
                            let (row, col) = if vf {
                                (start + tap, s)
                            } else {
                                (s, start + tap)
                            };
                            let px =
                                row as usize * p.src_stride as usize + (col * p.src_bpp) as usize;
                            for c in 0..c_n {
                                a[c] += i32::from(src[px + c]) * w;
                            }
                        }
                        for c in 0..c_n {
                            slab[index(s_local, f_local) + c] = clip8(a[c]);
                        }
                    }
                }
                for tid in 0..FUSED_THREADS {
                    let (x, y) = (x0 + (tid % 8) * GROUP, y0 + tid / 8);
                    if y >= t.out_height {
                        continue;
                    }
                    for j in 0..GROUP {
                        if x + j >= t.out_width {
                            continue;
                        }
                        let (s, f_local) = if vf { (x + j, y - y0) } else { (y, x + j - x0) };
                        let fs = first_s(s);
                        for r in fs.max(c0)..(fs + count_s(s)).min(c0 + n) {
                            let w = word(
                                t.coeffs_s,
                                u64::from(s) * u64::from(t.taps_s) + u64::from(r - fs),
                            ) as i32;
                            for c in 0..c_n {
                                acc[tid as usize][j as usize][c] +=
                                    i32::from(slab[index(r - c0, f_local) + c]) * w;
                            }
                        }
                    }
                }
                c0 += rows;
            }
            let ts = p.tile_size;
            for tid in 0..FUSED_THREADS {
                let (x, y) = (x0 + (tid % 8) * GROUP, y0 + tid / 8);
                for j in 0..GROUP {
                    if y >= t.out_height || x + j >= t.out_width {
                        continue;
                    }
                    let tile = t.first_output + (y / ts) * t.tiles_across + (x + j) / ts;
                    let within = (y % ts) * ts + (x + j) % ts;
                    for c in 0..3 {
                        let u = clip8(acc[tid as usize][j as usize][c.min(c_n - 1)]);
                        let at = ((tile * 3 + c as u32) * ts * ts + within) as usize;
                        out[at] = table[c * 256 + usize::from(u)];
                    }
                }
            }
        }
        most_chunks
    }

    /// Runs the kernel source on the CPU (`exe`) with every output byte
    /// poisoned first; returns the output tensor's bytes.
    fn emulate(exe: &Path, launch: &FusedLaunch, image: &[u8], out_bytes: usize) -> Vec<u8> {
        let mut memory = Memory::default();
        let blob = memory.put(&launch.blob);
        let src = memory.put(image);
        let out = memory.put(&vec![0xFFu8; out_bytes]);
        let params = launch.relocated(blob, src, out);
        let target = |i: usize, field: usize| {
            offset_of!(NvlmFusedPreprocess, target) + i * size_of::<NvlmFusedTarget>() + field
        };
        let mut pointers = vec![
            offset_of!(NvlmFusedPreprocess, src),
            offset_of!(NvlmFusedPreprocess, out),
            offset_of!(NvlmFusedPreprocess, table),
        ];
        for i in 0..2 {
            pointers.extend(
                [
                    offset_of!(NvlmFusedTarget, first_f),
                    offset_of!(NvlmFusedTarget, count_f),
                    offset_of!(NvlmFusedTarget, coeffs_f),
                    offset_of!(NvlmFusedTarget, first_s),
                    offset_of!(NvlmFusedTarget, count_s),
                    offset_of!(NvlmFusedTarget, coeffs_s),
                ]
                .map(|field| target(i, field)),
            );
        }
        let file = LaunchFile {
            kernel: launch.entry,
            config: launch.config(),
            // SAFETY: abi.h's structs have no padding.
            params: unsafe { host_emulation::param_bytes(&params) },
            pointers: &pointers,
            maps: &[],
            memory: &memory,
        }
        .bytes();
        Memory::get(&host_emulation::run(exe, &file), out, out_bytes)
    }

    /// The largest images v1's source runs for on the CPU, in f32 and in
    /// bf16. v1 runs a block per 32x8 pixels of each pass, and the emulation
    /// pays a barrier of 256 threads per block: the multi-megapixel strips
    /// that make v2 and v3 chunk took 11-17 s each (v1 has no chunking),
    /// and bf16 changes v1's stores only.
    const V1_F32_PIXELS: u64 = 1 << 20;
    const V1_BF16_PIXELS: u64 = 1 << 17;

    /// Runs v1's kernel source on the CPU (`exe`) as `run_v1` launches it:
    /// target after target, each [`TwoPassV1`]'s launches in order, the
    /// output and every intermediate poisoned first. Returns the output
    /// tensor's bytes.
    fn emulate_v1<T: TensorElement + bytemuck::Pod>(
        exe: &Path,
        pre: &Preprocessor,
        plan: &TilePlan,
        image: &ImageView,
        out_len: usize,
    ) -> Vec<u8> {
        let mut memory = Memory::default();
        let n = pre.normalization;
        let table = memory.put(&normalization_tables::<T>(n.mean, n.std).concat());
        let source = Source {
            addr: memory.put(image.data()),
            width: image.width(),
            height: image.height(),
            stride: image.stride(),
            format: image.format(),
        };
        let out_bytes = out_len * size_of::<T>();
        let out = memory.put(&vec![0xFFu8; out_bytes]);
        for target in Target::of(plan) {
            let resize = TwoPassV1::new(pre.pillow, (source.width, source.height), target);
            let mut tables = |axis: &AxisCoefficients| {
                [
                    memory.put(&axis.first),
                    memory.put(&axis.count),
                    memory.put(&axis.coeffs),
                ]
            };
            let first_tables = resize.first.as_ref().map_or([0; 3], |p| tables(&p.axis));
            let last_tables = tables(&resize.last.axis);
            let intermediate = resize
                .intermediate_len(source.format)
                .map_or(0, |len| memory.put(&vec![0xFFu8; len]));
            let launches = resize.params(
                &source,
                &V1Buffers {
                    first_tables,
                    last_tables,
                    intermediate,
                    out,
                    table,
                },
                T::DTYPE.size_bytes() as u32,
                pre.config.tile_size,
            );
            // The device addresses in a pass, at `base` in the params.
            let pass_pointers = |base: usize| {
                [
                    offset_of!(NvlmResamplePass, src),
                    offset_of!(NvlmResamplePass, first),
                    offset_of!(NvlmResamplePass, count),
                    offset_of!(NvlmResamplePass, coeffs),
                ]
                .map(|field| base + field)
            };
            if let Some(params) = &launches.intermediate {
                let mut pointers = pass_pointers(offset_of!(NvlmIntermediate, pass)).to_vec();
                pointers.push(offset_of!(NvlmIntermediate, dst));
                let file = LaunchFile {
                    kernel: "resample_to_intermediate",
                    config: launch_config(&params.pass),
                    // SAFETY: abi.h's structs have no padding.
                    params: unsafe { host_emulation::param_bytes(params) },
                    pointers: &pointers,
                    maps: &[],
                    memory: &memory,
                };
                memory.bytes = host_emulation::run(exe, &file.bytes());
            }
            let mut pointers = pass_pointers(offset_of!(NvlmTileWrite, pass)).to_vec();
            pointers.extend([
                offset_of!(NvlmTileWrite, out),
                offset_of!(NvlmTileWrite, table),
            ]);
            let file = LaunchFile {
                kernel: "resample_to_tiles",
                config: launch_config(&launches.tiles.pass),
                // SAFETY: as above.
                params: unsafe { host_emulation::param_bytes(&launches.tiles) },
                pointers: &pointers,
                maps: &[],
                memory: &memory,
            };
            memory.bytes = host_emulation::run(exe, &file.bytes());
        }
        Memory::get(&memory.bytes, out, out_bytes)
    }

    fn first_difference<T: bytemuck::Pod>(got: &[u8], want: &[T]) -> Option<usize> {
        let want: &[u8] = bytemuck::cast_slice(want);
        assert_eq!(got.len(), want.len());
        got.iter().zip(want).position(|(a, b)| a != b)
    }

    /// What one case exercised: the passes of its targets, those v1's
    /// source ran on the CPU (in f32; and whether it ran in bf16), the most
    /// chunks a v2 patch took in each pass order (horizontal first, then
    /// vertical first), the same for v3's staged targets, and whether v3
    /// left a target unstaged.
    #[derive(Default)]
    struct Coverage {
        passes: Vec<Passes>,
        v1_passes: Vec<Passes>,
        v1_bf16: bool,
        v2_chunks: [u32; 2],
        v3_chunks: [u32; 2],
        v3_unstaged: bool,
    }

    /// Checks one case with the model and, given `emulator`, with the
    /// kernel sources on the CPU: v2, v3 and v4 in f32, v4 in bf16 (the
    /// output stores, the one place the types differ, are shared code);
    /// v1 in f32 up to [`V1_F32_PIXELS`], and in bf16 up to
    /// [`V1_BF16_PIXELS`].
    fn check(
        pre: Preprocessor,
        (w, h): (u32, u32),
        format: PixelFormat,
        pad: usize,
        seed: u64,
        emulator: Option<&PathBuf>,
    ) -> Coverage {
        let stride = w as usize * format.bytes_per_pixel() + pad;
        let mut x = seed | 1;
        let data: Vec<u8> = (0..stride * h as usize)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let view = ImageView::new(&data, w, h, stride, format).unwrap();
        let what = format!("{w}x{h} {format:?} {:?} {:?}", pre.pillow, pre.config);
        let want = pre.run::<f32>(&view).unwrap();
        let launch =
            |kernel| FusedLaunch::new::<f32>(kernel, &pre, &want.plan, (w, h), stride, format);
        let v2 = launch(PreprocessKernel::FusedV2);
        let v3 = launch(PreprocessKernel::StagedV3);
        let v4 = launch(PreprocessKernel::StagedDp4aV4);
        let mut got = vec![f32::NAN; want.data.len()];
        let v2_chunks = model(&v2, view.data(), &mut got);
        if let Some(i) = first_difference(bytemuck::cast_slice(&got), &want.data) {
            panic!("{what}: model: first differing byte {i}");
        }
        let pixels = u64::from(w) * u64::from(h);
        let mut coverage = Coverage {
            v2_chunks,
            ..Default::default()
        };
        if let Some(exe) = emulator {
            if pixels <= V1_F32_PIXELS {
                let got = emulate_v1::<f32>(exe, &pre, &want.plan, &view, want.data.len());
                if let Some(i) = first_difference(&got, &want.data) {
                    panic!("{what} f32: v1 on the CPU: first differing byte {i}");
                }
                coverage.v1_passes = Target::of(&want.plan)
                    .iter()
                    .map(|t| pre.pillow.passes(w, h, t.size.0, t.size.1))
                    .collect();
            }
            for launch in [&v2, &v3, &v4] {
                let got = emulate(exe, launch, view.data(), want.data.len() * 4);
                if let Some(i) = first_difference(&got, &want.data) {
                    panic!(
                        "{what} f32: {} on the CPU: first differing byte {i}",
                        launch.entry
                    );
                }
            }
            let want = pre.run::<half::bf16>(&view).unwrap();
            let v4 = FusedLaunch::new::<half::bf16>(
                PreprocessKernel::StagedDp4aV4,
                &pre,
                &want.plan,
                (w, h),
                stride,
                format,
            );
            let got = emulate(exe, &v4, view.data(), want.data.len() * 2);
            if let Some(i) = first_difference(&got, &want.data) {
                panic!(
                    "{what} bf16: {} on the CPU: first differing byte {i}",
                    v4.entry
                );
            }
            if pixels <= V1_BF16_PIXELS {
                let got = emulate_v1::<half::bf16>(exe, &pre, &want.plan, &view, want.data.len());
                if let Some(i) = first_difference(&got, &want.data) {
                    panic!("{what} bf16: v1 on the CPU: first differing byte {i}");
                }
                coverage.v1_bf16 = true;
            }
        }
        for (target, params) in Target::of(&want.plan).iter().zip(&v3.params.target) {
            let passes = pre.pillow.passes(w, h, target.size.0, target.size.1);
            coverage.passes.push(passes);
            if params.chunk_samples == 0 {
                coverage.v3_unstaged = true;
                continue;
            }
            let axes = FusedAxes::new(pre.pillow, (w, h), target.size);
            let chunks = widest_window(&axes.second).div_ceil(params.chunk_samples);
            let order = usize::from(axes.vertical_first);
            coverage.v3_chunks[order] = coverage.v3_chunks[order].max(chunks);
        }
        coverage
    }

    /// Runs `check` on every (width, height, tile size, max tiles) case with
    /// both Pillow versions and rotating formats and row padding, then
    /// asserts that the cases made every pass order, the one-pass and copy
    /// cases (for v1's source too, given `emulator`), and windows of
    /// several chunks in both pass orders, for v2 and for v3's staged
    /// targets.
    fn check_cases(cases: &[(u32, u32, u32, u32)], emulator: Option<&PathBuf>) -> Coverage {
        let formats = [
            PixelFormat::Rgb8,
            PixelFormat::Rgba8,
            PixelFormat::L8,
            PixelFormat::La8,
        ];
        let (mut n, mut all) = (0u64, Coverage::default());
        for &(w, h, tile_size, max_tiles) in cases {
            for pillow in [PillowVersion::V12, PillowVersion::V13] {
                let pre = Preprocessor {
                    config: DhrConfig {
                        tile_size,
                        max_tiles,
                        ..DhrConfig::NVLM_D
                    },
                    pillow,
                    ..Default::default()
                };
                n += 1;
                let format = formats[n as usize % 4];
                let one = check(pre, (w, h), format, n as usize % 3, n, emulator);
                all.passes.extend(one.passes);
                all.v1_passes.extend(one.v1_passes);
                all.v1_bf16 |= one.v1_bf16;
                all.v2_chunks = [0, 1].map(|o| all.v2_chunks[o].max(one.v2_chunks[o]));
                all.v3_chunks = [0, 1].map(|o| all.v3_chunks[o].max(one.v3_chunks[o]));
                all.v3_unstaged |= one.v3_unstaged;
            }
        }
        for passes in [
            Passes::Copy,
            Passes::Horizontal,
            Passes::Vertical,
            Passes::HorizontalThenVertical,
            Passes::VerticalThenHorizontal,
        ] {
            assert!(all.passes.contains(&passes), "no case ran {passes:?}");
            assert!(
                emulator.is_none() || all.v1_passes.contains(&passes),
                "v1's source never ran {passes:?}"
            );
        }
        assert!(
            emulator.is_none() || all.v1_bf16,
            "v1's source never ran in bf16"
        );
        for (version, chunks) in [("v2", all.v2_chunks), ("v3", all.v3_chunks)] {
            assert!(
                chunks.iter().all(|&c| c >= 3),
                "{version}: some pass order never took several chunks: {chunks:?}"
            );
        }
        all
    }

    #[test]
    fn fused_launch_model_equals_the_cpu_reference() {
        // Upscales, tile sizes that are not multiples of the patch or of
        // 4, long strips, and the cases the emulation test runs.
        check_cases(
            &[
                (640, 480, 448, 6),
                (1344, 896, 448, 6),
                (1344, 500, 448, 6),
                (900, 448, 448, 2),
                (448, 900, 448, 2),
                (200, 6000, 448, 6),
                (30, 5000, 448, 6),
                (7000, 120, 448, 6),
                (3, 2, 448, 12),
                (1, 1, 448, 6),
                (97, 61, 30, 5),
                (500, 333, 61, 6),
                (300, 20000, 448, 6),
                (1000, 5000, 32, 6),
                (5000, 1000, 32, 6),
                (60000, 4, 32, 6),
                (4, 60000, 32, 6),
            ],
            None,
        );
    }

    /// The same checks on the kernels' own source. Small tile sizes keep
    /// the blocks few (each is 256 threads and a barrier per chunk on the
    /// CPU) while making every pass order and several-chunk windows; the
    /// 60000-pixel strip's thumbnail window is too wide for v3 to stage.
    #[test]
    fn fused_kernel_source_on_the_cpu_equals_the_cpu_reference() {
        let Some(exe) = host_emulation::emulator("preprocess_on_cpu", "address") else {
            return;
        };
        let coverage = check_cases(
            &[
                (640, 480, 64, 6),
                (192, 128, 64, 6),
                (150, 64, 64, 2),
                (64, 150, 64, 2),
                (3, 400, 64, 6),
                (1, 1, 64, 6),
                (97, 61, 30, 5),
                (500, 333, 61, 6),
                (7500, 1500, 32, 6),
                (1500, 7500, 32, 6), // V13 and RGB: vertical first, 6 chunks
                (60000, 4, 32, 6),
            ],
            Some(&exe),
        );
        assert!(coverage.v3_unstaged, "no target ran v3's unstaged path");
    }

    /// A longer search than the fixed cases: random sizes up to 2000 a side
    /// (one in eight a strip 1 to 8 pixels across), tile sizes 16 to 96, 1
    /// to 12 tiles with or without the thumbnail, either Pillow version,
    /// every format and row padding; every version's source (v1 within its
    /// size caps) against the CPU reference, byte for byte. Run by hand:
    /// `NVLM_VISION_EMULATED_CASES=<n> cargo test --lib
    /// kernel_source_on_random_shapes -- --ignored --nocapture` (default 8;
    /// `NVLM_VISION_SEED` repeats a draw).
    #[test]
    #[ignore = "minutes; run by hand"]
    fn kernel_source_on_random_shapes_equals_the_cpu_reference() {
        let Some(exe) = host_emulation::emulator("preprocess_on_cpu", "address") else {
            return;
        };
        let (count, seed) = host_emulation::random_search();
        let mut draws = host_emulation::Draws::new(seed);
        let mut below = |n: u32| draws.below(n as usize) as u32;
        let formats = [
            PixelFormat::Rgb8,
            PixelFormat::Rgba8,
            PixelFormat::L8,
            PixelFormat::La8,
        ];
        for i in 0..count {
            let (long, short) = (1 + below(2000), 1 + below(2000));
            let (long, short) = if below(8) == 0 {
                (long, 1 + below(8))
            } else {
                (long, short)
            };
            let (w, h) = if below(2) == 0 {
                (long, short)
            } else {
                (short, long)
            };
            let pre = Preprocessor {
                config: DhrConfig {
                    tile_size: 16 + below(81),
                    max_tiles: 1 + below(12),
                    thumbnail: below(2) == 0,
                    ..DhrConfig::NVLM_D
                },
                pillow: [PillowVersion::V12, PillowVersion::V13][below(2) as usize],
                ..Default::default()
            };
            let format = formats[below(4) as usize];
            let pad = below(4) as usize;
            let what = format!(
                "{w}x{h} {format:?} pad {pad} {:?} {:?}",
                pre.pillow, pre.config
            );
            check(pre, (w, h), format, pad, seed.wrapping_add(i), Some(&exe));
            eprintln!("{what}: ok");
        }
    }

    /// The slab's chunked fill and read across barriers, under the thread
    /// sanitizer: both pass orders (both Pillow versions), several chunks;
    /// and v1's threads, whose only writes are to the output.
    #[test]
    fn fused_kernel_source_on_the_cpu_has_no_data_race() {
        let Some(exe) = host_emulation::emulator("preprocess_on_cpu", "thread") else {
            return;
        };
        check_cases(
            &[
                (192, 128, 64, 6),
                (150, 64, 64, 2),
                (64, 150, 64, 2),
                // Fourth, so V13 meets RGB: vertical first, several chunks.
                (1500, 7500, 32, 6),
                (7500, 1500, 32, 6),
                // V13: vertical first in an image small enough for v1.
                (100, 300, 64, 6),
            ],
            Some(&exe),
        );
    }

    /// v4's byte planes give back every tap's weight, Pillow's int32 from
    /// its four bytes, and zeros past each output's count.
    #[test]
    fn byte_planes_hold_each_weight_and_zeros_past_the_count() {
        for (input, output) in [(4032, 1344), (3024, 448), (640, 1344), (7, 3)] {
            let axis = AxisCoefficients::bicubic(input, output);
            let words = byte_planes(&axis);
            let (taps, out) = (axis.taps as usize, axis.out_size as usize);
            assert_eq!(words.len(), taps.next_multiple_of(4) * out);
            for f in 0..out {
                for t in 0..taps.next_multiple_of(4) {
                    let (group, lane) = (t / 4, t % 4);
                    let weight = (0..4).fold(0u32, |w, j| {
                        w | ((words[(4 * group + j) * out + f] >> (8 * lane)) & 0xFF) << (8 * j)
                    }) as i32;
                    let want = if t < axis.count[f] as usize {
                        axis.coeffs[f * taps + t]
                    } else {
                        0
                    };
                    assert_eq!(weight, want, "{input} -> {output}: output {f}, tap {t}");
                }
            }
        }
    }

    #[test]
    fn fused_tables_are_laid_out_on_16_byte_boundaries() {
        let pre = Preprocessor::default();
        let plan = pre.plan(4032, 3024).unwrap();
        let launch = FusedLaunch::new::<f32>(
            PreprocessKernel::FusedV2,
            &pre,
            &plan,
            (4032, 3024),
            4032 * 3,
            PixelFormat::Rgb8,
        );
        let p = launch.params;
        assert_eq!(p.num_targets, 2);
        assert_eq!(p.target[1].first_block, 42 * 28); // 1344x896 in 32x32 patches
        assert_eq!(launch.blocks, 42 * 28 + 14 * 14);
        assert_eq!(p.table, 0);
        for t in &p.target {
            for offset in [
                t.first_f, t.count_f, t.coeffs_f, t.first_s, t.count_s, t.coeffs_s,
            ] {
                assert_eq!(offset % 16, 0);
                assert!(offset < (launch.blob.len() * 4) as u64);
            }
            assert_eq!(t.vertical_first, 0, "V12, landscape: horizontal first");
        }
    }

    /// v3's layout on the bench's sizes and on extreme strips: within the
    /// budget, chunks no longer than the widest window, staged planes that
    /// hold a chunk's input, the odd-word pitches the banks need, and the
    /// chunk counts PERF.md's prediction assumed for 4032x3024.
    #[test]
    fn staged_layouts_fit_their_budget() {
        let cases = [
            (4032, 3024, 448),
            (3024, 4032, 448),
            (1920, 1080, 448),
            (640, 480, 448),
            (60000, 4, 32),
            (4, 60000, 32),
            (1 << 20, 256, 448),
        ];
        let mut unstaged = 0;
        for (w, h, tile_size) in cases {
            for pillow in [PillowVersion::V12, PillowVersion::V13] {
                for format in [PixelFormat::Rgb8, PixelFormat::L8] {
                    let pre = Preprocessor {
                        config: DhrConfig {
                            tile_size,
                            ..DhrConfig::NVLM_D
                        },
                        pillow,
                        ..Default::default()
                    };
                    let plan = pre.plan(w, h).unwrap();
                    let stride = w as usize * format.bytes_per_pixel();
                    let launch = FusedLaunch::new::<f32>(
                        PreprocessKernel::StagedV3,
                        &pre,
                        &plan,
                        (w, h),
                        stride,
                        format,
                    );
                    let c = format.colour_channels() as u32;
                    assert_eq!(launch.config().shared_mem_bytes, STAGED_SMEM_BYTES);
                    for (target, t) in Target::of(&plan).iter().zip(&launch.params.target) {
                        let what = format!("{w}x{h} {pillow:?} {format:?} -> {:?}", target.size);
                        let layout = StagedLayout {
                            chunk_samples: t.chunk_samples,
                            stage_rows: t.stage_rows,
                            stage_pitch: t.stage_pitch,
                            stage_offset: t.stage_offset,
                        };
                        if t.chunk_samples == 0 {
                            assert_eq!(layout, StagedLayout::default(), "{what}");
                            unstaged += 1;
                            continue;
                        }
                        let axes = FusedAxes::new(pillow, (w, h), target.size);
                        let (window_f, window_s) =
                            (widest_window(&axes.first), widest_window(&axes.second));
                        assert!(layout.bytes(c) <= u64::from(STAGED_SMEM_BYTES), "{what}");
                        assert!(t.chunk_samples <= window_s, "{what}");
                        let slab = if axes.vertical_first {
                            assert_eq!(t.stage_rows, window_f, "{what}");
                            assert!(t.stage_pitch >= t.chunk_samples, "{what}");
                            t.chunk_samples * PATCH * c
                        } else {
                            assert_eq!(t.stage_rows, t.chunk_samples, "{what}");
                            assert!(t.stage_pitch >= window_f, "{what}");
                            assert_eq!(t.stage_pitch % 8, 4, "{what}: an odd number of words");
                            t.chunk_samples * (PATCH * c + 4)
                        };
                        assert!(t.stage_offset >= slab && t.stage_offset % 16 == 0, "{what}");
                        if (w, h, pillow, format)
                            == (4032, 3024, PillowVersion::V12, PixelFormat::Rgb8)
                        {
                            let chunks = window_s.div_ceil(t.chunk_samples);
                            let want = if target.size == (448, 448) { 4 } else { 1 };
                            assert_eq!(chunks, want, "{what}");
                        }
                    }
                }
            }
        }
        assert!(unstaged > 0, "no case was too wide to stage");
    }

    fn launch_key(width: u32) -> LaunchKey {
        let preprocessor = Preprocessor::default();
        LaunchKey {
            kernel: PreprocessKernel::FusedV2,
            dtype: Dtype::F32,
            preprocessor,
            size: (width, 480),
            stride: width as usize * 3,
            format: PixelFormat::Rgb8,
        }
    }

    /// `key`'s kept entry, or a new one whose tables are `bytes` long, with
    /// a stand-in for their device copy naming the key it was made for.
    fn get_or_make(
        cache: &mut LaunchCache<u32>,
        key: &LaunchKey,
        bytes: usize,
        width: u32,
    ) -> Arc<CachedLaunch<u32>> {
        cache.get(key).unwrap_or_else(|| {
            let launch = FusedLaunch {
                entry: "preprocess_fused",
                blob: Vec::new(),
                params: Default::default(),
                blocks: 0,
            };
            cache.insert(CachedLaunch {
                key: *key,
                launch,
                tables: width,
                bytes,
            })
        })
    }

    #[test]
    fn launch_cache_keeps_the_most_recently_used_shapes() {
        let mut cache = LaunchCache::default();
        let first = get_or_make(&mut cache, &launch_key(100), 1024, 100);
        let again = cache.get(&launch_key(100)).expect("kept");
        assert!(Arc::ptr_eq(&first, &again));
        // The same shape with another kernel, dtype, preprocessor or stride
        // is another launch.
        let others = [
            LaunchKey {
                kernel: PreprocessKernel::StagedV3,
                ..launch_key(100)
            },
            LaunchKey {
                dtype: Dtype::Bf16,
                ..launch_key(100)
            },
            LaunchKey {
                preprocessor: Preprocessor {
                    pillow: PillowVersion::V13,
                    ..Preprocessor::default()
                },
                ..launch_key(100)
            },
            LaunchKey {
                stride: 301,
                ..launch_key(100)
            },
        ];
        for (n, key) in others.iter().enumerate() {
            assert!(cache.get(key).is_none(), "{key:?}");
            assert_eq!(
                get_or_make(&mut cache, key, 1024, n as u32).tables,
                n as u32
            );
        }
        // Filled to CACHED_LAUNCHES with width 100 used last: the next new
        // shape evicts the least recently used, the other kernel's.
        for width in 101..(101 + CACHED_LAUNCHES as u32 - 5) {
            get_or_make(&mut cache, &launch_key(width), 1024, width);
        }
        assert!(cache.get(&launch_key(100)).is_some(), "evicted too soon");
        get_or_make(&mut cache, &launch_key(200), 1024, 200);
        assert_eq!(cache.entries.len(), CACHED_LAUNCHES);
        assert!(cache.get(&others[0]).is_none());
        assert!(
            cache.get(&launch_key(100)).is_some(),
            "evicted out of order"
        );
        // An entry made meanwhile for a kept key gives way to the kept one.
        let late = get_or_make(&mut LaunchCache::default(), &launch_key(200), 1024, 999);
        let kept = cache.insert(Arc::into_inner(late).unwrap());
        assert_eq!(kept.tables, 200);
    }

    #[test]
    fn launch_cache_holds_at_most_its_bytes() {
        let mut cache = LaunchCache::default();
        let half = CACHED_LAUNCH_BYTES / 2;
        get_or_make(&mut cache, &launch_key(100), half, 100);
        get_or_make(&mut cache, &launch_key(101), half, 101);
        // 4 bytes more than fit: the oldest goes.
        get_or_make(&mut cache, &launch_key(102), 4, 102);
        let widths: Vec<u32> = cache.entries.iter().map(|e| e.tables).collect();
        assert_eq!(widths, [101, 102]);
        // Tables over the whole budget are used once and not kept, and
        // keep nothing else out.
        let huge = get_or_make(&mut cache, &launch_key(103), CACHED_LAUNCH_BYTES + 4, 103);
        assert_eq!(huge.tables, 103);
        let widths: Vec<u32> = cache.entries.iter().map(|e| e.tables).collect();
        assert_eq!(widths, [101, 102]);
    }
}
