#!/usr/bin/env bash
# Prints the path of an nvcc: the one already found (NVCC, CUDA_HOME/CUDA_PATH,
# PATH, /usr/local/cuda), else the pinned CUDA 13.0 compiler wheels installed
# into .toolchain/cuda. All parts are pinned: unpinned, pip mixes in 13.x
# parts whose PTX a 13.0 driver rejects (REFERENCE.md §8).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
for candidate in "${NVCC:-}" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" \
                 "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then
        echo "$candidate"
        exit 0
    fi
done
target="$root/.toolchain/cuda"
nvcc="$target/nvidia/cu13/bin/nvcc"
if [ ! -x "$nvcc" ]; then
    ${PYTHON:-python3} -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" \
        nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
        nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
fi
"$nvcc" --version >&2
echo "$nvcc"
