//! Compiles `kernels/*.cu` into fatbins embedded in the crate.
//!
//! nvcc is looked for in `NVCC`, `CUDA_HOME`/`CUDA_PATH`, `PATH` and
//! `/usr/local/cuda`. Without it the crate builds CPU-only (a warning; GPU
//! entry points return `Error::CudaUnavailable`), unless
//! `NVLM_VISION_REQUIRE_NVCC=1`, which makes it a build error.
//!
//! Targets: SASS for sm_80 and sm_90a plus compute_80 PTX, or the list in
//! `NVLM_VISION_CUDA_ARCHS` (e.g. `80,90a`; the first also gets PTX), or the
//! single `CUDA_COMPUTE_CAP` (`90` builds `90a`). No fast-math: the
//! preprocessing kernel has a bit-exact contract.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(nvlm_vision_kernels)");
    println!("cargo::rerun-if-changed=kernels");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "PATH",
        "NVLM_VISION_CUDA_ARCHS",
        "CUDA_COMPUTE_CAP",
        "NVLM_VISION_REQUIRE_NVCC",
    ] {
        println!("cargo::rerun-if-env-changed={var}");
    }
    let required = std::env::var("NVLM_VISION_REQUIRE_NVCC").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc() else {
        assert!(
            !required,
            "NVLM_VISION_REQUIRE_NVCC=1 but no nvcc found (NVCC, CUDA_HOME, CUDA_PATH, PATH, /usr/local/cuda); scripts/install_nvcc.sh installs one"
        );
        println!(
            "cargo::warning=nvcc not found: building nvlm-vision without CUDA kernels (CPU paths only)"
        );
        return;
    };
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let gencode = gencode_flags();
    let mut report = String::new();
    let mut kernels: Vec<PathBuf> = std::fs::read_dir("kernels")
        .expect("kernels/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    kernels.sort();
    for cu in &kernels {
        let stem = cu.file_stem().unwrap().to_str().unwrap();
        let fatbin = out_dir.join(format!("{stem}.fatbin"));
        let output = Command::new(&nvcc)
            .args([
                "-fatbin",
                "-std=c++17",
                "-O3",
                "-Ikernels",
                "-Xptxas",
                "-v",
                "-Werror",
                "all-warnings",
            ])
            .args(&gencode)
            .arg(cu)
            .arg("-o")
            .arg(&fatbin)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", nvcc.display()));
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "nvcc failed on {}:\n{log}",
            cu.display()
        );
        for line in log.lines().filter(|l| has_spills(l) || hinders_wgmma(l)) {
            println!("cargo::warning={stem}.cu: {}", line.trim());
        }
        report.push_str(&format!("== {stem}.cu ({})\n{log}\n", gencode.join(" ")));
    }
    std::fs::write(out_dir.join("ptxas_report.txt"), report).unwrap();
    println!("cargo::rustc-cfg=nvlm_vision_kernels");
}

fn find_nvcc() -> Option<PathBuf> {
    let env_path = |var: &str, rel: &str| std::env::var_os(var).map(|v| PathBuf::from(v).join(rel));
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("nvcc"))
            .find(|p| p.is_file())
    });
    [
        std::env::var_os("NVCC").map(PathBuf::from),
        env_path("CUDA_HOME", "bin/nvcc"),
        env_path("CUDA_PATH", "bin/nvcc"),
        on_path,
        Some("/usr/local/cuda/bin/nvcc".into()),
    ]
    .into_iter()
    .flatten()
    .find(|p| Path::new(p).is_file())
}

fn gencode_flags() -> Vec<String> {
    let archs: Vec<String> = if let Ok(list) = std::env::var("NVLM_VISION_CUDA_ARCHS") {
        list.split(',')
            .map(|a| a.trim().to_string())
            .filter(|a| !a.is_empty())
            .collect()
    } else if let Ok(cap) = std::env::var("CUDA_COMPUTE_CAP") {
        // Hopper code needs the arch-specific target for wgmma/setmaxnreg.
        vec![if cap == "90" { "90a".to_string() } else { cap }]
    } else {
        vec!["80".into(), "90a".into()]
    };
    assert!(!archs.is_empty(), "NVLM_VISION_CUDA_ARCHS is empty");
    let mut flags: Vec<String> = archs
        .iter()
        .map(|a| format!("-gencode=arch=compute_{a},code=sm_{a}"))
        .collect();
    // PTX of the lowest arch lets newer GPUs JIT the kernels.
    flags.push(format!(
        "-gencode=arch=compute_{0},code=compute_{0}",
        archs[0]
    ));
    flags
}

/// A ptxas note ("Potential Performance Loss") that it serialised a
/// kernel's wgmmas (C7510-C7520: each then waits for the one before, and
/// the overlap the kernel was written for is gone) or injected a
/// `warpgroup.arrive` between them (C7519: a wait on register writes).
fn hinders_wgmma(line: &str) -> bool {
    line.contains("wgmma.mma_async instructions are serialized")
        || line.contains("warpgroup.arrive is injected")
}

/// A ptxas line that reports spills or a local stack.
fn has_spills(line: &str) -> bool {
    let count_before = |needle: &str| {
        line.find(needle)
            .and_then(|i| line[..i].split_whitespace().last()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    count_before("bytes spill stores") > 0
        || count_before("bytes spill loads") > 0
        || count_before("bytes stack frame") > 0
}
