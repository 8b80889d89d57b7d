#!/usr/bin/env bash
# Runs a GPU bundle (made by scripts/gpu_bundle.sh) on a GPU host.
#
#   run.sh RESULTS_DIR [PHASE...]      PHASE: tests sanitize bench peers all
#
#   tests     every gpu test binary, GPU required, one test at a time; the
#             preprocess example's --device cuda .npy against its
#             --device cpu one, byte for byte, on fixture images; and the
#             attention example (portable, then on a 9.0 card the Hopper
#             kernel), which fails on a non-finite output
#   sanitize  compute-sanitizer memcheck, racecheck, synccheck, initcheck
#             (each tool over every gpu test binary before the next tool),
#             skipping tests named `*_at_model_shapes*`; the sm_90a tests
#             after all the others, unless one of them timed out in this run.
#             NVLM_VISION_SANITIZE_TOOLS (a space-separated list) runs only
#             those tools, in that order; NVLM_VISION_SANITIZE_SKIP (test
#             name filters, space-separated) skips more tests: a whole pass
#             takes longer than one 15-minute lease
#   bench     every gpu bench binary (criterion, short times; results under
#             RESULTS_DIR/criterion); without the sm_90a kernels when a
#             Hopper test step of this run timed out
#   peers     every peer script with python3, JSON lines into RESULTS_DIR/peers
#   all       (default) tests, peers, bench, sanitize: numbers before the
#             slow sanitizer, in case time runs out
#
# One log per step in RESULTS_DIR. It ends by printing the tails of failed
# steps' logs and then summary.md (card, exit code and seconds per step,
# per-stage timing table with ratios to the peers), so the end of the output
# says what happened. Exit code: 0 when every step passed, 1 when one failed,
# 2 when it could not start (usage, no GPU).
#
# Time limits per step (seconds): NVLM_VISION_TEST_TIMEOUT (default 300),
# NVLM_VISION_HOPPER_TIMEOUT (90, the sm_90a tests, run after the others;
# at least twice what the same binary's other tests took),
# NVLM_VISION_SANITIZE_TIMEOUT (300; the sm_90a tests under it get
# NVLM_VISION_HOPPER_SANITIZE_TIMEOUT, 120), NVLM_VISION_BENCH_TIMEOUT (150),
# NVLM_VISION_PEER_TIMEOUT (120); and for the whole run,
# NVLM_VISION_RUN_BUDGET (540): a step gets at most what is left of it, and
# steps past it are recorded as skipped, so the summary is printed before a
# caller's own limit (a device tool's 600 s, say) cuts the run off.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
usage="usage: run.sh RESULTS_DIR [tests|sanitize|bench|peers|all ...]"
if [ $# -lt 1 ] || [[ $1 == -* ]]; then
    echo "$usage" >&2
    exit 2
fi
results=$(mkdir -p "$1" && cd "$1" && pwd) || { echo "run.sh: cannot create $1" >&2; exit 2; }
shift
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(all)
for p in "${phases[@]}"; do
    case $p in
        tests | sanitize | bench | peers) ;;
        all) phases=(tests peers bench sanitize); break ;;
        *) echo "run.sh: unknown phase '$p'; $usage" >&2; exit 2 ;;
    esac
done
read -r -a tools <<< "${NVLM_VISION_SANITIZE_TOOLS:-memcheck racecheck synccheck initcheck}"
for tool in "${tools[@]}"; do
    case $tool in
        memcheck | racecheck | synccheck | initcheck) ;;
        *) echo "run.sh: unknown compute-sanitizer tool '$tool' in NVLM_VISION_SANITIZE_TOOLS" >&2; exit 2 ;;
    esac
done
# Tests every sanitizer step skips: the model shapes, and the caller's.
sanitize_skip=(--skip _at_model_shapes)
read -r -a extra_skip <<< "${NVLM_VISION_SANITIZE_SKIP:-}"
for filter in ${extra_skip[@]+"${extra_skip[@]}"}; do sanitize_skip+=(--skip "$filter"); done

export NVLM_VISION_REQUIRE_GPU=1 NVLM_VISION_FIXTURES="$here/fixtures"
: > "$results/steps.tsv"
cp "$here/ptxas_report.txt" "$results/"

if ! card=$(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1); then
    echo "no GPU: nvidia-smi failed: ${card:-not found}" > "$results/card.txt"
    echo "run.sh: no usable NVIDIA GPU on this host (nvidia-smi: ${card:-not found}); nothing run" >&2
    python3 "$here/gpu_summary.py" "$results" > /dev/null 2>&1
    exit 2
fi
echo "$card" > "$results/card.txt"
# On a compute capability 9.0 card the Hopper tests must run, not skip.
if [ "$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2> /dev/null | head -n 1)" = 9.0 ]; then
    export NVLM_VISION_REQUIRE_HOPPER=1
fi

