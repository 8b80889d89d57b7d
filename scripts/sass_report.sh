#!/usr/bin/env bash
# Reads the SASS of this build's kernels without a GPU: for each kernel of
# each embedded fatbin and architecture, counts the instructions that say
# whether a kernel is on the path it was written for (HGMMA = wgmma, HMMA =
# mma.sync, UTMALDG/UTMASTG = TMA) and whether it touches local memory
# (LDL/STL: spilled or dynamically indexed registers).
#
#   scripts/sass_report.sh [OUT_DIR]   (default: the newest debug build's)
#
# Installs the pinned cuobjdump/nvdisasm wheels into .toolchain/sass once
# (no 13.0 wheels of these exist; a newer disassembler reads older code).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.toolchain/sass"
if [ ! -x "$tools/nvidia/cu13/bin/cuobjdump" ]; then
    ${PYTHON:-python3} -m pip install --quiet --disable-pip-version-check --no-deps --target "$tools" \
        nvidia-cuda-cuobjdump==13.5.37 nvidia-cuda-nvdisasm==13.5.37 >&2
fi
export PATH="$tools/nvidia/cu13/bin:$PATH"
out=${1:-$(ls -td "$root"/target/debug/build/nvlm-vision-*/out | head -1)}
printf '%-16s %-40s %-6s %6s %6s %6s %6s %6s\n' file kernel arch HGMMA HMMA TMA LDL STL
for fatbin in "$out"/*.fatbin; do
    cuobjdump --dump-sass "$fatbin" | awk -v file="$(basename "$fatbin" .fatbin)" '
        /code for sm_/ { if (fn != "") emit(); fn = ""; arch = $3 }
        /Function :/ { if (fn != "") emit(); fn = $3; h = m = t = l = s = 0 }
        /HGMMA/ { h++ } /HMMA/ { m++ } /UTMALDG|UTMASTG/ { t++ } /[[:space:]]LDL/ { l++ } /[[:space:]]STL/ { s++ }
        function emit() { printf "%-16s %-40s %-6s %6d %6d %6d %6d %6d\n", file, fn, arch, h, m, t, l, s }
        END { if (fn != "") emit() }'
done
