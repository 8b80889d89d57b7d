#!/usr/bin/env bash
# Runs a GPU bundle (made by scripts/gpu_bundle.sh) on a GPU host:
# every GPU test with the GPU required, then the same tests under
# compute-sanitizer memcheck, racecheck and initcheck. Logs and a summary
# table go to RESULTS_DIR.
#
#   run.sh RESULTS_DIR
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
results=${1:?usage: run.sh RESULTS_DIR}
mkdir -p "$results"
export NVLM_VISION_REQUIRE_GPU=1 NVLM_VISION_FIXTURES="$here/fixtures"
summary="$results/summary.md"
{
    echo "# GPU bundle run, $(date -u +%Y-%m-%dT%H:%MZ)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | sed 's/^/card: /'
    echo
    echo "| step | exit code | log |"
    echo "|---|---|---|"
} > "$summary"

step() {  # step NAME COMMAND...
    local name=$1; shift
    "$@" > "$results/$name.log" 2>&1
    local rc=$?
    echo "| $name | $rc | $name.log |" >> "$summary"
}

for test in "$here"/bin/*; do
    name=$(basename "$test")
    step "$name" "$test" --test-threads=1
    if command -v compute-sanitizer > /dev/null; then
        for tool in memcheck racecheck initcheck; do
            step "$name-$tool" compute-sanitizer --tool "$tool" --error-exitcode 99 "$test" --test-threads=1
        done
    else
        echo "| compute-sanitizer | missing | - |" >> "$summary"
    fi
done
cp "$here/ptxas_report.txt" "$results/"
cat "$summary"
