#!/usr/bin/env bash
# Creates (or reuses) the virtual environment and installs the package with its test tools.
# torch is installed first and only if missing, so a user who put their own torch (e.g. a CUDA build) into the
# venv keeps it. Without a GPU we never let pip resolve plain `torch`, which pulls a multi-GB CUDA build.
set -euo pipefail
VENV=${1:-.venv}
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
EXTRAS=${EXTRAS:-test,demo,browser}  # demo: gradio; browser: selenium (the demo's browser tests)

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
        pip install "$TORCH" --index-url "$TORCH_INDEX_URL"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        pip install "$TORCH"  # PyPI's default Linux build carries CUDA
    elif pip download --no-index --no-deps --dest "$(mktemp -d)" "$TORCH" >/dev/null 2>&1; then
        # A local CPU wheel (pip's find-links): it sorts above PyPI's CUDA build of the same version (+cpu).
        pip install "$TORCH"
    else
        pip install "$TORCH" --index-url https://download.pytorch.org/whl/cpu
    fi
fi
pip install -e ".[$EXTRAS]"
