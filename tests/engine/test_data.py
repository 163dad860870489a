"""The data loader on small IDX files written by the tests: resolution, checks, preprocessing."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets
from support.data import NAMES, TinyRaw, make_raw, write_raw

import hw3.engine.files
from hw3.engine.data import load_fashion_mnist
from hw3.engine.files import OFFICIAL_MD5, DataError, locate, parse_idx, raw_dir, resolve

TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = NAMES


@pytest.fixture
def raw() -> TinyRaw:
    """A tiny dataset: 20 training and 10 test examples."""
    return make_raw(seed=0)


@pytest.fixture
def system_dir(tmp_path: Path) -> Path:
    """An empty stand-in for Debian's /usr/share/datasets/fashion-mnist."""
    folder = tmp_path / "system"
    folder.mkdir()
    return folder


def load(root: Path, system_dir: Path, checksums: dict[str, str] | None, **kwargs) -> object:
    """`load_fashion_mnist` offline, with the defaults of the config (normalised, no subsets)."""
    options = {"normalize": True, "mean": None, "std": None, "train_size": None, "test_size": None}
    options |= kwargs
    return load_fashion_mnist(
        root, download=False, system_dir=system_dir, checksums=checksums, **options
    )


def one_line_data_error(excinfo: pytest.ExceptionInfo[DataError]) -> str:
    """The message of a raised DataError, checked to be a single line."""
    message = str(excinfo.value)
    assert message and "\n" not in message
    return message


# --- preprocessing ------------------------------------------------------------------------------


