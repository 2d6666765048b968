#!/usr/bin/env bash
# Set up tlvision in ./.venv on a fresh machine: torch and torchvision first (from the local
# disk where the machine has them), then tlvision itself with its dev tools and every extra
# (export: ONNX and ONNX Runtime; serve: FastAPI and uvicorn; tensorboard), and Debian's chromium
# for the browser tests.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.14.1" "torchvision==0.29.1"
.venv/bin/python -m pip install --quiet -e ".[dev,export,serve,tensorboard]"
# The serve page and report tests drive Debian's chromium with playwright (its own browser
# download needs the internet): install it where apt can, else say what the tests will skip.
if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" -eq 0 ] || command -v sudo > /dev/null; then
        SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
        $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium > /dev/null
    else
        echo "note: no /usr/bin/chromium and no root: the browser tests will be skipped"
    fi
fi
echo "tlvision installed in $(pwd)/.venv; try: .venv/bin/tlvision demo"
