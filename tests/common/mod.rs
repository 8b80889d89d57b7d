//! Helpers shared by the integration tests.
#![allow(dead_code)] // each test binary uses a different subset

pub mod attention_checks;
pub mod decode;
pub mod gpu;
pub mod hopper_selftests;
pub mod projector_checks;

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

/// True when running under CI (`CI` set and not "false"/"0"), where tests
/// that need the pinned Python environments must run, not skip.
pub fn under_ci() -> bool {
    std::env::var("CI")
        .map(|v| !v.is_empty() && v != "false" && v != "0")
        .unwrap_or(false)
}

/// The Python of the pinned environment for Pillow `major` (12 or 13):
/// `NVLM_VISION_PYTHON_PILLOW{major}`, else `.venv/pillow{major}` made by
/// `scripts/setup_python.sh`. `None` (after one "skipped" line) when it is
/// missing; under CI a missing environment fails the test instead.
pub fn pillow_python(major: u32, test: &str) -> Option<PathBuf> {
    let python = std::env::var_os(format!("NVLM_VISION_PYTHON_PILLOW{major}"))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join(format!(".venv/pillow{major}/bin/python"))
        });
    let version = std::process::Command::new(&python)
        .args(["-c", "import PIL, numpy; print(PIL.__version__)"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match version {
        Some(v) if v.starts_with(&format!("{major}.")) => Some(python),
        found => {
            let why = format!(
                "{test}: no Python with Pillow {major}.x at {} (found {found:?}); run scripts/setup_python.sh",
                python.display()
            );
            assert!(!under_ci(), "{why} (CI requires this test to run)");
            eprintln!("skipped: {why}");
            None
        }
    }
}

/// Runs `scripts/pillow_reference.py ARGS` with `python`, returning stdout.
pub fn run_reference(python: &std::path::Path, args: &[&str]) -> Vec<u8> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/pillow_reference.py");
    let out = std::process::Command::new(python)
        .arg(script)
        .args(args)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "pillow_reference.py {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// One buffer's bits over repeated runs of the same work: each run after
/// the first must give the first run's bits. A result that moves between
/// runs is a race, which an error rule passes when it is small.
pub struct SameBitsEveryRun<B> {
    what: String,
    first: Option<Vec<B>>,
}

impl<B: PartialEq> SameBitsEveryRun<B> {
    pub fn new(what: String) -> Self {
        SameBitsEveryRun { what, first: None }
    }

    /// Keeps run 0's `bits`; asserts any later run's equal them.
    pub fn check(&mut self, run: usize, bits: Vec<B>) {
        let Some(first) = &self.first else {
            self.first = Some(bits);
            return;
        };
        let differ = first.iter().zip(&bits).filter(|(a, b)| a != b).count();
        assert_eq!(
            differ,
            0,
            "{}: run {run} differs from run 0 in {differ} of {} elements: a race",
            self.what,
            bits.len()
        );
    }
}
