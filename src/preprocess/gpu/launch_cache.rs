//! The fused launches of the image shapes met last, their tables kept on
//! the device.

use super::PreprocessKernel;
use super::fused::FusedLaunch;
use crate::dtype::Dtype;
use crate::preprocess::{PixelFormat, Preprocessor};
use std::sync::Arc;

/// What a fused launch's tables depend on: the same key, the same blob.
/// The plan is the preprocessor's for the size (`check` refuses any other).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct LaunchKey {
    pub(super) kernel: PreprocessKernel,
    pub(super) dtype: Dtype,
    pub(super) preprocessor: Preprocessor,
    pub(super) size: (u32, u32),
    pub(super) stride: usize,
    pub(super) format: PixelFormat,
}

/// Launches [`LaunchCache`] keeps, and the most bytes of tables they hold.
pub(super) const CACHED_LAUNCHES: usize = 8;
pub(super) const CACHED_LAUNCH_BYTES: usize = 32 << 20;

/// A fused launch (its host blob emptied) and its tables, uploaded (`B`:
/// the device buffer), `bytes` long.
pub(super) struct CachedLaunch<B> {
    pub(super) key: LaunchKey,
    pub(super) launch: FusedLaunch,
    pub(super) tables: B,
    pub(super) bytes: usize,
}

/// The fused launches of the image shapes met most recently, their tables
/// kept on the device: an image of a shape met before costs its checks and
/// one launch, not the host's table building (at NVLM-D's sizes longer
/// than the kernel's predicted time; PERF.md) and an upload. Least recently used
/// first; entries go from the front past [`CACHED_LAUNCHES`] or
/// [`CACHED_LAUNCH_BYTES`], and a launch whose tables alone exceed the
/// bytes is used once and not kept.
pub(super) struct LaunchCache<B> {
    pub(super) entries: std::collections::VecDeque<Arc<CachedLaunch<B>>>,
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
    pub(super) fn get(&mut self, key: &LaunchKey) -> Option<Arc<CachedLaunch<B>>> {
        let i = self.entries.iter().position(|e| e.key == *key)?;
        let entry = self.entries.remove(i).expect("found");
        self.entries.push_back(entry.clone());
        Some(entry)
    }

    /// Keeps `entry` (unless its key was kept meanwhile, by another
    /// thread: then that entry) and returns what is kept for its key.
    pub(super) fn insert(&mut self, entry: CachedLaunch<B>) -> Arc<CachedLaunch<B>> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::preprocess::PillowVersion;

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
