"""Tiny FashionMNIST-shaped datasets in the official IDX format, and the official files."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest
import torch
import yaml

from hw3.engine.data import FashionMNIST, Split
from hw3.engine.files import SYSTEM_DIR, raw_dir
from hw3.tracking.schema import PROJECT_ROOT

IMAGE_SIDE = 28
NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
PROJECT_DATA = PROJECT_ROOT / "data"


def model_params(name: str) -> dict[str, Any]:
    """The parameters conf/model/NAME.yaml gives variant `name` (none for plain, bn, stride)."""
    config = yaml.safe_load((PROJECT_ROOT / "conf" / "model" / f"{name}.yaml").read_text())
    return {k: v for k, v in config.items() if k not in ("defaults", "name")}


def idx_bytes(array: torch.Tensor) -> bytes:
    """The IDX encoding of a uint8 tensor: magic 0x0000080N, N big-endian dims, the data."""
    assert array.dtype == torch.uint8
    header = struct.pack(">I", 0x0800 | array.dim()) + struct.pack(f">{array.dim()}I", *array.shape)
    return header + array.contiguous().numpy().tobytes()


@dataclass(frozen=True)
class TinyRaw:
    """The four raw arrays of a tiny FashionMNIST-shaped dataset (uint8 images and labels)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    def files(self) -> dict[str, bytes]:
        """File name → IDX bytes, under the official names."""
        arrays = (self.train_x, self.train_y, self.test_x, self.test_y)
        return {name: idx_bytes(a) for name, a in zip(NAMES, arrays, strict=True)}

    def md5s(self) -> dict[str, str]:
        """File name → MD5 of the (decompressed) IDX bytes: a `checksums=` table."""
        return {name: hashlib.md5(b).hexdigest() for name, b in self.files().items()}


def make_raw(seed: int = 0, n_train: int = 20, n_test: int = 10) -> TinyRaw:
    """Random uint8 images and labels in 0..9, reproducible from `seed`."""
    g = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, IMAGE_SIDE, IMAGE_SIDE), generator=g, dtype=torch.uint8)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=g, dtype=torch.uint8)

    return TinyRaw(images(n_train), labels(n_train), images(n_test), labels(n_test))


def learnable_raw(n_train: int, n_test: int, seed: int = 0) -> TinyRaw:
    """Noise images with a bright stripe whose row says the class: a net learns it in a pass."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (n,), generator=g)
        images = torch.randint(0, 60, (n, IMAGE_SIDE, IMAGE_SIDE), generator=g)
        for c in range(10):
            images[labels == c, 2 * c + 4 : 2 * c + 6, 4:24] += 180
        return images.to(torch.uint8), labels.to(torch.uint8)

    return TinyRaw(*split(n_train), *split(n_test))


def write_raw(folder: Path, raw: TinyRaw, *, gz: bool = False) -> dict[str, Path]:
    """Write the four files into `folder` (as `name.gz` when `gz`); name → path written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, data in raw.files().items():
        path = folder / (f"{name}.gz" if gz else name)
        path.write_bytes(gzip.compress(data) if gz else data)
        written[name] = path
    return written


def write_dataset(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """A learnable synthetic FashionMNIST in torchvision's layout under `root`; returns `root`."""
    write_raw(raw_dir(root), learnable_raw(n_train, n_test, seed))
    return root


def synthetic_data(n_train: int = 256, n_test: int = 128, seed: int = 0) -> FashionMNIST:
    """Preprocessed-looking random splits (standard normal images, uniform labels)."""
    g = torch.Generator().manual_seed(seed)

    def split(n: int) -> Split:
        x = torch.randn(n, 1, IMAGE_SIDE, IMAGE_SIDE, generator=g)
        return Split(x, torch.randint(0, 10, (n,), generator=g))

    return FashionMNIST(train=split(n_train), test=split(n_test), mean=0.0, std=1.0)


def real_data_location(tmp_root: Path) -> tuple[Path, Path | None] | None:
    """(root, system_dir) to load the official files from, or None where there are none."""
    if all((SYSTEM_DIR / f"{name}.gz").is_file() for name in NAMES):
        return tmp_root, SYSTEM_DIR  # decompressed into a fresh root on the way
    raw = raw_dir(PROJECT_DATA)
    if all((raw / name).is_file() or (raw / f"{name}.gz").is_file() for name in NAMES):
        return PROJECT_DATA, None
    return None


def without_real_data(reason: str) -> NoReturn:
    """Skip a test that needs the official files; fail it where $HW3_REQUIRE_DATA=1 (CI)."""
    if os.environ.get("HW3_REQUIRE_DATA") == "1":
        pytest.fail(f"{reason}, and HW3_REQUIRE_DATA=1 asks for them")
    pytest.skip(reason)
