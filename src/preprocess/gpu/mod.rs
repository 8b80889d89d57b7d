//! DHR preprocessing on a CUDA device (kernels/preprocess.cu).
//!
//! The host computes the plan and Pillow's coefficient tables exactly as the
//! CPU path does; the kernels run the same integer passes, so the output is
//! meant to equal [`Preprocessor::run`] byte for byte. Every kernel version
//! is kept, so one GPU run can compare them ([`PreprocessKernel`]).

use crate::cuda::{Gpu, KernelModule, allow_dynamic_smem, driver_error};
use crate::dtype::TensorElement;
use crate::error::{Error, Result};
use crate::preprocess::cpu::normalization_tables;
use crate::preprocess::{ImageView, PixelFormat, Preprocessor, TilePlan, check_image_size};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{
    CudaEvent, CudaSlice, DevicePtr, DevicePtrMut, DeviceRepr, LaunchConfig, PinnedHostSlice,
    PushKernelArg,
};
use std::sync::{Arc, Mutex};

#[cfg(test)]
mod emulated;
mod fused;
mod launch_cache;
mod staging;
mod two_pass;

use fused::FusedLaunch;
use launch_cache::{CachedLaunch, LaunchCache, LaunchKey};
use staging::{HostImage, Staging};
use two_pass::{DeviceAxis, TwoPassV1, V1Buffers, device_addr};

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
    /// Copies the bytes `image` spans to the device (queued on the GPU's
    /// stream). The bytes may be rewritten or freed once this returns: a
    /// copy from ordinary pageable memory is staged before the call
    /// returns, and from memory CUDA knows (page-locked, registered or
    /// managed, such as a [`PinnedImage::view`]), which the DMA reads
    /// later, this waits until the copy is done.
    pub fn upload(gpu: &Gpu, image: &ImageView<'_>) -> Result<DeviceImage> {
        let stream = gpu.stream();
        let read_later = is_known_to_cuda(gpu, image.data())?;
        let data = stream
            .clone_htod(image.data())
            .map_err(driver_error("copy image to device"))?;
        if read_later {
            stream
                .record_event(Some(CUevent_flags::CU_EVENT_BLOCKING_SYNC))
                .and_then(|copied| copied.synchronize())
                .map_err(driver_error("wait for the copy out of page-locked memory"))?;
        }
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

/// Whether CUDA knows the host memory at `bytes` (page-locked, registered
/// or managed), which a copy reads by DMA after the call that queued it
/// has returned; ordinary pageable memory is unknown to it.
fn is_known_to_cuda(gpu: &Gpu, bytes: &[u8]) -> Result<bool> {
    use cudarc::driver::sys::{CUpointer_attribute, CUresult, cuPointerGetAttributes};
    crate::cuda::bind_context(gpu.context())?;
    let mut attribute = CUpointer_attribute::CU_POINTER_ATTRIBUTE_MEMORY_TYPE;
    let mut memory_type = 0u32;
    let mut data = [(&raw mut memory_type).cast::<std::ffi::c_void>()];
    // The plural call, not cuPointerGetAttribute: for memory CUDA does not
    // know it succeeds and writes 0, where the singular one fails with
    // INVALID_VALUE, which compute-sanitizer reports as an API error.
    // SAFETY: one attribute, the memory type, one u32 (a CUmemorytype),
    // written to `memory_type`; the pointer is only looked up.
    let status = unsafe {
        cuPointerGetAttributes(
            1,
            &raw mut attribute,
            data.as_mut_ptr(),
            bytes.as_ptr() as u64,
        )
    };
    if status != CUresult::CUDA_SUCCESS {
        return Err(Error::Cuda(format!(
            "cuPointerGetAttributes(MEMORY_TYPE) on a host image: {status:?}"
        )));
    }
    Ok(memory_type != 0)
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

    /// The image as a view (for the CPU path, or
    /// [`CudaPreprocessor::run_into`], which waits for its copy out of
    /// page-locked memory), once any copy out of it still queued has
    /// finished.
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
/// which takes 100–350 µs on one CPU core at NVLM-D's sizes, longer than
/// the kernel is predicted to take (PERF.md; not yet measured). They are freed with the preprocessor.
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
    /// result. The image's bytes may be rewritten once this returns (see
    /// [`DeviceImage::upload`]: from page-locked memory it waits for the
    /// copy).
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
                    self.gpu
                        .check_own_context(pinned.bytes.context(), "pinned image")?;
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
                HostImage::Pinned(pinned) => {
                    // Another preprocessor's copy of this image may still be
                    // queued on its own copy stream: after this wait, the
                    // record below covers it too, so `bytes_mut` and drop
                    // wait for every copy, not only the last one queued.
                    copy_stream
                        .wait(&pinned.copied)
                        .map_err(driver_error("copy stream wait"))?;
                    pinned
                        .bytes
                        .as_slice()
                        .map_err(driver_error("pinned image"))?
                }
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
            let queued = self.queue(source, plan, out);
            // Recorded even when queueing failed part-way (v1 queues
            // several launches): the next copy into this buffer must wait
            // for whatever reads it.
            slot.consumed
                .record(compute)
                .map_err(driver_error("record staging use"))?;
            queued?;
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
        self.gpu
            .check_own_context(image.data.context(), "device image")?;
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
        self.gpu.check_own_context(out.context(), "output tensor")?;
        self.gpu.check_not_capturing("preprocessing")
    }

    /// v2, v3 or v4: one launch.
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
        let resizes: Vec<TwoPassV1> = Target::of(plan)
            .into_iter()
            .map(|target| TwoPassV1::new(pre.pillow, (source.width, source.height), target))
            .collect();
        let configs = resizes
            .iter()
            .map(TwoPassV1::launch_configs)
            .collect::<Result<Vec<_>>>()?;
        let tables = normalization_tables::<T>(pre.normalization.mean, pre.normalization.std);
        let flat: Vec<T> = tables.iter().flatten().copied().collect();
        let table = stream
            .clone_htod(&flat)
            .map_err(driver_error("copy normalisation table"))?;
        for (resize, configs) in resizes.iter().zip(configs) {
            self.resize_into_tiles_v1(source, resize, configs, &table, out)?;
        }
        Ok(())
    }

    fn resize_into_tiles_v1<T: TensorElement + DeviceRepr>(
        &self,
        image: Source,
        resize: &TwoPassV1,
        (intermediate_config, tiles_config): (Option<LaunchConfig>, LaunchConfig),
        table: &CudaSlice<T>,
        out: &mut CudaSlice<T>,
    ) -> Result<()> {
        let stream = self.gpu.stream();
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
        if let (Some(params), Some(config)) = (&launches.intermediate, intermediate_config) {
            let f = self
                .gpu
                .function(KernelModule::Preprocess, "resample_to_intermediate")?;
            // SAFETY: the params describe live device buffers of the sizes
            // the kernel indexes (the image checked on the host, the tables
            // and intermediate made for this resize); one stream orders it.
            unsafe { stream.launch_builder(&f).arg(params).launch(config) }
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
                .launch(tiles_config)
        }
        .map_err(driver_error("resample_to_tiles"))?;
        // v1 as first written: the tables and the intermediate are dropped
        // only after the kernels finish.
        stream.synchronize().map_err(driver_error("synchronize"))?;
        drop((first_tables, last_tables, intermediate));
        Ok(())
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
