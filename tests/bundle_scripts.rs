//! The GPU bundle's run script and summariser (scripts/gpu_run.sh,
//! scripts/gpu_summary.py), run here on a fabricated bundle: stand-in test,
//! bench and peer programs and a stand-in `nvidia-smi` and
//! `compute-sanitizer` on PATH, so the phases, their arguments, the exit
//! codes and the timing table are checked without a GPU.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn python3_or_skip(test: &str) -> bool {
    let found = Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found || !common::under_ci(),
        "{test}: python3 is required under CI"
    );
    if !found {
        eprintln!("skipped: no python3 ({test})");
    }
    found
}

fn write_exe(path: &Path, text: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A fresh folder for one test under cargo's per-target scratch space.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A bundle laid out as scripts/gpu_bundle.sh lays it out, with the real
/// run.sh and summariser and stand-in programs; `tools` holds the stand-in
/// `nvidia-smi` (printing `card`, or failing when `None`) and
/// `compute-sanitizer` (which runs the program it is given).
fn fake_bundle(dir: &Path, card: Option<&str>) -> (PathBuf, PathBuf) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let bundle = dir.join("bundle");
    write_exe(
        &bundle.join("run.sh"),
        &fs::read_to_string(root.join("scripts/gpu_run.sh")).unwrap(),
    );
    fs::copy(
        root.join("scripts/gpu_summary.py"),
        bundle.join("gpu_summary.py"),
    )
    .unwrap();
    fs::write(bundle.join("ptxas_report.txt"), "ptxas info: fake\n").unwrap();
    fs::create_dir_all(bundle.join("fixtures")).unwrap();
    // Tests: one passes, one fails; both log their arguments and the GPU policy.
    // gpu_good lists one Hopper test (run in a step of its own) and then far
    // more than a pipe holds, so that a reader that stops at the match
    // breaks the pipe; every test in gpu_hopper_prims is one.
    write_exe(
        &bundle.join("bin/tests/gpu_good"),
        "#!/bin/sh\nif [ \"$1\" = --list ]; then echo 'plain: test'; echo 'hopper_case: test'\n\
         i=0; while [ $i -lt 20000 ]; do echo \"filler_$i: test\"; i=$((i + 1)); done; exit 0; fi\n\
         echo \"args: $*\"\necho \"require: $NVLM_VISION_REQUIRE_GPU\"\n\
         echo \"require hopper: $NVLM_VISION_REQUIRE_HOPPER\"\necho \"ld: $LD_LIBRARY_PATH\"\n",
    );
    // FAKE_HOPPER_FAILS makes gpu_hopper_prims fail, FAKE_HOPPER_HANGS hang.
    write_exe(
        &bundle.join("bin/tests/gpu_hopper_prims"),
        "#!/bin/sh\necho \"args: $*\"\nif [ -n \"$FAKE_HOPPER_FAILS\" ]; then exit 101; fi\n\
         if [ -n \"$FAKE_HOPPER_HANGS\" ]; then sleep 60; fi\n",
    );
    // The preprocess example: its .npy holds the image's name and the dtype,
    // so the two devices agree, unless FAKE_DEVICES_DIFFER adds the device.
    write_exe(
        &bundle.join("bin/examples/preprocess"),
        "#!/bin/sh\nimage=$1; shift\nwhile [ $# -gt 0 ]; do case $1 in\n\
         --dtype) dtype=$2 ;; --device) device=$2 ;; --npy) npy=$2 ;; esac; shift 2; done\n\
         echo \"$(basename \"$image\") $dtype\" > \"$npy\"\n\
         if [ -n \"$FAKE_DEVICES_DIFFER\" ]; then echo \"$device\" >> \"$npy\"; fi\n",
    );
    // The attention example: logs its arguments.
    write_exe(
        &bundle.join("bin/examples/attention"),
        "#!/bin/sh\necho \"attention args: $*\"\n",
    );
    write_exe(
        &bundle.join("bin/tests/gpu_bad"),
        "#!/bin/sh\necho \"args: $*\"\necho 'assertion failed: kernel wrote NaN'\nexit 3\n",
    );
    // A bench that leaves criterion's files: 250 µs and 1000 µs medians.
    let estimate = |full_id: &str, dir: &str, ns: f64| {
        format!(
            "d=\"$CRITERION_HOME/{dir}/new\"; mkdir -p \"$d\"\n\
             echo '{{\"full_id\": \"{full_id}\"}}' > \"$d/benchmark.json\"\n\
             echo '{{\"median\": {{\"point_estimate\": {ns}}}}}' > \"$d/estimates.json\"\n"
        )
    };
    write_exe(
        &bundle.join("bin/benches/gpu_stage"),
        &format!(
            "#!/bin/sh\necho \"args: $*\"\necho \"skip hopper: $NVLM_VISION_BENCH_SKIP_HOPPER\"\n{}{}",
            estimate("stage/ours/big", "stage/ours/big", 250_000.0),
            estimate("stage/ours/small", "stage/ours/small", 1_000_000.0),
        ),
    );
    // A peer: chatter, two JSON lines (500 µs and 2000 µs), one bad line,
    // one row reporting an error instead of a time.
    write_exe(
        &bundle.join("peers/peer_stage.py"),
        "import json\n\
         print('a warning on stdout')\n\
         print(json.dumps({'stage': 'stage', 'impl': 'torch', 'case': 'big', 'median_us': 500.0}))\n\
         print(json.dumps({'stage': 'stage', 'impl': 'torch', 'case': 'small', 'median_us': 2000.0}))\n\
         print('{\"stage\": \"stage\"}')\n\
         print(json.dumps({'stage': 'stage', 'impl': 'flash', 'case': 'odd', 'error': 'head_dim 80 unsupported'}))\n",
    );
    let tools = dir.join("tools");
    // The compute capability query answers 9.0, or FAKE_COMPUTE_CAP.
    let smi = match card {
        Some(card) => format!(
            "#!/bin/sh\nif [ \"$1\" = --query-gpu=compute_cap ]; then echo \"${{FAKE_COMPUTE_CAP:-9.0}}\"; exit 0; fi\n\
             echo '{card}'\n"
        ),
        None => "#!/bin/sh\necho 'NVIDIA-SMI has failed because it could not communicate with the NVIDIA driver.'\nexit 9\n".to_string(),
    };
    write_exe(&tools.join("nvidia-smi"), &smi);
    // compute-sanitizer --tool T --error-exitcode 99 PROGRAM ARGS...
    write_exe(
        &tools.join("compute-sanitizer"),
        "#!/bin/sh\necho \"sanitizer $2\"\nshift 4\nexec \"$@\"\n",
    );
    (bundle, tools)
}

