//! Builds the host emulations of the kernels (tests/host_emulation): a
//! kernel's own CUDA source compiled as C++ for the CPU under a sanitizer,
//! which unit tests run where no GPU is in reach. Test-only.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The crate's root, where kernels/ and tests/ are.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fresh directory under this test process's temporary folder.
pub fn scratch_dir(what: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "nvlm-vision-emu-{}/{what}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Compiles `driver` (relative to the crate root) with `include_dirs` and
/// `-fsanitize=<sanitizer>` into `name`, or returns `None` when there is no
/// C++ compiler ($CXX, else `c++`), which fails under CI. A compile error
/// panics with the compiler's message.
pub fn build(
    name: &str,
    driver: &str,
    include_dirs: &[PathBuf],
    sanitizer: &str,
) -> Option<PathBuf> {
    let exe = scratch_dir(name).join(name);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let mut command = Command::new(&cxx);
    command
        .args(["-std=c++17", "-O1", "-g", "-pthread"])
        .arg(format!("-fsanitize={sanitizer}"))
        .args(["-Wall", "-Werror", "-Wno-unknown-pragmas", "-Wno-psabi"]);
    for dir in include_dirs {
        command.arg("-I").arg(dir);
    }
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
