//! The host emulation of the kernels (tests/host_emulation): a kernel
//! file's own CUDA source compiled as C++ for the CPU over an emulated
//! runtime and emulated PTX primitives, under a sanitizer, which unit tests
//! run where no GPU is in reach. Test-only.
//!
//! A driver (`tests/host_emulation/<kernel>_on_cpu.cpp`) includes the
//! kernel file from a staged copy of kernels/ in which the emulated headers
//! (tests/host_emulation/cuda) replace kernels/common's; [`LaunchFile`]
//! describes one launch to it (format: tests/host_emulation/cuda/launch.h).

use crate::hopper::{TiledTensor, TmaSwizzle};
use cudarc::driver::LaunchConfig;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

/// The crate's root, where kernels/ and tests/ are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

const PROCESS_DIR_PREFIX: &str = "nvlm-vision-emu-";

/// This test process's temporary folder (staged kernels, emulators). Made
/// once; earlier processes' folders are removed then, where /proc shows
/// their process gone.
fn process_dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let tmp = std::env::temp_dir();
        if Path::new("/proc/self").exists()
            && let Ok(entries) = std::fs::read_dir(&tmp)
        {
            for entry in entries.flatten() {
                let name = entry.file_name();
                if let Some(pid) = name.to_string_lossy().strip_prefix(PROCESS_DIR_PREFIX)
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
        tmp.join(format!("{PROCESS_DIR_PREFIX}{}", std::process::id()))
    })
}

/// A fresh directory under this test process's temporary folder.
pub fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = process_dir().join(format!("{what}-{}", NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// kernels/ as it is, with tests/host_emulation/cuda copied over it: the
/// emulated common/ headers replace the real ones (those without an
/// emulated twin, such as the wgmma descriptor encoder, stay). Staged once
/// per test process.
fn staged_kernels() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = scratch_dir("kernels");
        copy_tree(&root().join("kernels"), &dir);
        copy_tree(&root().join("tests/host_emulation/cuda"), &dir);
        dir
    })
}

/// The undefined behaviour every emulator stops on, beside its address or
/// thread sanitizer: where the CPU and the GPU part ways. A vector access
/// off its alignment (a `uint4` load at an address not a multiple of 16)
/// works on x86 and is a misaligned-address fault on the GPU; x86 takes a
/// shift count modulo 32 where PTX's `shl`/`shr` give 0 past 31; x86 turns
/// an out-of-range float-to-int conversion into `INT_MIN` where the GPU
/// saturates; and a signed overflow is undefined for nvcc as for the host
/// compiler.
const UNDEFINED_BEHAVIOUR: &str = "alignment,shift,signed-integer-overflow,float-cast-overflow,bounds,null,return,unreachable,vla-bound,bool,enum";

/// Compiles `driver` (relative to the crate root) over the staged kernels
/// with `-fsanitize=<sanitizer>` and [`UNDEFINED_BEHAVIOUR`] into `name`, or
/// returns `None` when there is no C++ compiler ($CXX, else `c++`), which
/// fails under CI. A compile error panics with the compiler's message.
fn build(name: &str, driver: &str, sanitizer: &str) -> Option<PathBuf> {
    let exe = scratch_dir(name).join(name);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut command = Command::new(&cxx);
    command
        .args(["-std=c++17", "-O1", "-g", "-pthread"])
        .arg(format!("-fsanitize={sanitizer},{UNDEFINED_BEHAVIOUR}"))
        .arg(format!("-fno-sanitize-recover={UNDEFINED_BEHAVIOUR}"))
        .args(["-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-psabi"]);
    command.arg("-I").arg(staged_kernels());
    match command
        .arg(root().join(driver))
        .arg("-o")
        .arg(&exe)
        .output()
    {
        Ok(o) if o.status.success() => Some(exe),
        Ok(o) => panic!(
            "{cxx} failed on {driver}:\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => {
            let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
            assert!(
                !ci,
                "no C++ compiler ({cxx}: {e}); CI requires the host emulation"
            );
            eprintln!("skipped: no C++ compiler ({cxx}: {e})");
            None
        }
    }
}

