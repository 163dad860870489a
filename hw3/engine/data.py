"""FashionMNIST's official 60k/10k split, verified and preprocessed into tensors once."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from hw3.engine.files import (
    OFFICIAL_MD5,
    SYSTEM_DIR,
    DataError,
    DatasetFiles,
    locate,
    read_idx,
)


@dataclass(frozen=True)
class Split:
    """One split: images (N, 1, 28, 28) float32 and labels (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass(frozen=True)
class FashionMNIST:
    """Preprocessed train and test splits and the normalisation that was applied."""

    train: Split
    test: Split
    mean: float
    std: float


def _split(
    files: DatasetFiles, prefix: str, checksums: Mapping[str, str] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The split's uint8 images (N, 28, 28) and int64 labels (N,), checked."""
    images = read_idx(files, f"{prefix}-images-idx3-ubyte", checksums)
    labels = read_idx(files, f"{prefix}-labels-idx1-ubyte", checksums)
    if len(images) != len(labels):
        raise DataError(
            f"{files.raw / f'{prefix}-images-idx3-ubyte'} holds {len(images)} images but "
            f"{files.raw / f'{prefix}-labels-idx1-ubyte'} {len(labels)} labels"
        )
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype("int64"))


def preprocess(images: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, 28, 28) → float32 (N, 1, 28, 28): ToTensor's /255, then Normalize's (x-m)/s."""
    return images.unsqueeze(1).float().div(255).sub(mean).div(std)


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
