#!/usr/bin/env bash
# Builds the GPU bundle: release, stripped executables of every test target
# and every bench target named `gpu_*` (kernels embedded), the `preprocess`
# example (run.sh compares its `--device cuda` output with `--device cpu`'s)
# and the `attention` example, every `scripts/peer_*.py` and the timing
# module they share, the fixtures, the ptxas report, the summariser and
# run.sh, in one folder small enough to carry to a GPU host that has no
# Rust toolchain.
#
#   scripts/gpu_bundle.sh [BUNDLE_DIR]     (default: bundle/)
#   then, on the GPU host:  BUNDLE_DIR/run.sh RESULTS_DIR [tests|sanitize|bench|peers|all ...]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$root/bundle}
max_mib=60
cd "$root"
NVCC=${NVCC:-$(scripts/install_nvcc.sh)}
export NVCC NVLM_VISION_REQUIRE_NVCC=1

# The targets, by naming convention, from cargo's own list.
mapfile -t selectors < <(cargo metadata --format-version 1 --no-deps | python3 -c '
import json, sys
for pkg in json.load(sys.stdin)["packages"]:
    for t in pkg["targets"]:
        kind = t["kind"][0]
        if kind in ("test", "bench") and t["name"].startswith("gpu_"):
            print(f"--{kind}"); print(t["name"])
')
if [ ${#selectors[@]} -eq 0 ]; then
    echo "gpu_bundle: no test or bench target is named gpu_*" >&2
    exit 1
fi

rm -rf "$bundle"
mkdir -p "$bundle/bin/tests" "$bundle/bin/benches" "$bundle/bin/examples" "$bundle/peers"
# Two builds: the tests and benches, then the examples. Cargo's JSON
# messages name each executable and the build script's output folder (the
# ptxas report), so no path is guessed.
# A harness = false bench built by `cargo test` is the same program `cargo
# bench` builds: criterion's main, which benchmarks when given `--bench`.
list_artifacts() {
    python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["kind"][0], m["target"]["name"], m["executable"])
    elif m.get("reason") == "build-script-executed" and "nvlm-vision" in m["package_id"]:
        print("out_dir", "-", m["out_dir"])
'
}
cargo test --release --no-run "${selectors[@]}" --message-format=json-render-diagnostics \
    | list_artifacts > "$bundle/artifacts.txt"
cargo build --release --example preprocess --example attention --message-format=json-render-diagnostics \
    | list_artifacts >> "$bundle/artifacts.txt"

while read -r kind name path; do
    case $kind in
        test) cp "$path" "$bundle/bin/tests/$name" ;;
        bench) cp "$path" "$bundle/bin/benches/$name" ;;
        example) cp "$path" "$bundle/bin/examples/$name" ;;
        out_dir) cp "$path/ptxas_report.txt" "$bundle/ptxas_report.txt" ;;
    esac
done < "$bundle/artifacts.txt"
rm "$bundle/artifacts.txt"
if [ ! -f "$bundle/ptxas_report.txt" ]; then
    echo "gpu_bundle: cargo reported no build script output for nvlm-vision (no ptxas report)" >&2
    exit 1
fi
strip "$bundle"/bin/*/*

shopt -s nullglob
for peer in scripts/peer_*.py; do
    cp "$peer" "$bundle/peers/"
done
cp scripts/gpu_timing.py "$bundle/peers/"  # the peers' timing, imported beside them
cp -r tests/fixtures "$bundle/fixtures"
cp scripts/gpu_run.sh "$bundle/run.sh"
cp scripts/gpu_summary.py "$bundle/gpu_summary.py"

echo "gpu_bundle: $(ls "$bundle/bin/tests" | wc -l) tests, $(ls "$bundle/bin/benches" | wc -l) benches, $(ls "$bundle"/peers/peer_*.py | wc -l) peer scripts"
ls "$bundle"/bin/* "$bundle/peers"
size_mib=$(du -sm "$bundle" | cut -f1)
echo "gpu_bundle: $bundle is $size_mib MiB"
if [ "$size_mib" -ge "$max_mib" ]; then
    echo "gpu_bundle: over the ${max_mib} MiB limit" >&2
    exit 1
fi
