"""FashionMNIST's four official files: found, installed, digested, checked and read as arrays.

No torch here: a job finds the files and their digest (part of its fingerprint) before it
knows whether it trains at all, and a job that is skipped imports no torch and reads no data.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import os
import shutil
import struct
import time
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# MD5 of the decompressed official files (torchvision publishes those of the .gz files).
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3 or 1 dimensions
_MD5_CACHE = ".md5.json"  # beside the files: each one's MD5, by its size and modification time
# An MD5 is trusted from the cache only for a file last modified this long before it was taken:
# a file rewritten within the file system's timestamp granularity keeps its modification time.
_SETTLED_NS = 2_000_000_000


class DataError(RuntimeError):
    """The dataset files are missing, corrupt or not the official ones."""


@dataclass(frozen=True)
class DatasetFiles:
    """The four decompressed files of a copy of FashionMNIST: their folder and MD5s."""

    raw: Path
    md5: dict[str, str]  # file name → MD5 of its bytes

    @property
    def digest(self) -> str:
        """The dataset's identity: one short hash of the four files' MD5s."""
        listing = "".join(f"{name} {md5}\n" for name, md5 in sorted(self.md5.items()))
        return hashlib.sha256(listing.encode()).hexdigest()[:16]


def raw_dir(root: str | os.PathLike) -> Path:
    """The folder torchvision keeps the raw files in under `root`."""
    return Path(root) / "FashionMNIST" / "raw"


def _fix(root: Path) -> str:
    return (
        f"place the official files in {raw_dir(root)}, run `apt-get install dataset-fashion-mnist`"
        " (Debian/Ubuntu, as root), or go online with data.download=true"
    )


def _install(source: Path, target: Path) -> None:
    """Copy `source` (gzipped or not) to `target` decompressed, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    opener = gzip.open if source.suffix == ".gz" else open
    try:
        with opener(source, "rb") as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    except (EOFError, gzip.BadGzipFile, zlib.error) as err:
        tmp.unlink(missing_ok=True)
        raise DataError(f"{source}: cannot decompress ({err}); {_fix(target.parents[2])}") from err
    os.replace(tmp, target)


def _download(root: Path) -> str | None:
    """Let torchvision download and extract the files into `root`; the error text on failure."""
    from torchvision.datasets import FashionMNIST  # only here: it costs seconds to import

    try:
        FashionMNIST(str(root), train=True, download=True)
        FashionMNIST(str(root), train=False, download=True)
    except Exception as err:  # torchvision raises many kinds (URLError, RuntimeError, OSError)
        return f"{type(err).__name__}: {err}".splitlines()[0]
    return None


def resolve(
    root: str | os.PathLike,
    *,
    system_dir: str | os.PathLike | None = SYSTEM_DIR,
    download: bool = True,
    names: tuple[str, ...] = tuple(OFFICIAL_MD5),
) -> Path:
    """Make the decompressed files present in `raw_dir(root)` and return that folder.

    Each file is looked for in `root` (torchvision's layout, plain or .gz), then in
    `system_dir` (Debian's gzipped copy), then fetched by torchvision's download.
    """
    root = Path(root)
    raw = raw_dir(root)
    missing = []
    for name in names:
        if (raw / name).is_file():
            continue
        sources = [raw / f"{name}.gz"]
        if system_dir is not None:
            sources += [Path(system_dir) / f"{name}.gz", Path(system_dir) / name]
        source = next((s for s in sources if s.is_file()), None)
        if source is None:
            missing.append(name)
            continue
        try:
            _install(source, raw / name)
        except OSError as err:
            raise DataError(
                f"cannot write {raw / name} ({err.strerror}); set data.root to a writable folder"
            ) from err
    if missing:
        why = _download(root) if download else "download disabled (data.download=false)"
        still = [n for n in missing if not (raw / n).is_file()]
        if still:
            where = f"{raw}" + (f" or {system_dir}" if system_dir is not None else "")
            raise DataError(
                f"FashionMNIST file {still[0]} not found in {where}; {why}; {_fix(root)}"
            )
    return raw


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _md5s(raw: Path) -> dict[str, str]:
    """Each file's MD5, taken again only when the file changed since it was last taken."""
    cache_path = raw / _MD5_CACHE
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    md5s, fresh = {}, {}
    for name in OFFICIAL_MD5:
        stat = (raw / name).stat()
        size, mtime_ns, md5, taken_ns = cache.get(name, [None, None, None, 0])
        settled = mtime_ns is not None and mtime_ns < taken_ns - _SETTLED_NS
        if size == stat.st_size and mtime_ns == stat.st_mtime_ns and settled:
            md5s[name] = md5
            fresh[name] = cache[name]
        else:
            md5s[name] = _md5(raw / name)
            fresh[name] = [stat.st_size, stat.st_mtime_ns, md5s[name], time.time_ns()]
    if fresh != cache:
        tmp = cache_path.with_name(f"{_MD5_CACHE}.tmp{os.getpid()}")
        try:
            tmp.write_text(json.dumps(fresh))
            os.replace(tmp, cache_path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only copy of the data: take the MD5s each time
    return md5s


def locate(
    root: str | os.PathLike, *, system_dir: str | os.PathLike | None, download: bool
) -> DatasetFiles:
    """Make the four files present under `root` (see `resolve`) and take their MD5s."""
    raw = resolve(root, system_dir=system_dir, download=download)
    return DatasetFiles(raw, _md5s(raw))


def parse_idx(path: Path, kind: str, data: bytes) -> np.ndarray:
    """The uint8 array in an IDX `kind` file's bytes, once its magic number and length are
    checked; DataError if off."""
    ndim = 3 if kind == "images" else 1
    header = 4 * (1 + ndim)
    fix = _fix(path.parents[2])
    if len(data) < 4 or struct.unpack(">I", data[:4])[0] != _MAGIC[kind]:
        found = data[:4].hex() or "nothing"
        raise DataError(f"{path}: not an IDX {kind} file (magic number {found}); {fix}")
    if len(data) < header:
        raise DataError(f"{path}: truncated IDX header ({len(data)} bytes); {fix}")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + math.prod(dims)
    if len(data) != expected:
        raise DataError(
            f"{path}: truncated or padded ({len(data)} bytes, expected {expected}); {fix}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(files: DatasetFiles, name: str, checksums: Mapping[str, str] | None) -> np.ndarray:
    """The array in file `name`, checked: its structure, its MD5 against the one `locate` took
    (the file must not change in between) and, with `checksums`, against the expected one."""
    path = files.raw / name
    data = path.read_bytes()
    array = parse_idx(path, "images" if "images" in name else "labels", data)
    md5 = hashlib.md5(data).hexdigest()
    if md5 != files.md5[name]:
        raise DataError(f"{path} changed while it was in use (MD5 {md5}); run the job again")
    if checksums is not None and md5 != checksums[name]:
        fix = _fix(path.parents[2])
        raise DataError(f"{path}: MD5 {md5} is not the official {checksums[name]}; {fix}")
    return array
