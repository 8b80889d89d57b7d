//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod decode;

use sha2::{Digest, Sha256};
use std::path::PathBuf;

/// The fixture folder: `NVLM_VISION_FIXTURES` when set (a test bundle run
/// away from the source tree), else the crate's `tests/fixtures`.
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("NVLM_VISION_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A small deterministic generator (SplitMix64), seeded per test so every
/// run draws fresh values unless `NVLM_VISION_SEED` pins them.
pub struct Rng(u64);

impl Rng {
    pub fn from_env_or_time(test: &str) -> Rng {
        let seed = std::env::var("NVLM_VISION_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
            });
        eprintln!("{test}: seed {seed} (set NVLM_VISION_SEED={seed} to repeat)");
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}