/// `run.sh RESULTS PHASES...` with the stand-in tools first on PATH, for
/// a test to add its own environment to.
fn bundle_command(bundle: &Path, tools: &Path, results: &Path, phases: &[&str]) -> Command {
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut command = Command::new(bundle.join("run.sh"));
    command.arg(results).args(phases).env("PATH", path);
    // What run.sh sets itself, not the caller's (a developer's Hopper
    // machine may export them).
    for var in [
        "NVLM_VISION_REQUIRE_HOPPER",
        "NVLM_VISION_BENCH_SKIP_HOPPER",
        "NVLM_VISION_RUN_BUDGET",
        "NVLM_VISION_SANITIZE_TOOLS",
        "NVLM_VISION_SANITIZE_SKIP",
    ] {
        command.env_remove(var);
    }
    command
}

fn run_bundle(bundle: &Path, tools: &Path, results: &Path, phases: &[&str]) -> Output {
    bundle_command(bundle, tools, results, phases)
        .output()
        .unwrap()
}

/// The names of the steps a run recorded in RESULTS/steps.tsv, in order.
fn step_names(results: &Path) -> Vec<String> {
    fs::read_to_string(results.join("steps.tsv"))
        .unwrap()
        .lines()
        .map(|l| l.split('\t').next().unwrap().to_string())
        .collect()
}

