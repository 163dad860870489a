# Sourced by benchmarks/gpu_check.sh (on the GPU machine) and benchmarks/gpu_prove.sh (here, the
# same set-up on the CPU): what gpu_pack.sh packed, made usable by the Python $PY.
#   gpu_site PROG DIR   unpacks the wheels listed for $PY's version (.gpu/cp3NN.txt) into
#                       DIR/site and puts it first on PYTHONPATH, with the project root; links the
#                       gzipped data into DIR/data (hw3 decompresses beside them: not into .data,
#                       which must stay small enough to carry); or says in one line what is
#                       missing and returns 2. Run from the project root.
gpu_site() {
    local prog=$1 dir=$2 impl version tag
    read -r impl version tag < <("$PY" -c 'import sys; v = sys.version_info; print(sys.implementation.name, f"{v[0]}.{v[1]}", f"cp{v[0]}{v[1]}")' 2>/dev/null) || true
    if [ -z "${tag:-}" ]; then
        echo "$prog: cannot run Python as $PY (set PYTHON to the one with torch)" >&2
        return 2
    elif [ ! -f .gpu/wheels.tar.xz ]; then
        echo "$prog: no .gpu/wheels.tar.xz: run bash benchmarks/gpu_pack.sh where pip works, and carry .gpu" >&2
        return 2
    elif [ "$impl" != cpython ] || [ ! -f ".gpu/$tag.txt" ]; then
        echo "$prog: no packed wheels for $impl $version ($PY); .gpu has wheels for CPython $(cd .gpu && ls -- cp3*.txt | sed 's/^cp3/3./; s/\.txt$//' | paste -sd ' '): add $version to PYTHONS in benchmarks/gpu_pack.sh and pack again" >&2
        return 2
    fi
    if ! compgen -G ".data/FashionMNIST/raw/*.gz" >/dev/null; then
        echo "$prog: no .data/FashionMNIST/raw/*.gz: run bash benchmarks/gpu_pack.sh and carry .data" >&2
        return 2
    fi
    "$PY" - .gpu/wheels.tar.xz ".gpu/$tag.txt" "$dir/site" <<'EOF' || return 2
import io
import sys
import tarfile
import zipfile
from pathlib import Path

archive, listing, site = sys.argv[1:]
wanted = set(Path(listing).read_text().split())
with tarfile.open(archive, "r:xz") as tar:
    for member in tar:
        if member.name in wanted:
            wanted.discard(member.name)
            zipfile.ZipFile(io.BytesIO(tar.extractfile(member).read())).extractall(site)
if wanted:
    sys.exit(f"gpu_site.sh: {archive} lacks {', '.join(sorted(wanted))}: pack again")
EOF
    mkdir -p "$dir/data/FashionMNIST/raw"
    ln -s "$PWD"/.data/FashionMNIST/raw/*.gz "$dir/data/FashionMNIST/raw/"
    export PYTHONPATH="$dir/site:$PWD"
}

sweep_command() { # DIR STORE: SWEEP_CMD, run.py -m through the batched launcher on DIR/data,
    # into STORE/mlflow.db, with checkpoints in STORE/checkpoints and Hydra's files in DIR
    SWEEP_CMD=("$PY" run.py -m hydra/launcher=batched "data.root=$1/data" data.download=false
        "tracking.uri=sqlite:///$2/mlflow.db" "trainer.checkpoint_dir=$2/checkpoints"
        "hydra.sweep.dir=$(mktemp -d "$1/multirun.XXXX")")
}
