#!/usr/bin/env bash
# Creates the two pinned Python environments the parity tests and the golden
# generator use: one per Pillow pass order. Prints nothing but errors; safe to
# rerun (an existing, complete environment is kept).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-python3}
for spec in "pillow12:pillow==12.3.0" "pillow13:pillow==13.0.0"; do
    name=${spec%%:*}
    pin=${spec#*:}
    venv="$root/.venv/$name"
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import PIL, numpy" 2>/dev/null; then
        continue
    fi
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --only-binary=:all: "$pin" "numpy==2.4.6"
done
