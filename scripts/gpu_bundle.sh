#!/usr/bin/env bash
# Builds the GPU test bundle: release, stripped executables with the kernels
# embedded, the fixtures, the ptxas report and run.sh, in one folder small
# enough to carry to a GPU host that has no Rust toolchain.
#
#   scripts/gpu_bundle.sh [BUNDLE_DIR]     (default: bundle/)
#   then, on the GPU host:  BUNDLE_DIR/run.sh RESULTS_DIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle=${1:-$root/bundle}
cd "$root"
NVCC=${NVCC:-$(scripts/install_nvcc.sh)}
export NVCC NVLM_VISION_REQUIRE_NVCC=1

rm -rf "$bundle"
mkdir -p "$bundle/bin"
# Every test and bench executable that touches the GPU. `--message-format`
# names the built files, so no path is guessed.
cargo test --release --no-run --test gpu_preprocess --message-format=json-render-diagnostics \
    | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable"):
        print(m["target"]["name"], m["executable"])
' | while read -r name exe; do
    cp "$exe" "$bundle/bin/$name"
done
strip "$bundle"/bin/*
cp -r tests/fixtures "$bundle/fixtures"
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
report=$(ls -t "$target_dir"/release/build/nvlm-vision-*/out/ptxas_report.txt | head -1)
cp "$report" "$bundle/ptxas_report.txt"
cp scripts/gpu_run.sh "$bundle/run.sh"
du -sh "$bundle"
