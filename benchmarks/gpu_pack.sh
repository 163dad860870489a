#!/usr/bin/env bash
# Packs what benchmarks/gpu_check.sh needs on a bare GPU machine (CPython 3.11-3.13 with torch
# and torchvision only, no network) into git-ignored folders to copy there with the clone:
#   .data/FashionMNIST/raw/*.gz  the official data files, gzipped (29.5 MiB)
#   .gpu/wheels.tar.xz           what run.py, the CUDA tests and the benchmarks import beyond
#                                torch: Hydra, the MLflow client with its SQLite store, pytest,
#                                tqdm; at this venv's versions (the store's schema must match the
#                                MLflow that reads it back here)
#   .gpu/cp3NN.txt               the wheels for CPython 3.NN: the pure ones, shared by every
#                                version, and that version's binary ones
#   .gpu/commit                  the commit packed (the copy of the tree sent there has no .git)
# There, benchmarks/gpu_site.sh unpacks the list of the Python it finds into a new folder first
# on PYTHONPATH, or stops with one line naming what is missing.
#   bash benchmarks/gpu_pack.sh           # pack and print the sizes (.data + .gpu < 60 MiB)
#   bash benchmarks/gpu_pack.sh --prove   # pack, then prove it here (benchmarks/gpu_prove.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup
LIMIT_MIB=60 # what travels stays under 64 MiB: leave room for the tracked files
PYTHONS=(3.11 3.12 3.13) # pyproject.toml's requires-python, up to the newest proven
# Pure-Python packages: one wheel serves every version. Each at this venv's version, or where
# that release does not support an older Python, the newest earlier release that does.
PURE=(
    hydra-core omegaconf antlr4-python3-runtime # run.py's config (antlr4: OmegaConf's grammar)
    submitit cloudpickle          # hw3.tracking.cli imports submitit's errors for every launcher
    mlflow-skinny                 # the MLflow client; below, what `import mlflow` and its
    SQLAlchemy alembic Mako       # SQLite store import (alembic migrates a new store's schema)
    protobuf packaging sqlparse cachetools click importlib-metadata # (not zipp: zipped paths only)
    pydantic annotated-types typing-inspection typing-extensions
    opentelemetry-api opentelemetry-sdk opentelemetry-proto opentelemetry-semantic-conventions
    requests urllib3 idna certifi charset-normalizer # (requests warns without a charset detector)
    fastapi starlette anyio annotated-doc # mlflow.genai imports mlflow.gateway, which imports FastAPI
    databricks-sdk                # mlflow asks find_spec("databricks.agents"): `databricks` must exist
    tqdm                          # hw3.engine.train's progress bars
    pytest pluggy iniconfig pygments # tests/engine/test_cuda.py
)
# Binary packages, one wheel per version. PyYAML, MarkupSafe and SQLAlchemy would also run
# without their compiled parts, but SQLAlchemy alone ships a pure wheel (taken above).
BINARY=(
    PyYAML MarkupSafe pydantic-core # OmegaConf's YAML, Mako's escaping, pydantic's core
    cffi                            # cryptography's C bindings
)
# Binary packages built for CPython's stable ABI: the wheel for the oldest serves every later version.
ABI3=(cryptography) # the SQLite store's model-registry tables import cryptography.fernet
# Binary wheels for glibc 2.17-2.28: older than any machine with a current CUDA driver.
PLATFORMS=(manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 manylinux_2_28_x86_64)

prove=false
case "${1:-}" in
    "") ;;
    --prove) prove=true ;;
    *) echo "gpu_pack.sh: unknown option $1 (use --prove or nothing)" >&2; exit 2 ;;
esac

raw=.data/FashionMNIST/raw
rm -rf .data && mkdir -p "$raw" # only the .gz files: decompressed ones would not fit the carry
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

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pin() { # NAME...: NAME<=the venv's version of it (any version if the venv has none)
    "$HW3_PY" - "$@" <<'EOF'
import sys
from importlib.metadata import PackageNotFoundError, version
for name in sys.argv[1:]:
    try:
        print(f"{name}<={version(name)}")
    except PackageNotFoundError:
        print(name)
EOF
}
download() { # DIR PYTHON-VERSION PIP-OPTION... -- NAME...: their wheels for that Python into DIR
    local dir=$1 version=$2 options=() specs
    shift 2
    while [ "$1" != -- ]; do options+=("$1"); shift; done
    shift
    mapfile -t specs < <(pin "$@")
    "$HW3_PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
        --find-links "$tmp/built" --python-version "$version" "${options[@]}" -d "$dir" "${specs[@]}"
}
# antlr4-python3-runtime 4.9 (the only series OmegaConf 2.3 takes) is on PyPI as source only.
"$HW3_PY" -m pip wheel --quiet --disable-pip-version-check --no-deps -w "$tmp/built" \
    "$(pin antlr4-python3-runtime)"
binary=(--implementation cp)
for p in "${PLATFORMS[@]}"; do binary+=(--platform "$p"); done
download "$tmp/abi3" "${PYTHONS[0]}" "${binary[@]}" --abi abi3 -- "${ABI3[@]}"
rm -rf .gpu/wheels .gpu/wheels.tar.xz .gpu/cp3*.txt .gpu/pylib && mkdir -p .gpu "$tmp/all"
for version in "${PYTHONS[@]}"; do
    tag=cp${version/./}
    pure=("${PURE[@]}")
    download "$tmp/$tag" "$version" --implementation py --abi none --platform any -- "${pure[@]}"
    download "$tmp/$tag" "$version" "${binary[@]}" --abi "$tag" -- "${BINARY[@]}"
    cp "$tmp/abi3"/*.whl "$tmp/$tag/"
    (cd "$tmp/$tag" && ls -- *.whl) >".gpu/$tag.txt"
    cp -n "$tmp/$tag"/*.whl "$tmp/all/"
done
# A wheel is a zip deflated file by file; stored uncompressed in one xz archive, the wheels take
# about 40% less, which keeps .data + .gpu under the limit.
"$HW3_PY" - "$tmp/all" <<'EOF'
import sys
import zipfile
from pathlib import Path

for wheel in Path(sys.argv[1]).glob("*.whl"):
    with zipfile.ZipFile(wheel) as src:
        files = [(info, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_STORED) as dst:
        for info, data in files:
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, data)
EOF
(cd "$tmp/all" && ls -- *.whl | sort | XZ_OPT=-9 tar -cJf "$OLDPWD/.gpu/wheels.tar.xz" -T -)
echo "$(git rev-parse HEAD)$(git diff --quiet HEAD || echo ' (with uncommitted changes)')" >.gpu/commit

mib() { du -cb "$@" | awk 'END {printf "%.1f", $1 / 1048576}'; }
echo "gpu_pack.sh: .data $(mib .data) MiB + .gpu $(mib .gpu) MiB = $(mib .data .gpu) MiB" \
    "($(tar -tJf .gpu/wheels.tar.xz | wc -l) wheels for CPython ${PYTHONS[*]})" >&2
if awk "BEGIN {exit !($(mib .data .gpu) >= $LIMIT_MIB)}"; then
    echo "gpu_pack.sh: .data + .gpu is $(mib .data .gpu) MiB, over $LIMIT_MIB MiB: over what may travel with the tree" >&2
    exit 1
fi
if $prove; then
    exec bash benchmarks/gpu_prove.sh
fi