# cuBLASLt (the GEMMs) is loaded by name at run time, CUDA 13's
# (libcublasLt.so.13) being what the crate is built against. When the
# loader does not know it, look where a CUDA toolkit or the pip wheels (a
# PyTorch image's nvidia-cublas) keep it, and put that folder on
# LD_LIBRARY_PATH. (ldconfig may be outside a non-root PATH; its list is
# read whole, as `grep -q` on a pipe under pipefail can fail at random.)
loader=$({ command -v ldconfig > /dev/null && ldconfig -p || /sbin/ldconfig -p; } 2> /dev/null)
if ! grep -q 'libcublasLt\.so\.13' <<< "$loader"; then
    roots=()
    for home in "${CUDA_HOME:-}" "${CUDA_PATH:-}" /usr/local/cuda; do
        [ -n "$home" ] && roots+=("$home/lib64" "$home/lib" "$home/targets/x86_64-linux/lib")
    done
    mapfile -t -O ${#roots[@]} roots < <(python3 -c 'import site; print("\n".join(p + "/nvidia" for p in site.getsitepackages()))' 2> /dev/null)
    for root in "${roots[@]}"; do
        found=$(find "$root" -maxdepth 3 -name 'libcublasLt.so.13*' 2> /dev/null | sort | head -n 1)
        if [ -n "$found" ]; then
            export LD_LIBRARY_PATH="$(dirname "$found")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
            break
        fi
    done
fi
known=$(grep -m 1 -o '/[^ ]*libcublasLt\.so[^ ]*' <<< "$loader" || echo "none")
if grep -q 'libcublasLt\.so\.13' <<< "$loader"; then
    where="the loader's: $known"
elif [ -n "${found:-}" ]; then
    where="$found (its folder put on LD_LIBRARY_PATH)"
else
    where="no libcublasLt.so.13 found; the loader knows $known"
fi
echo "cuBLASLt: $where; LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" > "$results/libraries.txt"

failed=0
# Set when a Hopper step times out: a hang (TMA, mbarrier), which would hold
# every later step that runs those kernels to its limit. A wrong result
# does not set it.
hopper_hung=0
hopper_step() {  # as step; a timeout sets hopper_hung
    step "$@"
    local rc=$?
    if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then hopper_hung=1; fi
    return $rc
}
# Whether test binary $1 lists a test named *hopper*. The list is read
# whole: `grep -q` on a pipe would close it early, and the binary's
# broken-pipe exit would fail the pipeline under pipefail.
lists_hopper_tests() {
    grep -q 'hopper.*: test$' <<< "$("$1" --list 2> /dev/null)"
}
# Seconds each test binary's portable tests took (the Hopper step's limit).
declare -A portable_seconds=()
budget=${NVLM_VISION_RUN_BUDGET:-540}
step() {  # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2; shift 2
    local start=$SECONDS left=$((budget - SECONDS))
    if [ "$left" -lt 10 ]; then
        printf '%s\tskipped\t0\t-\n' "$name" >> "$results/steps.tsv"
        failed=1
        return 1
    fi
    [ "$left" -lt "$limit" ] && limit=$left
    echo "run.sh: $name" >&2
    timeout --kill-after=10 "$limit" "$@" > "$results/$name.log" 2>&1
    local rc=$?
    [ $rc -eq 124 ] && echo "run.sh: timed out after ${limit}s" >> "$results/$name.log"
    [ $rc -ne 0 ] && failed=1
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" "$name.log" >> "$results/steps.tsv"
    return $rc
}

shopt -s nullglob
tests=("$here"/bin/tests/*)
benches=("$here"/bin/benches/*)
peers=("$here"/peers/peer_*.py)

# The preprocess example on the GPU and on the CPU: equal .npy files.
# Arguments: the example, the fixture images folder.
example_parity='
set -eu
example=$1 images=$2
work=$(mktemp -d)
trap "rm -rf $work" EXIT
for case in photo_rocket.jpg:f32 photo_logo_RGBA.png:f32 photo_camera_L.png:f32 \
    synth_1920x1080.png:f32 synth_1x4000.png:f32 photo_rocket.jpg:bf16 photo_rocket.jpg:f16; do
    image=${case%%:*} dtype=${case##*:}
    for device in cpu cuda; do
        "$example" "$images/$image" --dtype "$dtype" --device "$device" \
            --npy "$work/$device.npy" --sheet "$work/$device.png" > "$work/$device.txt"
    done
    if ! cmp "$work/cpu.npy" "$work/cuda.npy"; then
        echo "$image $dtype: --device cuda and --device cpu .npy differ"
        exit 1
    fi
    echo "$image $dtype: --device cuda .npy equals --device cpu, $(wc -c < "$work/cpu.npy") bytes"
done
'

sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)

for phase in "${phases[@]}"; do
    case $phase in
    tests)
        # sm_90a (Hopper) code runs after everything else and on a short
        # leash (NVLM_VISION_HOPPER_TIMEOUT, 90 s): a hang in TMA/mbarrier
        # code must not take the other tests, or the run's budget, with it.
        # Hopper tests are the binaries named *hopper* and the tests named
        # *hopper* in the others.
        for t in "${tests[@]}"; do
            case $(basename "$t") in *hopper*) continue ;; esac
            started=$SECONDS
            step "test-$(basename "$t")" "${NVLM_VISION_TEST_TIMEOUT:-300}" \
                "$t" --test-threads=1 --skip hopper
            portable_seconds[$(basename "$t")]=$((SECONDS - started))
        done
        example="$here/bin/examples/preprocess"
        if [ -x "$example" ]; then
            step example-preprocess "${NVLM_VISION_TEST_TIMEOUT:-300}" \
                bash -c "$example_parity" example "$example" "$here/fixtures/images"
        fi
        attention_example="$here/bin/examples/attention"
        if [ -x "$attention_example" ]; then
            step example-attention "${NVLM_VISION_TEST_TIMEOUT:-300}" "$attention_example"
        fi
        for t in "${tests[@]}"; do
            name=$(basename "$t")
            case $name in
            *hopper*)
                hopper_step "test-$name" "${NVLM_VISION_HOPPER_TIMEOUT:-90}" \
                    "$t" --test-threads=1 ;;
            *)
                if lists_hopper_tests "$t"; then
                    limit=${NVLM_VISION_HOPPER_TIMEOUT:-90}
                    twice=$((2 * ${portable_seconds[$name]:-0}))
                    [ "$twice" -gt "$limit" ] && limit=$twice
                    hopper_step "test-$name-hopper" "$limit" "$t" --test-threads=1 hopper
                fi ;;
            esac
        done
        if [ -x "$attention_example" ] && [ -n "${NVLM_VISION_REQUIRE_HOPPER:-}" ]; then
            hopper_step example-attention-hopper "${NVLM_VISION_HOPPER_TIMEOUT:-90}" \
                "$attention_example" --kernel hopper
        fi ;;
    sanitize)
        if [ -z "$sanitizer" ]; then
            printf 'compute-sanitizer\tmissing\t0\t-\n' >> "$results/steps.tsv"
            failed=1
            continue
        fi
        # Tool by tool, so a short budget still covers every binary with
        # memcheck (out-of-bounds accesses) before the slower tools; the
        # sm_90a tests after all of that, where a hang costs only what is
        # left, and not at all once one has timed out.
        for tool in "${tools[@]}"; do
            for t in "${tests[@]}"; do
                case $(basename "$t") in *hopper*) continue ;; esac
                step "$tool-$(basename "$t")" "${NVLM_VISION_SANITIZE_TIMEOUT:-300}" \
                    "$sanitizer" --tool "$tool" --error-exitcode 99 \
                    "$t" --test-threads=1 "${sanitize_skip[@]}" --skip hopper
            done
        done
        for tool in "${tools[@]}"; do
            for t in "${tests[@]}"; do
                name=$(basename "$t")
                case $name in
                *hopper*) stepname=$tool-$name filter=() ;;
                *)
                    lists_hopper_tests "$t" || continue
                    stepname=$tool-$name-hopper filter=(hopper) ;;
                esac
                if [ "$hopper_hung" = 1 ]; then
                    printf '%s\tskipped\t0\t-\n' "$stepname" >> "$results/steps.tsv"
                    continue
                fi
                hopper_step "$stepname" "${NVLM_VISION_HOPPER_SANITIZE_TIMEOUT:-120}" \
                    "$sanitizer" --tool "$tool" --error-exitcode 99 \
                    "$t" --test-threads=1 "${sanitize_skip[@]}" ${filter[@]+"${filter[@]}"}
            done
        done ;;
    bench)
        # Short times; criterion keeps its results under CRITERION_HOME for
        # the summary. The sm_90a kernels are left out when a Hopper test
        # timed out: one that hangs would hold each bench to its time limit.
        export CRITERION_HOME="$results/criterion"
        if [ "$hopper_hung" = 1 ]; then
            export NVLM_VISION_BENCH_SKIP_HOPPER="a Hopper test step timed out in this run"
        fi
        for b in "${benches[@]}"; do
            step "bench-$(basename "$b")" \
                "${NVLM_VISION_BENCH_TIMEOUT:-150}" "$b" --bench --noplot \
                --warm-up-time 0.5 --measurement-time 1 --sample-size 20
        done ;;
    peers)
        mkdir -p "$results/peers"
        for p in "${peers[@]}"; do
            name=$(basename "$p" .py)
            # stdout is the JSON lines; stderr the log.
            step "$name" "${NVLM_VISION_PEER_TIMEOUT:-120}" \
                bash -c 'exec python3 "$1" > "$2"' peer "$p" "$results/peers/$name.jsonl"
        done ;;
    esac
done

# The tails of failed steps first, then the summary last: the caller may see
# only the end of the output.
while IFS=$'\t' read -r name rc _ log; do
    if [ "$rc" != 0 ] && [ "$rc" != skipped ] && [ -f "$results/$log" ]; then
        echo "---- $name (exit $rc): last lines of $log"
        grep -v '^\s*$' "$results/$log" | tail -n 8 | cut -c1-200
    fi
done < "$results/steps.tsv"
echo
python3 "$here/gpu_summary.py" "$results"
exit $failed
