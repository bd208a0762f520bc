"""Fashion-MNIST idx reader: shapes, labels, corrupt and missing files."""

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from distml.errors import DataError
from distml.partition import SOURCES
from distml.partition.idx import read_idx

ROOT = Path("/usr/share/datasets/fashion-mnist")
needs_data = pytest.mark.skipif(not (ROOT / "train-images-idx3-ubyte.gz").is_file(),
                                reason="Debian package dataset-fashion-mnist is not installed")


@pytest.fixture(scope="module")
def fmnist():
    return SOURCES.build("fashion_mnist")


@needs_data
def test_shapes_and_labels(fmnist):
    assert fmnist.info.input_shape == (1, 28, 28) and fmnist.info.num_classes == 10
    assert len(fmnist.train()) == 60000 and len(fmnist.test()) == 10000
    assert fmnist.train().labels.dtype == np.int64
    assert set(np.unique(fmnist.train().labels)) == set(range(10))
    x, y = fmnist.test().take(np.array([0, 9999, 17]))
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64


@needs_data
def test_normalization(fmnist):
    x, _ = fmnist.train().take(np.arange(0, 60000, 7))
    assert abs(x.mean().item()) < 0.02 and abs(x.std().item() - 1) < 0.02
    raw = SOURCES.build({"name": "fashion_mnist", "normalize": False})
    xr, _ = raw.train().take(np.arange(100))
    assert xr.min() >= 0 and xr.max() <= 1 and xr.max() > 0.9


@needs_data
def test_uncompressed_files_work(tmp_path):
    for f in ROOT.glob("t10k-*.gz"):
        (tmp_path / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
    for f in ROOT.glob("train-*.gz"):
        shutil.copy(f, tmp_path / f.name)
    s = SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path)})
    assert len(s.test()) == 10000


def _write_idx(path, arr, gz=False):
    header = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, dtype=">u4").tobytes()
    data = header + arr.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if gz else data)


def _fake_set(tmp_path, n=5):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)), gz=True)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n), gz=True)


def test_read_idx_round_trip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a", arr)
    _write_idx(tmp_path / "b.gz", arr, gz=True)
    assert np.array_equal(read_idx(tmp_path / "a"), arr)
    assert np.array_equal(read_idx(tmp_path / "b.gz"), arr)


def test_small_fake_set_loads(tmp_path):
    _fake_set(tmp_path)
    s = SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path)})
    assert len(s.train()) == 5 and s.train().take(np.arange(5))[0].shape == (5, 1, 28, 28)


def test_truncated_file_names_the_file(tmp_path):
    _fake_set(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(bad.read_bytes())
    bad.unlink()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(raw[:-100])     # uncompressed, short
    with pytest.raises(DataError, match="train-images-idx3-ubyte is truncated"):
        SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path)})


def test_truncated_gzip_names_the_file(tmp_path):
    _fake_set(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(bad.read_bytes()[:20])
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz"):
        SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path)})


@needs_data
def test_truncated_copy_of_real_file(tmp_path):
    for f in ROOT.glob("*.gz"):
        shutil.copy(f, tmp_path / f.name)
    raw = gzip.decompress((ROOT / "train-labels-idx1-ubyte.gz").read_bytes())
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 2]))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.gz is truncated.*60008"):
        SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path)})


def test_bad_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"\x00\x00\x0d\x01" + b"\x00" * 20)
    with pytest.raises(DataError, match="bad idx magic number"):
        read_idx(tmp_path / "x")


def test_missing_dir_gives_install_hint(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path / "nowhere")})


def test_missing_file_names_it(tmp_path):
    _fake_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz not found"):
        SOURCES.build({"name": "fashion_mnist", "path": str(tmp_path)})
