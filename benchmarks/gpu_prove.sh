#!/usr/bin/env bash
# Proves here, on the CPU, what gpu_pack.sh packed (run by `bash benchmarks/gpu_pack.sh --prove`):
# 1. each CPython 3.11-3.13 found on this machine (python3.NN), with nothing but the pack on
#    PYTHONPATH, imports what run.py needs and uses a new SQLite store through MLflow (no torch:
#    these Pythons have none here);
# 2. a fresh venv with only torch, torchvision and tqdm ($BARE_VENV, default /tmp/hw3-bare; made
#    if missing), set up by gpu_site.sh exactly as gpu_check.sh sets up the GPU machine, trains
#    experiment=smoke through the batched launcher to six FINISHED runs.
set -euo pipefail
cd "$(dirname "$0")/.."
source benchmarks/gpu_site.sh
BARE_VENV=${BARE_VENV:-/tmp/hw3-bare}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

find_python() { # VERSION: a CPython VERSION of this machine (on PATH, or pyenv's), or nothing
    local candidate
    for candidate in "python$1" "${PYENV_ROOT:-$HOME/.pyenv}/versions/$1".*/bin/"python$1"; do
        if "$candidate" -c '' 2>/dev/null; then
            echo "$candidate"
            return
        fi
    done
}

for tag in .gpu/cp3*.txt; do
    version=$(basename "$tag" .txt | sed 's/^cp3/3./')
    PY=$(find_python "$version")
    if [ -z "$PY" ]; then
        echo "gpu_prove.sh: CPython $version: not on this machine; its $(wc -l <"$tag") wheels are unproven"
        continue
    fi
    (
        gpu_site gpu_prove.sh "$work/py$version" || exit 2
        cd "$work"
        "$PY" -I -S - "$work/py$version" "$OLDPWD" <<'EOF'
import sys

site, root = sys.argv[1:]
sys.path[:0] = [f"{site}/site", root]  # -I -S: no PYTHONPATH, no site-packages, only the pack
import glob
from importlib.metadata import version

import cryptography.fernet  # noqa: F401
import hydra  # noqa: F401
import pydantic_core  # noqa: F401
import pytest  # noqa: F401
import tqdm  # noqa: F401
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

for path in glob.glob(f"{root}/conf/**/*.yaml", recursive=True):
    OmegaConf.to_container(OmegaConf.load(path))
client = MlflowClient(f"sqlite:///{site}/mlflow.db")
run = client.create_run(client.create_experiment("prove")).info.run_id
client.log_metric(run, "x", 1.0, step=1)
client.set_terminated(run)
assert client.get_run(run).info.status == "FINISHED"
names = ("mlflow-skinny", "hydra-core", "SQLAlchemy", "pydantic", "pytest")
print(
    f"gpu_prove.sh: CPython {sys.version.split()[0]}: imports and a new SQLite store work",
    f"(libyaml {yaml.__with_libyaml__};", ", ".join(f"{n} {version(n)}" for n in names) + ")",
)
EOF
    )
done

if [ ! -x "$BARE_VENV/bin/python" ]; then
    echo "gpu_prove.sh: making $BARE_VENV with torch, torchvision and tqdm only" >&2
    python3 -m venv "$BARE_VENV"
    "$BARE_VENV/bin/pip" install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 tqdm
fi
PY=$BARE_VENV/bin/python
if "$PY" -c 'import hydra' 2>/dev/null || "$PY" -c 'import mlflow' 2>/dev/null; then
    echo "gpu_prove.sh: $BARE_VENV is not bare (it has Hydra or MLflow); remove it" >&2
    exit 1
fi
gpu_site gpu_prove.sh "$work/bare" || exit 2
"$PY" -m pytest -q -p no:cacheprovider tests/engine/test_cuda.py # collected, skipped: no CUDA
store=$work/store
started=$SECONDS
sweep_command "$work/bare" "$store"
"${SWEEP_CMD[@]}" experiment=smoke trainer.device=cpu
echo "gpu_prove.sh: the smoke sweep took $((SECONDS - started)) s in $BARE_VENV ($("$PY" -V))"
"$PY" - "$store" <<'EOF'
import sys

from mlflow.tracking import MlflowClient

client = MlflowClient(f"sqlite:///{sys.argv[1]}/mlflow.db")
experiment = client.get_experiment_by_name("hw3-smoke").experiment_id
runs = [r for r in client.search_runs([experiment]) if "mlflow.parentRunId" in r.data.tags]
finished = sorted(r.info.run_name for r in runs if r.info.status == "FINISHED")
print(f"gpu_prove.sh: {len(finished)} of {len(runs)} runs FINISHED: {', '.join(finished)}")
sys.exit(0 if len(finished) == len(runs) == 6 else 1)
EOF