def test_normalised_with_training_mean_and_std(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(raw_dir(tmp_path), raw)
    data = load(tmp_path, system_dir, raw.md5s())

    scaled = raw.train_x.double() / 255  # by hand: ToTensor's [0, 1], then the split's moments
    n = scaled.numel()
    mean = float(scaled.sum()) / n
    std = (float(((scaled - mean) ** 2).sum()) / (n - 1)) ** 0.5
    assert data.mean == pytest.approx(mean, rel=1e-12)
    assert data.std == pytest.approx(std, rel=1e-12)
    for split, images, labels in ((data.train, raw.train_x, raw.train_y),
                                  (data.test, raw.test_x, raw.test_y)):  # fmt: skip
        expected = ((images.double() / 255 - mean) / std).unsqueeze(1)
        assert split.x.dtype == torch.float32 and split.x.shape == (len(images), 1, 28, 28)
        torch.testing.assert_close(split.x.double(), expected, rtol=0, atol=1e-5)
        assert split.y.dtype == torch.int64
        assert torch.equal(split.y, labels.long())
    # The normalised training split has mean ≈ 0 and std ≈ 1.
    assert abs(float(data.train.x.double().mean())) < 1e-5
    assert float(data.train.x.double().std()) == pytest.approx(1.0, abs=1e-5)


def test_normalize_false_is_exactly_x_over_255(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(raw_dir(tmp_path), raw)
    data = load(tmp_path, system_dir, raw.md5s(), normalize=False, mean=0.3, std=0.2)
    assert (data.mean, data.std) == (0.0, 1.0)
    assert torch.equal(data.train.x, raw.train_x.unsqueeze(1).float() / 255)
    assert torch.equal(data.test.x, raw.test_x.unsqueeze(1).float() / 255)
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0


def test_explicit_mean_and_std_are_used(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(raw_dir(tmp_path), raw)
    data = load(tmp_path, system_dir, raw.md5s(), mean=0.5, std=0.25)
    assert (data.mean, data.std) == (0.5, 0.25)
    expected = ((raw.test_x.double() / 255 - 0.5) / 0.25).unsqueeze(1)
    torch.testing.assert_close(data.test.x.double(), expected, rtol=0, atol=1e-5)


def test_subsets_are_the_first_examples(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(raw_dir(tmp_path), raw)
    full = load(tmp_path, system_dir, raw.md5s())
    sub = load(tmp_path, system_dir, raw.md5s(), train_size=7, test_size=3)
    assert (len(sub.train), len(sub.test)) == (7, 3)
    assert torch.equal(sub.train.x, full.train.x[:7]) and torch.equal(sub.train.y, raw.train_y[:7])
    assert torch.equal(sub.test.x, full.test.x[:3]) and torch.equal(sub.test.y, raw.test_y[:3])
    # Normalisation still uses the whole training split, so subsets are comparable.
    assert (sub.mean, sub.std) == (full.mean, full.std)
    again = load(tmp_path, system_dir, raw.md5s(), train_size=7, test_size=3)
    assert torch.equal(again.train.x, sub.train.x) and torch.equal(again.test.y, sub.test.y)


# --- verification -------------------------------------------------------------------------------


def test_valid_files_parse_to_their_arrays(tmp_path: Path, raw: TinyRaw):
    paths = write_raw(raw_dir(tmp_path), raw)
    arrays = (raw.train_x, raw.train_y, raw.test_x, raw.test_y)
    for (name, path), array in zip(paths.items(), arrays, strict=True):
        kind = "images" if "images" in name else "labels"
        assert torch.equal(torch.from_numpy(parse_idx(path, kind, path.read_bytes()).copy()), array)


def _truncate_data(data: bytes) -> bytes:
    return data[:-1]


def _pad(data: bytes) -> bytes:
    return data + b"\x00"


def _truncate_header(data: bytes) -> bytes:
    return data[:10]


def _empty(data: bytes) -> bytes:
    return b""


def _wrong_magic(data: bytes) -> bytes:
    return b"\x00\x00\x08\x01" + data[4:]  # a labels magic number on an images file


def _float_magic(data: bytes) -> bytes:
    return b"\x00\x00\x0d\x03" + data[4:]  # float32 IDX: not the unsigned-byte format


@pytest.mark.parametrize(
    ("corrupt", "phrase"),
    [
        (_truncate_data, "truncated or padded"),
        (_pad, "truncated or padded"),
        (_truncate_header, "truncated IDX header"),
        (_empty, "magic number nothing"),
        (_wrong_magic, "not an IDX images file"),
        (_float_magic, "not an IDX images file"),
    ],
)
def test_malformed_images_file_is_a_one_line_data_error(
    tmp_path: Path, system_dir: Path, raw: TinyRaw, corrupt, phrase: str
):
    paths = write_raw(raw_dir(tmp_path), raw)
    path = paths[TEST_IMAGES]
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(DataError) as excinfo:
        load(tmp_path, system_dir, checksums=None)  # structural checks alone must catch it
    message = one_line_data_error(excinfo)
    assert phrase in message and str(path) in message
    assert "apt-get install dataset-fashion-mnist" in message


def test_truncated_labels_file_is_a_data_error(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    paths = write_raw(raw_dir(tmp_path), raw)
    path = paths[TRAIN_LABELS]
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(DataError) as excinfo:
        load(tmp_path, system_dir, checksums=None)
    assert f"{path}: truncated or padded" in one_line_data_error(excinfo)


def test_wrong_checksum_is_a_data_error(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    paths = write_raw(raw_dir(tmp_path), raw)
    data = bytearray(paths[TRAIN_IMAGES].read_bytes())
    data[100] ^= 0xFF  # same length and magic: only the MD5 can tell
    paths[TRAIN_IMAGES].write_bytes(bytes(data))
    load(tmp_path, system_dir, checksums=None)  # structurally fine
    with pytest.raises(DataError) as excinfo:
        load(tmp_path, system_dir, raw.md5s())
    message = one_line_data_error(excinfo)
    assert str(paths[TRAIN_IMAGES]) in message
    assert f"is not the official {raw.md5s()[TRAIN_IMAGES]}" in message


def test_official_checksums_reject_other_files(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(raw_dir(tmp_path), raw)
    with pytest.raises(DataError, match="is not the official"):
        load(tmp_path, system_dir, OFFICIAL_MD5)


def test_image_and_label_counts_must_match(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    short = TinyRaw(raw.train_x, raw.train_y[:-1], raw.test_x, raw.test_y)
    write_raw(raw_dir(tmp_path), short)
    with pytest.raises(DataError) as excinfo:
        load(tmp_path, system_dir, short.md5s())
    assert "holds 20 images but" in one_line_data_error(excinfo)


def _truncated_gz(data: bytes) -> bytes:
    return gzip.compress(data)[:-20]


def _not_gz(data: bytes) -> bytes:
    return b"this is not gzip" + data[:50]


def _bad_crc(data: bytes) -> bytes:
    packed = bytearray(gzip.compress(data))
    packed[-6] ^= 0xFF  # the CRC32 in the trailer
    return bytes(packed)


@pytest.mark.parametrize("corrupt", [_truncated_gz, _not_gz, _bad_crc])
def test_corrupt_gz_is_a_data_error(tmp_path: Path, system_dir: Path, raw: TinyRaw, corrupt):
    raw_folder = raw_dir(tmp_path)
    paths = write_raw(raw_folder, raw, gz=True)
    paths[TRAIN_LABELS].write_bytes(corrupt(raw.files()[TRAIN_LABELS]))
    with pytest.raises(DataError) as excinfo:
        load(tmp_path, system_dir, raw.md5s())
    message = one_line_data_error(excinfo)
    assert f"{paths[TRAIN_LABELS]}: cannot decompress" in message
    assert str(raw_folder) in message  # the fix: where to put the files
    # Nothing half-written is left behind to be mistaken for the file next time.
    assert not (raw_folder / TRAIN_LABELS).exists()
    assert sorted(p.name for p in raw_folder.iterdir() if ".tmp" in p.name) == []


# --- where the files come from ------------------------------------------------------------------


def test_root_raw_folder_wins_over_system_dir(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    other = make_raw(seed=1)
    write_raw(raw_dir(tmp_path), raw)
    write_raw(system_dir, other, gz=True)
    data = load(tmp_path, system_dir, raw.md5s(), normalize=False)
    assert torch.equal(data.train.x, raw.train_x.unsqueeze(1).float() / 255)
    assert torch.equal(data.test.y, raw.test_y.long())


def test_gz_in_root_raw_folder_is_decompressed(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(system_dir, make_raw(seed=1), gz=True)  # a .gz in root still wins over the system's
    raw_folder = raw_dir(tmp_path)
    write_raw(raw_folder, raw, gz=True)
    data = load(tmp_path, system_dir, raw.md5s(), normalize=False)
    for name, content in raw.files().items():
        assert (raw_folder / name).read_bytes() == content
    assert torch.equal(data.test.x, raw.test_x.unsqueeze(1).float() / 255)


def test_system_dir_gz_is_used_when_root_is_empty(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    write_raw(system_dir, raw, gz=True)
    root = tmp_path / "fresh"  # does not exist yet
    assert resolve(root, system_dir=system_dir, download=False) == raw_dir(root)
    for name, content in raw.files().items():
        assert (raw_dir(root) / name).read_bytes() == content
    assert sorted(p.name for p in system_dir.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    data = load(root, system_dir, raw.md5s(), normalize=False)
    assert torch.equal(data.train.y, raw.train_y.long())


def test_files_are_gathered_from_both_places(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    written = write_raw(system_dir, raw, gz=True)
    for name in (TRAIN_IMAGES, TEST_LABELS):
        written[name].unlink()
    write_raw(raw_dir(tmp_path), raw, gz=False)
    for name in (TRAIN_LABELS, TEST_IMAGES):
        (raw_dir(tmp_path) / name).unlink()
    data = load(tmp_path, system_dir, raw.md5s(), normalize=False)
    assert torch.equal(data.test.x, raw.test_x.unsqueeze(1).float() / 255)


def test_nothing_anywhere_without_download(tmp_path: Path, system_dir: Path):
    with pytest.raises(DataError) as excinfo:
        load(tmp_path, system_dir, checksums=None)
    message = one_line_data_error(excinfo)
    where = f"{raw_dir(tmp_path)} or {system_dir}"
    assert f"FashionMNIST file {TRAIN_IMAGES} not found in {where};" in message
    assert "download disabled" in message
    # The three fixes: place the files, install the Debian package, allow the download.
    assert f"place the official files in {raw_dir(tmp_path)}" in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "data.download=true" in message


def test_missing_file_named_when_others_are_present(tmp_path: Path, raw: TinyRaw):
    write_raw(raw_dir(tmp_path), raw)
    (raw_dir(tmp_path) / TEST_LABELS).unlink()
    with pytest.raises(DataError) as excinfo:
        resolve(tmp_path, system_dir=None, download=False)
    message = one_line_data_error(excinfo)
    assert f"file {TEST_LABELS} not found in {raw_dir(tmp_path)};" in message


def test_failed_download_is_reported_in_one_line(
    tmp_path: Path, system_dir: Path, monkeypatch: pytest.MonkeyPatch
):
    calls = []

    def offline(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        raise URLError("<urlopen error [Errno -3] Temporary failure in name resolution>\nmore")

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", offline)
    with pytest.raises(DataError) as excinfo:
        resolve(tmp_path, system_dir=system_dir, download=True)
    message = one_line_data_error(excinfo)
    assert calls == [(str(tmp_path), True, True)]
    assert "URLError" in message and "Temporary failure in name resolution" in message
    assert f"file {TRAIN_IMAGES} not found" in message


def test_download_fills_what_is_missing(
    tmp_path: Path, system_dir: Path, raw: TinyRaw, monkeypatch: pytest.MonkeyPatch
):
    def fake_download(root: str, train: bool, download: bool) -> None:
        write_raw(raw_dir(Path(root)), raw)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    data = load_fashion_mnist(
        tmp_path, download=True, system_dir=system_dir, checksums=raw.md5s(),
        normalize=False, mean=None, std=None, train_size=None, test_size=None,
    )  # fmt: skip
    assert torch.equal(data.train.y, raw.train_y.long())


# --- identity -----------------------------------------------------------------------------------


def test_the_digest_names_the_files_bytes(tmp_path: Path, system_dir: Path, raw: TinyRaw):
    first, second = tmp_path / "first", tmp_path / "second"
    write_raw(raw_dir(first), raw)
    write_raw(system_dir, raw, gz=True)  # the same bytes, found gzipped elsewhere
    files = locate(first, system_dir=None, download=False)
    assert files.md5 == raw.md5s()
    assert locate(second, system_dir=system_dir, download=False).digest == files.digest
    paths = write_raw(raw_dir(tmp_path / "third"), raw)
    data = bytearray(paths[TEST_LABELS].read_bytes())
    data[-1] ^= 1  # one bit of one label
    paths[TEST_LABELS].write_bytes(bytes(data))
    other = locate(tmp_path / "third", system_dir=None, download=False)
    assert other.digest != files.digest and len(other.digest) == len(files.digest) == 16


def test_md5s_are_taken_again_only_for_files_that_changed(
    tmp_path: Path, raw: TinyRaw, monkeypatch: pytest.MonkeyPatch
):
    paths = write_raw(raw_dir(tmp_path), raw)
    taken = []
    real_md5 = hw3.engine.files._md5
    monkeypatch.setattr(hw3.engine.files, "_md5", lambda p: taken.append(p.name) or real_md5(p))

    def taken_by_locate() -> list[str]:
        taken.clear()
        assert locate(tmp_path, system_dir=None, download=False).md5 == raw.md5s()
        return sorted(taken)

    assert taken_by_locate() == sorted(NAMES)
    # Just written: a change within the file system's timestamp granularity would go unseen.
    assert taken_by_locate() == sorted(NAMES)
    settled = time.time() - 60
    for path in paths.values():
        os.utime(path, (settled, settled))
    assert taken_by_locate() == sorted(NAMES)
    assert taken_by_locate() == []  # unchanged and settled: nothing is read
    paths[TEST_LABELS].write_bytes(paths[TEST_LABELS].read_bytes())
    os.utime(paths[TEST_LABELS], (settled + 1, settled + 1))
    assert taken_by_locate() == [TEST_LABELS]