#[test]
fn run_script_runs_every_phase_and_summarises() {
    if !python3_or_skip("run_script_runs_every_phase_and_summarises") {
        return;
    }
    let dir = scratch("run_all");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H100 80GB HBM3, 580.65, 81559 MiB"));
    let results = dir.join("results");
    let out = run_bundle(&bundle, &tools, &results, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    // One failing test makes the run fail, after every phase ran.
    assert_eq!(out.status.code(), Some(1), "{stdout}");

    let names = step_names(&results);
    assert_eq!(
        names,
        [
            "test-gpu_bad",
            "test-gpu_good",
            "example-preprocess",
            "example-attention",
            "test-gpu_good-hopper",
            "test-gpu_hopper_prims",
            "example-attention-hopper",
            "peer_stage",
            "bench-gpu_stage",
            "memcheck-gpu_bad",
            "memcheck-gpu_good",
            "racecheck-gpu_bad",
            "racecheck-gpu_good",
            "synccheck-gpu_bad",
            "synccheck-gpu_good",
            "initcheck-gpu_bad",
            "initcheck-gpu_good",
            "memcheck-gpu_good-hopper",
            "memcheck-gpu_hopper_prims",
            "racecheck-gpu_good-hopper",
            "racecheck-gpu_hopper_prims",
            "synccheck-gpu_good-hopper",
            "synccheck-gpu_hopper_prims",
            "initcheck-gpu_good-hopper",
            "initcheck-gpu_hopper_prims",
        ]
    );
    let log = |name: &str| fs::read_to_string(results.join(format!("{name}.log"))).unwrap();
    assert!(log("test-gpu_good").contains("args: --test-threads=1 --skip hopper\nrequire: 1"));
    assert!(log("test-gpu_good").contains("require hopper: 1\n"));
    assert!(log("test-gpu_good-hopper").contains("args: --test-threads=1 hopper\n"));
    assert!(log("test-gpu_hopper_prims").contains("args: --test-threads=1\n"));
    assert!(
        log("example-preprocess")
            .contains("photo_rocket.jpg bf16: --device cuda .npy equals --device cpu"),
        "{}",
        log("example-preprocess")
    );
    assert_eq!(log("example-attention"), "attention args: \n");
    assert_eq!(
        log("example-attention-hopper"),
        "attention args: --kernel hopper\n"
    );
    assert!(
        log("memcheck-gpu_good")
            .contains("args: --test-threads=1 --skip _at_model_shapes --skip hopper\n")
    );
    assert!(
        log("memcheck-gpu_good-hopper")
            .contains("args: --test-threads=1 --skip _at_model_shapes hopper\n")
    );
    assert!(log("racecheck-gpu_good").starts_with("sanitizer racecheck"));
    assert!(log("synccheck-gpu_hopper_prims").starts_with("sanitizer synccheck"));
    assert!(log("bench-gpu_stage").contains("args: --bench"));
    assert!(log("bench-gpu_stage").contains("skip hopper: \n"));

    let summary = fs::read_to_string(results.join("summary.md")).unwrap();
    assert!(stdout.ends_with(&format!("{summary}\n")), "{stdout}");
    assert!(summary.starts_with("# GPU bundle run: NVIDIA H100 80GB HBM3"));
    assert!(
        summary.contains("| test-gpu_bad | 3 **FAIL** |"),
        "{summary}"
    );
    assert!(summary.contains("| test-gpu_good | 0 |"), "{summary}");
    // Ours first with the ratio to the peer (a stage the summariser does
    // not know: every peer), then the peer itself.
    assert!(
        summary
            .contains("| case | impl | median µs | TFLOP/s | compared with (their time ÷ this) |"),
        "{summary}"
    );
    assert!(
        summary.contains("| big | ours | 250.0 |  | torch 2.00× |"),
        "{summary}"
    );
    assert!(
        summary.contains("| big | torch | 500.0 |  |  |"),
        "{summary}"
    );
    assert!(
        summary.contains("| small | ours | 1000 |  | torch 2.00× |"),
        "{summary}"
    );
    assert!(
        summary.contains("- stage/flash/odd: head_dim 80 unsupported"),
        "{summary}"
    );
    // The failed step's log tail comes before the summary.
    let tail = stdout.find("assertion failed: kernel wrote NaN").unwrap();
    assert!(tail < stdout.find("# GPU bundle run").unwrap());
    assert!(
        fs::read_to_string(results.join("peers/peer_stage.jsonl"))
            .unwrap()
            .contains("\"median_us\": 2000.0")
    );
}

#[test]
fn run_script_runs_only_the_phases_named() {
    if !python3_or_skip("run_script_runs_only_the_phases_named") {
        return;
    }
    let dir = scratch("run_phases");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    let results = dir.join("results");
    let out = run_bundle(&bundle, &tools, &results, &["peers", "bench"]);
    assert_eq!(out.status.code(), Some(0));
    let names = step_names(&results);
    assert_eq!(names, ["peer_stage", "bench-gpu_stage"]);
}

/// Past the run's time budget every step is skipped, and the summary still
/// comes out, with a failing exit code since the run is incomplete.
#[test]
fn run_script_skips_steps_past_its_budget() {
    if !python3_or_skip("run_script_skips_steps_past_its_budget") {
        return;
    }
    let dir = scratch("run_budget");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    let results = dir.join("results");
    let out = bundle_command(&bundle, &tools, &results, &["tests", "peers"])
        .env("NVLM_VISION_RUN_BUDGET", "5")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let summary = fs::read_to_string(results.join("summary.md")).unwrap();
    for step in ["test-gpu_bad", "test-gpu_good", "peer_stage"] {
        assert!(
            summary.contains(&format!("| {step} | skipped | 0 | - |")),
            "{summary}"
        );
    }
    assert!(!results.join("test-gpu_good.log").exists());
}

#[test]
fn run_script_without_a_gpu_fails_clearly() {
    if !python3_or_skip("run_script_without_a_gpu_fails_clearly") {
        return;
    }
    let dir = scratch("run_no_gpu");
    let (bundle, tools) = fake_bundle(&dir, None);
    let results = dir.join("results");
    let out = run_bundle(&bundle, &tools, &results, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no usable NVIDIA GPU"), "{stderr}");
    assert!(
        !results.join("test-gpu_good.log").exists(),
        "nothing may run"
    );
    let summary = fs::read_to_string(results.join("summary.md")).unwrap();
    assert!(summary.contains("no GPU: nvidia-smi failed"), "{summary}");
}

/// A cuBLASLt the loader does not know is found in a toolkit's folder and
/// put on LD_LIBRARY_PATH for the tests, and the summary says where.
#[test]
fn run_script_puts_a_toolkits_cublaslt_on_the_loader_path() {
    let test = "run_script_puts_a_toolkits_cublaslt_on_the_loader_path";
    if !python3_or_skip(test) {
        return;
    }
    let known = Command::new("sh")
        .args([
            "-c",
            "ldconfig -p | grep 'libcublasLt\\.so\\.13' > /dev/null",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if known {
        eprintln!("skipped: this machine's loader already knows libcublasLt.so.13 ({test})");
        return;
    }
    let dir = scratch("run_cublaslt");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    let toolkit = dir.join("cuda");
    fs::create_dir_all(toolkit.join("lib64")).unwrap();
    fs::write(toolkit.join("lib64/libcublasLt.so.13"), "").unwrap();
    let results = dir.join("results");
    let out = bundle_command(&bundle, &tools, &results, &["tests"])
        .env("CUDA_HOME", &toolkit)
        .env_remove("LD_LIBRARY_PATH")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "gpu_bad fails");
    let lib = toolkit.join("lib64");
    let log = fs::read_to_string(results.join("test-gpu_good.log")).unwrap();
    assert!(log.contains(&format!("ld: {}\n", lib.display())), "{log}");
    let summary = fs::read_to_string(results.join("summary.md")).unwrap();
    assert!(
        summary.contains(&format!("LD_LIBRARY_PATH={}", lib.display())),
        "{summary}"
    );
}

/// The example's GPU output differing from its CPU output fails the step,
/// naming the image and dtype.
#[test]
fn run_script_fails_when_the_example_devices_differ() {
    if !python3_or_skip("run_script_fails_when_the_example_devices_differ") {
        return;
    }
    let dir = scratch("run_example_differs");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    fs::remove_file(bundle.join("bin/tests/gpu_bad")).unwrap();
    let results = dir.join("results");
    let out = bundle_command(&bundle, &tools, &results, &["tests"])
        .env("FAKE_DEVICES_DIFFER", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = fs::read_to_string(results.join("example-preprocess.log")).unwrap();
    assert!(
        log.contains("photo_rocket.jpg f32: --device cuda and --device cpu .npy differ"),
        "{log}"
    );
}

#[test]
fn run_script_refuses_an_unknown_phase() {
    let dir = scratch("run_bad_phase");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    let out = run_bundle(&bundle, &tools, &dir.join("results"), &["benches"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown phase 'benches'"));
}

/// `NVLM_VISION_SANITIZE_TOOLS` picks the sanitizer tools and their order,
/// `NVLM_VISION_SANITIZE_SKIP` adds test filters to every sanitizer step
/// (a whole pass does not fit one lease); an unknown tool is refused.
#[test]
fn sanitize_runs_the_chosen_tools_and_skips_the_named_tests() {
    let dir = scratch("run_sanitize_chosen");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    let results = dir.join("results");
    let out = bundle_command(&bundle, &tools, &results, &["sanitize"])
        .env("NVLM_VISION_SANITIZE_TOOLS", "initcheck racecheck")
        .env("NVLM_VISION_SANITIZE_SKIP", "slow_one other")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "gpu_bad fails");
    let names = step_names(&results);
    assert_eq!(
        names,
        [
            "initcheck-gpu_bad",
            "initcheck-gpu_good",
            "racecheck-gpu_bad",
            "racecheck-gpu_good",
            "initcheck-gpu_good-hopper",
            "initcheck-gpu_hopper_prims",
            "racecheck-gpu_good-hopper",
            "racecheck-gpu_hopper_prims",
        ]
    );
    let log = |name: &str| fs::read_to_string(results.join(format!("{name}.log"))).unwrap();
    let skips = "--skip _at_model_shapes --skip slow_one --skip other";
    assert!(
        log("initcheck-gpu_good")
            .contains(&format!("args: --test-threads=1 {skips} --skip hopper\n")),
        "{}",
        log("initcheck-gpu_good")
    );
    assert!(
        log("racecheck-gpu_good-hopper")
            .contains(&format!("args: --test-threads=1 {skips} hopper\n")),
        "{}",
        log("racecheck-gpu_good-hopper")
    );
    assert!(log("racecheck-gpu_hopper_prims").starts_with("sanitizer racecheck"));

    let out = bundle_command(&bundle, &tools, &dir.join("bad"), &["sanitize"])
        .env("NVLM_VISION_SANITIZE_TOOLS", "memcheck leakcheck")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown compute-sanitizer tool 'leakcheck'"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The peers' timing (scripts/gpu_timing.py) over a stand-in torch whose
/// GPU clock advances 100 µs per call and 1 µs per 2000 spin cycles: the
/// median is the per-call time (the spins before the calibration and each
/// sample left out), every sample holds the calls that fill 2 ms, and the
/// inputs are taken in turn. (The stand-in cannot model the host's pace.)
#[test]
fn peer_timing_divides_back_to_back_calls_by_their_count() {
    if !python3_or_skip("peer_timing_divides_back_to_back_calls_by_their_count") {
        return;
    }
    let dir = scratch("peer_timing");
    fs::create_dir_all(dir.join("torch")).unwrap();
    fs::write(
        dir.join("torch/__init__.py"),
        r#"
import types
clock_us = 0.0
calls = 0
spins = []
events = []
class Event:
    def __init__(self, enable_timing=False):
        events.append(self)
    def record(self):
        self.at, self.calls = clock_us, calls
    def synchronize(self):
        pass
    def elapsed_time(self, end):
        return (end.at - self.at) / 1e3
def _sleep(cycles):
    global clock_us
    spins.append(cycles)
    clock_us += cycles / 2000
cuda = types.SimpleNamespace(Event=Event, synchronize=lambda: None, _sleep=_sleep)
"#,
    )
    .unwrap();
    let script = r#"
import time, torch, gpu_timing
seen = []
def call(x):
    seen.append(x)
    time.sleep(0.0002)  # the host slower than the GPU's 100 us
    torch.clock_us += 100
    torch.calls += 1
us = gpu_timing.device_median_us(call, ["a", "b", "c"])
assert abs(us - 100) < 1e-6, us
samples = torch.events[-2 * gpu_timing.SAMPLES:]
assert all(e.calls - s.calls == 20 for s, e in zip(samples[::2], samples[1::2])), [e.calls for e in samples[:4]]
assert seen == ["abc"[i % 3] for i in range(len(seen))], seen[:7]
assert len(torch.spins) == gpu_timing.SAMPLES + 1 and min(torch.spins) > 0, torch.spins[:3]
print("ok", len(seen))
"#;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .env(
            "PYTHONPATH",
            format!("{}:{}", dir.display(), root.join("scripts").display()),
        )
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with("ok"),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Hopper test step that times out (a hang) leaves the sm_90a kernels
/// out of the benches and the Hopper sanitizer steps unrun; one that fails
/// with a wrong result leaves both in.
#[test]
fn run_script_benches_without_hopper_kernels_only_after_a_hopper_test_hung() {
    let dir = scratch("run_hopper_hung");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA H200"));
    for (fault, skipped) in [("FAKE_HOPPER_HANGS", true), ("FAKE_HOPPER_FAILS", false)] {
        let results = dir.join(format!("results-{fault}"));
        let out = bundle_command(&bundle, &tools, &results, &["tests", "bench", "sanitize"])
            .env(fault, "1")
            .env("NVLM_VISION_HOPPER_TIMEOUT", "1")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{fault}");
        let log = fs::read_to_string(results.join("bench-gpu_stage.log")).unwrap();
        let reason = if skipped {
            "a Hopper test step timed out in this run"
        } else {
            ""
        };
        assert!(
            log.contains(&format!("skip hopper: {reason}\n")),
            "{fault}: {log}"
        );
        let steps = fs::read_to_string(results.join("steps.tsv")).unwrap();
        assert_eq!(
            steps.contains("memcheck-gpu_hopper_prims\tskipped"),
            skipped,
            "{fault}: {steps}"
        );
    }
}

/// The summariser on the stages it knows: TFLOP/s from the case names, and
/// each row against the rows it is paired with (not every peer).
#[test]
fn summary_pairs_known_stages_and_counts_their_tflops() {
    if !python3_or_skip("summary_pairs_known_stages_and_counts_their_tflops") {
        return;
    }
    let results = scratch("summary_pairs");
    let write = |path: PathBuf, text: String| {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    };
    for (id, us) in [
        ("attention/nvlm-hopper/B7_H25_D128_N1025", 200.0),
        ("projector/nvlm-front/NVLM-D-72B_T7", 40.0),
        ("projector/linear1-hopper-gelu-n256/NVLM-D-72B_T7", 1500.0),
        ("projector/linear1-cublaslt-gelu-pass/NVLM-D-72B_T7", 1650.0),
        ("projector/linear1-hopper-gelu/NVLM-D-72B_T7", 1400.0),
        ("preprocess/nvlm-v4-first-sight/640x480", 300.0),
        ("preprocess/nvlm-v4/640x480", 60.0),
    ] {
        let dir = results
            .join("criterion")
            .join(id.replace('/', "_"))
            .join("new");
        write(
            dir.join("benchmark.json"),
            format!("{{\"full_id\": \"{id}\"}}"),
        );
        write(
            dir.join("estimates.json"),
            format!("{{\"median\": {{\"point_estimate\": {}}}}}", us * 1e3),
        );
    }
    let peer = |stage: &str, imp: &str, case: &str, us: f64| {
        format!(
            "{{\"stage\": \"{stage}\", \"impl\": \"{imp}\", \"case\": \"{case}\", \"median_us\": {us}}}\n"
        )
    };
    write(
        results.join("peers/peer.jsonl"),
        [
            peer("attention", "torch-sdpa-cudnn", "B7_H25_D128_N1025", 211.0),
            peer(
                "projector",
                "torch-eager-shuffle-ln",
                "NVLM-D-72B_T7",
                188.0,
            ),
            peer("projector", "torch-linear1-gelu", "NVLM-D-72B_T7", 1800.0),
        ]
        .concat(),
    );
    // The benches' dispatch lines: only a majority of host-bound samples
    // lists an id.
    write(
        results.join("bench-gpu_preprocess.log"),
        "Benchmarking preprocess/nvlm-v4/640x480\n\
         dispatch: preprocess/nvlm-v4/640x480: host 9.80 us/call, GPU 10.10 us/call, 11 of 20 samples host-bound\n\
         dispatch: preprocess/nvlm-v4/4032x3024: host 9.90 us/call, GPU 45.00 us/call, 10 of 20 samples host-bound\n"
            .into(),
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("python3")
        .arg(root.join("scripts/gpu_summary.py"))
        .arg(&results)
        .output()
        .unwrap();
    assert!(out.status.success());
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(
            "- preprocess/nvlm-v4/640x480: host 9.80 µs/call, GPU 10.10 µs/call (11 of 20 samples)"
        ),
        "{summary}"
    );
    assert!(!summary.contains("nvlm-v4/4032x3024"), "{summary}");
    for row in [
        // 4·7·25·1025²·128 FLOP in 200 µs.
        "| B7_H25_D128_N1025 | nvlm-hopper | 200.0 | 470.7 | torch-sdpa-cudnn 1.05× |",
        "| NVLM-D-72B_T7 | nvlm-front | 40.0 |  | torch-eager-shuffle-ln 4.70× |",
        // 2·(7·256)·12800·29568 FLOP in 1500 µs.
        "| NVLM-D-72B_T7 | linear1-hopper-gelu-n256 | 1500 | 904.3 | \
         torch-linear1-gelu 1.20×, linear1-cublaslt-gelu-pass 1.10× |",
        "| NVLM-D-72B_T7 | linear1-cublaslt-gelu-pass | 1650 | 822.1 | torch-linear1-gelu 1.09× |",
        "| NVLM-D-72B_T7 | linear1-hopper-gelu | 1400 | 968.9 | torch-linear1-gelu 1.29×, \
         linear1-cublaslt-gelu-pass 1.18×, linear1-hopper-gelu-n256 1.07× |",
        // A kernel's first sight against the same kernel with its tables kept.
        "| 640x480 | nvlm-v4-first-sight | 300.0 |  | nvlm-v4 0.20× |",
    ] {
        assert!(summary.contains(row), "no row {row}:\n{summary}");
    }
}

/// Only a compute capability 9.0 card makes the Hopper tests mandatory.
#[test]
fn run_script_requires_the_hopper_tests_on_compute_capability_9_0_only() {
    let dir = scratch("run_hopper_required");
    let (bundle, tools) = fake_bundle(&dir, Some("NVIDIA A100-SXM4-80GB"));
    let results = dir.join("results");
    bundle_command(&bundle, &tools, &results, &["tests"])
        .env("FAKE_COMPUTE_CAP", "8.0")
        .output()
        .unwrap();
    let log = fs::read_to_string(results.join("test-gpu_good.log")).unwrap();
    assert!(log.contains("require hopper: \n"), "{log}");
    // The example's Hopper kernel is not run where it cannot be.
    let steps = fs::read_to_string(results.join("steps.tsv")).unwrap();
    assert!(steps.contains("example-attention\t"), "{steps}");
    assert!(!steps.contains("example-attention-hopper"), "{steps}");
}