/// tests/host_emulation/`driver`.cpp over the staged kernels, built once
/// per test binary and sanitizer ("address" or "thread"); `None` as
/// [`build`].
pub fn emulator(driver: &str, sanitizer: &str) -> Option<PathBuf> {
    static BUILT: Mutex<Option<HashMap<String, Option<PathBuf>>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let key = format!("{driver}_{sanitizer}");
    built
        .get_or_insert_with(HashMap::new)
        .entry(key.clone())
        .or_insert_with(|| {
            build(
                &key,
                &format!("tests/host_emulation/{driver}.cpp"),
                sanitizer,
            )
        })
        .clone()
}

/// Runs `exe` on `launch` (written to a fresh file) and returns what it
/// wrote to its output file; panics with its stderr when it fails.
pub fn run(exe: &Path, launch: &[u8]) -> Vec<u8> {
    let dir = scratch_dir("run");
    let (launch_file, out_file) = (dir.join("launch.bin"), dir.join("out.bin"));
    std::fs::write(&launch_file, launch).unwrap();
    let run = Command::new(exe)
        .arg(&launch_file)
        .arg(&out_file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "host emulation {} failed:\n{}",
        exe.display(),
        String::from_utf8_lossy(&run.stderr)
    );
    let out = std::fs::read(&out_file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    out
}

/// Runs `exe` on `launch`, which must fail with a message containing
/// `expected`: the planted-fault tests, which show a check can fail.
pub fn assert_run_stops(exe: &Path, launch: &[u8], expected: &str) {
    let Err(failure) = std::panic::catch_unwind(|| run(exe, launch)) else {
        panic!("the run passed; expected it to stop on \"{expected}\"");
    };
    let message = failure
        .downcast_ref::<String>()
        .expect("run's panic message");
    assert!(message.contains(expected), "{message}");
}

/// A test's seed for its inputs: `NVLM_VISION_SEED`, else the clock, so
/// each run draws fresh values; printed with the test's name so that a
/// failing draw can be repeated.
pub fn fresh_seed(test: &str) -> u64 {
    let seed = std::env::var("NVLM_VISION_SEED")
        .map(|v| v.parse().expect("NVLM_VISION_SEED: a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: NVLM_VISION_SEED={seed} repeats this draw");
    seed
}

/// The size and seed of a by-hand random search (the ignored tests with
/// `random` in their names): `NVLM_VISION_EMULATED_CASES` cases (default
/// 8), drawn from [`fresh_seed`].
pub fn random_search(test: &str) -> (u64, u64) {
    let count = std::env::var("NVLM_VISION_EMULATED_CASES")
        .map(|v| v.parse().expect("NVLM_VISION_EMULATED_CASES: a count"))
        .unwrap_or(8);
    (count, fresh_seed(test))
}

/// A random search's draws (xorshift64 from the seed), for the shapes it
/// tries.
pub struct Draws(u64);

impl Draws {
    pub fn new(seed: u64) -> Draws {
        Draws(seed | 1)
    }

    /// Uniform-ish in `0..n` (the modulo's bias is immaterial here).
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The emulated device memory's first address (any 16-byte aligned one).
pub const DEVICE_BASE: u64 = 0x7f00_0000_0000;

/// The device memory of one launch: buffers 256-byte aligned in one blob
/// that starts at [`DEVICE_BASE`], each after a guard band of at least
/// [`GUARD_BYTES`] that the emulator fails the run for changing: a write
/// outside every buffer. Under the address sanitizer the bands are also
/// poisoned, so a read of one, or a write, is reported where it happens;
/// the thread sanitizer's runs see only the changed bands. A launch file
/// adds one more band after the last buffer.
#[derive(Default)]
pub struct Memory {
    bytes: Vec<u8>,
    /// (offset, length) of each guard band.
    guards: Vec<(usize, usize)>,
}

/// The least gap between two buffers.
pub const GUARD_BYTES: usize = 256;

/// The guard bands' bytes, repeated from an offset that is a multiple of
/// 4: NaN read as f32, bf16 or f16 (so a float read of one shows in the
/// output; a byte or integer read gets 0xFF and 0xC1 bytes), and unlike
/// the 0xFF the tests poison outputs with.
const GUARD_PATTERN: [u8; 4] = [0xFF, 0xFF, 0xC1, 0xFF];

/// The guard band over the memory's byte offsets `range`.
fn guard_band(range: std::ops::Range<usize>) -> impl Iterator<Item = u8> {
    range.map(|i| GUARD_PATTERN[i % GUARD_PATTERN.len()])
}

impl Memory {
    /// Appends `data` after a guard band; returns its device address.
    pub fn put<E: bytemuck::Pod>(&mut self, data: &[E]) -> u64 {
        let guard = self.bytes.len();
        let at = (guard + GUARD_BYTES).next_multiple_of(256);
        self.bytes.extend(guard_band(guard..at));
        self.guards.push((guard, at - guard));
        self.bytes.extend_from_slice(bytemuck::cast_slice(data));
        DEVICE_BASE + at as u64
    }

    /// Takes the memory image a run returned as this memory's contents
    /// (dropping the band a launch file adds after the last buffer), for
    /// the next launch over it.
    pub fn set_from_run(&mut self, image: &[u8]) {
        let len = self.bytes.len();
        self.bytes.copy_from_slice(&image[..len]);
    }

    /// The memory's bytes, as [`Memory::get`] reads them.
    pub fn image(&self) -> &[u8] {
        &self.bytes
    }

    /// `len` elements at device `address` of a memory image.
    pub fn get<E: bytemuck::Pod>(image: &[u8], address: u64, len: usize) -> Vec<E> {
        let at = (address - DEVICE_BASE) as usize;
        bytemuck::pod_collect_to_vec(&image[at..at + len * size_of::<E>()])
    }
}

/// A tensor map as the emulator takes it: what `cuTensorMapEncodeTiled`
/// would be given, dimensions past `rank` unused.
pub struct EmulatedTensorMap {
    pub address: u64,
    pub rank: u64,
    pub element_bytes: u64,
    pub dims: [u64; 4],
    pub strides_bytes: [u64; 4],
    pub box_dims: [u64; 4],
    pub swizzle_bytes: u64,
}

impl EmulatedTensorMap {
    /// The map `TensorMap::tiled` would encode for `t` (rank 1 to 4);
    /// panics, as that would fail, on a tensor that breaks the driver's
    /// rules ([`TiledTensor::check`]).
    pub fn of<const R: usize>(t: &TiledTensor<R>) -> EmulatedTensorMap {
        t.check().unwrap_or_else(|e| panic!("{e}"));
        assert!(
            R <= 4,
            "the emulator holds tensor maps of rank 4 at most, not {R}"
        );
        let padded = |v: [u64; R]| std::array::from_fn(|d| v.get(d).copied().unwrap_or(1));
        EmulatedTensorMap {
            address: t.address,
            rank: R as u64,
            element_bytes: t.element.size_bytes(),
            dims: padded(t.dims),
            strides_bytes: padded(t.strides_bytes),
            box_dims: padded(t.box_dims.map(u64::from)),
            swizzle_bytes: match t.swizzle {
                TmaSwizzle::None => 0,
                TmaSwizzle::B32 => 32,
                TmaSwizzle::B64 => 64,
                TmaSwizzle::B128 => 128,
            },
        }
    }
}

/// One kernel launch for an emulator.
pub struct LaunchFile<'a> {
    pub kernel: &'a str,
    /// Grid, block and dynamic shared memory, as launched.
    pub config: LaunchConfig,
    /// The kernel's parameter struct, as launched.
    pub params: &'a [u8],
    /// Byte offsets in `params` of device addresses.
    pub pointers: &'a [usize],
    pub maps: &'a [EmulatedTensorMap],
    pub memory: &'a Memory,
}

impl LaunchFile<'_> {
    /// The launch file; the memory gets one more guard band after its last
    /// buffer.
    pub fn bytes(&self) -> Vec<u8> {
        let end = self.memory.bytes.len();
        let mut guards = self.memory.guards.clone();
        guards.push((end, GUARD_BYTES));
        let mut file = b"NVLMEMU2".to_vec();
        let mut put = |v: u64| file.extend_from_slice(&v.to_le_bytes());
        for v in [
            DEVICE_BASE,
            (end + GUARD_BYTES) as u64,
            self.config.grid_dim.0.into(),
            self.config.grid_dim.1.into(),
            self.config.grid_dim.2.into(),
            self.config.block_dim.0.into(),
            self.config.block_dim.1.into(),
            self.config.block_dim.2.into(),
            self.config.shared_mem_bytes.into(),
            self.params.len() as u64,
            self.pointers.len() as u64,
            self.maps.len() as u64,
            guards.len() as u64,
            self.kernel.len() as u64,
        ] {
            put(v);
        }
        file.extend_from_slice(self.kernel.as_bytes());
        let mut put = |v: u64| file.extend_from_slice(&v.to_le_bytes());
        for &offset in self.pointers {
            put(offset as u64);
        }
        for m in self.maps {
            put(m.address);
            put(m.rank);
            put(m.element_bytes);
            m.dims
                .iter()
                .chain(&m.strides_bytes)
                .chain(&m.box_dims)
                .for_each(|&v| put(v));
            put(m.swizzle_bytes);
        }
        for &(offset, len) in &guards {
            put(offset as u64);
            put(len as u64);
        }
        file.extend_from_slice(self.params);
        file.extend_from_slice(&self.memory.bytes);
        file.extend(guard_band(end..end + GUARD_BYTES));
        file
    }
}

/// The bytes of a parameter struct.
///
/// # Safety
/// `P` has no padding bytes (abi.h orders every struct's fields so).
pub unsafe fn param_bytes<P: Copy>(params: &P) -> &[u8] {
    // SAFETY: `params` is a live `P`, read as its size in bytes, every one
    // initialised (no padding, by the caller's promise).
    unsafe { std::slice::from_raw_parts((params as *const P).cast::<u8>(), size_of::<P>()) }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// The names that follow each `marker` in `text`, up to `close`.
    fn names_after(text: &str, marker: &str, close: char) -> BTreeSet<String> {
        text.split(marker)
            .skip(1)
            .filter_map(|rest| rest.split_once(close).map(|(name, _)| name.to_string()))
            .collect()
    }

    /// "Every kernel also runs on the CPU" (README) stays true: each entry
    /// function ptxas compiled in this build is in a driver's table (whose
    /// macros, EMU_KERNEL and EMU_CLUSTER_KERNEL, name an entry by the
    /// kernel itself), and each kernel a table holds is one of the build's.
    #[test]
    fn every_kernel_entry_runs_in_an_emulation_driver() {
        let Some(report) = crate::cuda::ptxas_report() else {
            println!("skipped: this build has no kernels (nvcc was not found)");
            return;
        };
        let built = names_after(report, "entry function '", '\'');
        let mut emulated = BTreeSet::new();
        for entry in std::fs::read_dir(super::root().join("tests/host_emulation")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "cpp") {
                let driver = std::fs::read_to_string(&path).unwrap();
                emulated.extend(names_after(&driver, "EMU_KERNEL(", ')'));
                emulated.extend(
                    names_after(&driver, "EMU_CLUSTER_KERNEL(", ')')
                        .iter()
                        .filter_map(|args| args.rsplit_once(", ").map(|(_, k)| k.to_string())),
                );
            }
        }
        assert!(built.len() > 40, "{built:?}");
        let missing: Vec<_> = built.difference(&emulated).collect();
        assert!(
            missing.is_empty(),
            "kernels no emulation driver runs: {missing:?}"
        );
        let unknown: Vec<_> = emulated.difference(&built).collect();
        assert!(
            unknown.is_empty(),
            "drivers name kernels the build lacks: {unknown:?}"
        );
    }
}
