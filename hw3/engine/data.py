"""FashionMNIST's official 60k/10k split, verified and preprocessed into tensors once."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import struct
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import FashionMNIST as TorchvisionFashionMNIST
from torchvision.datasets.mnist import read_image_file, read_label_file

# MD5 of the decompressed official files (torchvision publishes those of the .gz files).
OFFICIAL_MD5 = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
_MAGIC = {"images": 0x00000803, "labels": 0x00000801}  # unsigned bytes, 3 or 1 dimensions


class DataError(RuntimeError):
    """The dataset files are missing, corrupt or not the official ones."""


@dataclass(frozen=True)
class Split:
    """One split: images (N, 1, 28, 28) float32 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


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


@dataclass(frozen=True)
class FashionMNIST:
    """Preprocessed train and test splits and the normalisation that was applied."""

    train: Split
    test: Split
    mean: float
    std: float


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
    try:
        TorchvisionFashionMNIST(str(root), train=True, download=True)
        TorchvisionFashionMNIST(str(root), train=False, download=True)
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


def verify(path: Path, kind: str, md5: str, expected_md5: str | None) -> None:
    """Check an IDX file's magic number, length and (if given) that its `md5` is the expected
    one; raise DataError if off."""
    size = path.stat().st_size
    ndim = 3 if kind == "images" else 1
    header = 4 * (1 + ndim)
    fix = _fix(path.parents[2])
    with open(path, "rb") as f:
        head = f.read(header)
    if len(head) < 4 or struct.unpack(">I", head[:4])[0] != _MAGIC[kind]:
        found = head[:4].hex() or "nothing"
        raise DataError(f"{path}: not an IDX {kind} file (magic number {found}); {fix}")
    if len(head) < header:
        raise DataError(f"{path}: truncated IDX header ({size} bytes); {fix}")
    dims = struct.unpack(f">{ndim}I", head[4:])
    expected = header + int(torch.tensor(dims).prod())
    if size != expected:
        raise DataError(f"{path}: truncated or padded ({size} bytes, expected {expected}); {fix}")
    if expected_md5 is not None and md5 != expected_md5:
        raise DataError(f"{path}: MD5 {md5} is not the official {expected_md5}; {fix}")


def _split(
    files: DatasetFiles, prefix: str, checksums: Mapping[str, str] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    images = files.raw / f"{prefix}-images-idx3-ubyte"
    labels = files.raw / f"{prefix}-labels-idx1-ubyte"
    for path, kind in ((images, "images"), (labels, "labels")):
        expected = None if checksums is None else checksums[path.name]
        verify(path, kind, files.md5[path.name], expected)
    x, y = read_image_file(str(images)), read_label_file(str(labels))
    if len(x) != len(y):
        raise DataError(f"{images} holds {len(x)} images but {labels} {len(y)} labels")
    return x, y


def preprocess(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28): ToTensor's /255, then Normalize's (x-m)/s."""
    return images.unsqueeze(1).float().div(255).sub(mean).div(std)


def locate(
    root: str | os.PathLike, *, system_dir: str | os.PathLike | None, download: bool
) -> DatasetFiles:
    """Make the four files present under `root` (see `resolve`) and take their MD5s."""
    raw = resolve(root, system_dir=system_dir, download=download)
    return DatasetFiles(raw, {name: _md5(raw / name) for name in OFFICIAL_MD5})


def read_fashion_mnist(
    files: DatasetFiles,
    *,
    normalize: bool,
    mean: float | None,
    std: float | None,
    train_size: int | None,
    test_size: int | None,
    checksums: Mapping[str, str] | None,
) -> FashionMNIST:
    """Verify and preprocess both splits; subsets are the first `*_size` examples.

    With `normalize`, `mean`/`std` default to those of the whole training split in [0, 1].
    """
    x_train, y_train = _split(files, "train", checksums)
    x_test, y_test = _split(files, "t10k", checksums)
    if normalize:
        scaled = x_train.double().div(255)
        mean = float(scaled.mean()) if mean is None else mean
        std = float(scaled.std()) if std is None else std
    else:
        mean, std = 0.0, 1.0
    return FashionMNIST(
        train=Split(preprocess(x_train[:train_size], mean, std), y_train[:train_size]),
        test=Split(preprocess(x_test[:test_size], mean, std), y_test[:test_size]),
        mean=mean,
        std=std,
    )


def load_fashion_mnist(
    root: str | os.PathLike,
    *,
    normalize: bool,
    mean: float | None,
    std: float | None,
    train_size: int | None,
    test_size: int | None,
    download: bool,
    system_dir: str | os.PathLike | None = SYSTEM_DIR,
    checksums: Mapping[str, str] | None = OFFICIAL_MD5,
) -> FashionMNIST:
    """`locate` the files under `root`, then `read_fashion_mnist` them."""
    files = locate(root, system_dir=system_dir, download=download)
    return read_fashion_mnist(
        files,
        normalize=normalize,
        mean=mean,
        std=std,
        train_size=train_size,
        test_size=test_size,
        checksums=checksums,
    )
