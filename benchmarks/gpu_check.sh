#!/usr/bin/env bash
# Issue 4's GPU checks in one go (about 3-8 minutes on an H100); JSON lines on stdout, tables
# and progress on stderr. Needs python with torch and torchvision (no Hydra, no MLflow) and the
# FashionMNIST files, gzipped or not, in $DATA_ROOT/FashionMNIST/raw/ (default .data, git-ignored):
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
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import tqdm' 2>/dev/null; then
    # hw3.engine.train shows progress with tqdm; without it, a stand-in that shows nothing.
    shim=$(mktemp -d)
    trap 'rm -rf "$shim"' EXIT
    printf 'def tqdm(iterable, *args, **kwargs):\n    return iterable\n' >"$shim/tqdm.py"
    PYTHONPATH="$shim:$PYTHONPATH"
fi

"$PY" -c 'import json, torch; print(json.dumps({"check": "device", "gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}))'
status=0
for model in plain bn stride; do
    # hw3 for 10 passes; the straightforward reference for 1 (the ratio is per pass).
    out=$("$PY" benchmarks/speed.py --device cuda --model "$model" --passes 10 \
        --reference-passes 1 --data-root "$DATA_ROOT") || status=1
    sed '$d' <<<"$out" >&2
    tail -n 1 <<<"$out"
done
"$PY" benchmarks/gpu_numerics.py --device cuda --data-root "$DATA_ROOT" || status=1
# experiment=batchnorm's 10 jobs in series vs 2 and 5 at once on the one GPU (5 passes each).
"$PY" benchmarks/sweep.py --device cuda --passes 5 --jobs 2 5 --data-root "$DATA_ROOT" || status=1
exit "$status"
