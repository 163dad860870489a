#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs on a bare GPU machine (torch only, no network) into
# git-ignored folders that the device tool carries: .data/ (the gzipped FashionMNIST files) and
# .gpu/pylib/ (pytest and its pure-Python dependencies, for tests/engine/test_cuda.py).
#   bash benchmarks/gpu_pack.sh      # then carry [".data", ".gpu"] and run: bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup
raw=.data/FashionMNIST/raw
mkdir -p "$raw"
for name in train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do
    if [ -f "/usr/share/datasets/fashion-mnist/$name.gz" ]; then
        cp "/usr/share/datasets/fashion-mnist/$name.gz" "$raw/"
    elif [ -f "data/FashionMNIST/raw/$name" ]; then
        gzip -c "data/FashionMNIST/raw/$name" >"$raw/$name.gz"
    else
        echo "gpu_pack.sh: no $name here (scripts/setup or a first run fetches it)" >&2
        exit 2
    fi
done
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT
# Pure-Python wheels, so that any Python >= 3.10 on the GPU machine can import them.
"$HW3_PY" -m pip download -q --no-deps --only-binary=:all: --platform any --python-version 3.10 \
    --implementation py -d "$wheels" pytest pluggy iniconfig packaging pygments exceptiongroup tomli
rm -rf .gpu/pylib && mkdir -p .gpu/pylib
for wheel in "$wheels"/*.whl; do
    "$HW3_PY" -m zipfile -e "$wheel" .gpu/pylib
done
du -sh .data .gpu >&2
