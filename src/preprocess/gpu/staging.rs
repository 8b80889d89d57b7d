//! Host images on their way to the device for the batched calls: pinned
//! staging buffers, the copy stream, and the events that order the two.

use super::PinnedImage;
use crate::cuda::{Gpu, driver_error};
use crate::error::Result;
use crate::preprocess::{ImageView, PixelFormat};
use cudarc::driver::sys::CUevent_flags;
use cudarc::driver::{CudaEvent, CudaSlice, CudaStream, PinnedHostSlice};
use std::sync::Arc;

/// Two device buffers, the pinned host buffers pageable images are copied
/// through first, and the stream that copies into the device buffers, for
/// [`CudaPreprocessor::run_batch_into`] and
/// [`CudaPreprocessor::run_pinned_batch_into`] (whose images need no host
/// buffer).
pub(super) struct Staging {
    pub(super) copy_stream: Arc<CudaStream>,
    pub(super) slots: [StagingSlot; 2],
}

pub(super) struct StagingSlot {
    pub(super) host: Option<PinnedHostSlice<u8>>,
    pub(super) device: Option<CudaSlice<u8>>,
    /// Recorded on the copy stream after the copy into `device` (out of
    /// `host`, or out of the caller's pinned image).
    pub(super) copied: CudaEvent,
    /// Recorded on the GPU's stream after the work that reads `device`.
    pub(super) consumed: CudaEvent,
}

impl Staging {
    pub(super) fn new(gpu: &Gpu) -> Result<Staging> {
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
    pub(super) fn reserve_device(&mut self, gpu: &Gpu, len: usize) -> Result<()> {
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
    pub(super) fn reserve_host(&mut self, gpu: &Gpu, len: usize) -> Result<()> {
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
pub(super) enum HostImage<'a> {
    Pageable(&'a ImageView<'a>),
    Pinned(&'a PinnedImage),
}

impl HostImage<'_> {
    pub(super) fn size(&self) -> (u32, u32) {
        match self {
            HostImage::Pageable(v) => (v.width(), v.height()),
            HostImage::Pinned(p) => (p.width, p.height),
        }
    }

    pub(super) fn stride(&self) -> usize {
        match self {
            HostImage::Pageable(v) => v.stride(),
            HostImage::Pinned(p) => p.row_bytes(),
        }
    }

    pub(super) fn format(&self) -> PixelFormat {
        match self {
            HostImage::Pageable(v) => v.format(),
            HostImage::Pinned(p) => p.format,
        }
    }

    /// The bytes the copy carries.
    pub(super) fn len(&self) -> usize {
        match self {
            HostImage::Pageable(v) => v.data().len(),
            HostImage::Pinned(p) => p.bytes.len(),
        }
    }
}
