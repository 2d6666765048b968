#!/usr/bin/env bash
# Set up tlvision in ./.venv on a fresh machine: torch and torchvision first (from the local
# disk where the machine has them), then tlvision itself with its dev tools and
# the export extra (ONNX, ONNX Runtime).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev,export,serve]"
echo "tlvision installed in $(pwd)/.venv; try: .venv/bin/tlvision demo"
