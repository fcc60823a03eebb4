#!/usr/bin/env bash
# The wheels the lent GPU machine lacks (its image has torch, accelerate's deps, pyarrow, pillow...; not diffusers,
# datasets, torchdata), for its Python 3.12, into .whl/ (git-ignored through .git/info/exclude). Then, with the device
# tool: carry [".whl"] and run
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && python3 -m bench.device_report --device cuda --json $OUT/device_report.json
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
PIP=${PIP:-.venv/bin/pip}
# Pinned to what this project's venv runs (pip list), so the GPU run tests the same code.
PACKAGES=(diffusers==0.42.1 datasets==5.2.0 torchdata==0.11.0 accelerate==1.16.0 huggingface_hub==2.4.0
  hf-xet==1.8.0 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5 fsspec==2026.9.0 dill==0.4.1
  multiprocess==0.70.19 click==8.5.1 safetensors==0.8.0)
for platform in manylinux_2_28_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do PLATFORMS+=(--platform "$platform"); done
for package in "${PACKAGES[@]}"; do
  "$PIP" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d .whl "$package"
done
du -sh .whl
