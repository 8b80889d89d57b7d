#!/usr/bin/env bash
# Installs the pinned libclang wheel into .toolchain/libclang and prints the
# folder holding libclang.so, for bindgen's LIBCLANG_PATH. Pinned rather than
# taken from the system so that regenerating src/abi.rs gives the same text
# on every machine.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target="$root/.toolchain/libclang"
if [ ! -d "$target/clang/native" ]; then
    ${PYTHON:-python3} -m pip install --quiet --disable-pip-version-check --no-deps --target "$target" libclang==18.1.1 >&2
fi
echo "$target/clang/native"
