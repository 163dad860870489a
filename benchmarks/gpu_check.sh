#!/usr/bin/env bash
# Every GPU check in one call (about 6-9 minutes on an H100/H200); JSON lines on stdout, tables
# and progress on stderr. Needs python with torch and torchvision (no Hydra, no MLflow, no
# network) and the FashionMNIST files, gzipped or not, in $DATA_ROOT/FashionMNIST/raw/ (default
# .data, git-ignored). pytest is taken from the machine or from .gpu/pylib (git-ignored; see
# benchmarks/README.md for how to fill it).
#   mkdir -p .data/FashionMNIST/raw && cp /usr/share/datasets/fashion-mnist/*.gz .data/FashionMNIST/raw/
#   bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DATA_ROOT=${DATA_ROOT:-.data}
raw="$DATA_ROOT/FashionMNIST/raw"

if ! "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "gpu_check.sh: no CUDA GPU visible to $PY (torch.cuda.is_available() is False); nothing to check" >&2
    exit 2
fi
if ! compgen -G "$raw/train-images-idx3-ubyte*" >/dev/null; then
    echo "gpu_check.sh: no FashionMNIST files in $raw; copy the official (.gz) files there" >&2
    exit 2
fi
export PYTHONPATH="$PWD:$PWD/.gpu/pylib${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import tqdm' 2>/dev/null; then
    # hw3.engine.train shows progress with tqdm; without it, a stand-in that shows nothing.
    shim=$(mktemp -d)
    trap 'rm -rf "$shim"' EXIT
    printf 'def tqdm(iterable, *args, **kwargs):\n    return iterable\n' >"$shim/tqdm.py"
    PYTHONPATH="$shim:$PYTHONPATH"
fi

"$PY" -c 'import json, torch; print(json.dumps({"check": "device", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}))'
status=0
# 1. CUDA graphs vs eager and reruns, bit for bit with deterministic kernels (the test suite's
#    CUDA test; conftest needs Hydra, so without it).
if "$PY" -c 'import pytest' 2>/dev/null; then
    "$PY" -m pytest -q -p no:cacheprovider --noconftest tests/engine/test_cuda.py >&2 || status=1
else
    echo '{"check": "test_cuda", "skipped": "no pytest: fill .gpu/pylib"}'
fi
# 2. L̂ in float32 vs float64; determinism: bits and what deterministic kernels cost per pass.
"$PY" benchmarks/gpu_numerics.py --device cuda --data-root "$DATA_ROOT" || status=1
# 3. Seconds per pass against the straightforward loop (hw3 10 passes, the reference 1).
for model in plain bn stride; do
    out=$("$PY" benchmarks/speed.py --device cuda --model "$model" --passes 10 \
        --reference-passes 1 --data-root "$DATA_ROOT") || status=1
    sed '$d' <<<"$out" >&2
    tail -n 1 <<<"$out"
done
# 4. Seconds per landscape measurement: K = 1, 4, 16 directions, 5 scales, sharpness.
"$PY" benchmarks/landscape.py --device cuda --data-root "$DATA_ROOT" || status=1
# 5. experiment=batchnorm's 10 runs in series vs trained as one group; the SGD-step options.
"$PY" benchmarks/group.py --device cuda --data-root "$DATA_ROOT" || status=1
exit "$status"
