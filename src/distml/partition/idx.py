"""Fashion-MNIST from its idx files (plain or gzipped), parsed and checked here.

Reference: Xiao, Rasul, Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
Benchmarking Machine Learning Algorithms", 2017. The idx format is LeCun's MNIST format:
a big-endian header ``0 0 <type> <ndim>`` followed by ``ndim`` uint32 sizes and the data.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from distml.errors import DataError
from distml.partition.base import SOURCES, Affine, ArrayData, DataInfo, OfflineSource

DEFAULT_PATH = "/usr/share/datasets/fashion-mnist"
INSTALL_HINT = ("install it with `apt-get install dataset-fashion-mnist` or set "
                "data.source.path")
MEAN, STD = 0.2860, 0.3530
_UBYTE = 0x08


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file of unsigned bytes (gzip-compressed or not) into a uint8 array.

    Args:
        path: the file.

    Returns:
        an array with the shape the header declares.

    Raises:
        DataError: missing file, bad gzip stream, wrong magic number, or a length that
            does not match the header (truncated or trailing bytes).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path} not found: {INSTALL_HINT}") from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is not a readable gzip/idx file ({e}); "
                        "re-download or reinstall it") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _UBYTE or raw[3] == 0:
        raise DataError(f"{path} has a bad idx magic number {raw[:4].hex() or '(empty)'} "
                        "(expected 000008xx, unsigned bytes); the file is corrupt or not an idx file")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is truncated inside its header ({len(raw)} bytes); "
                        "re-download or reinstall it")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(f"{path} is {what}: {len(raw)} bytes, header {dims} needs {expected}; "
                        "re-download or reinstall it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(root: Path, stem: str) -> Path:
    for name in (stem + ".gz", stem):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root / (stem + '.gz')} not found: {INSTALL_HINT}")


def _split(root: Path, prefix: str, info: DataInfo, transform: Affine) -> ArrayData:
    img_path, lab_path = _find(root, f"{prefix}-images-idx3-ubyte"), _find(root, f"{prefix}-labels-idx1-ubyte")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{img_path} holds images of shape {images.shape[1:]}, expected (28, 28); "
                        "it is not a Fashion-MNIST image file")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DataError(f"{lab_path} has {labels.shape} labels for {len(images)} images in "
                        f"{img_path.name}; the files do not belong together")
    if labels.max(initial=0) > 9:
        raise DataError(f"{lab_path} has label {int(labels.max())}; Fashion-MNIST labels are 0..9")
    return ArrayData(images, labels, info, transform)


@SOURCES.register("fashion_mnist", summary="Fashion-MNIST 60k/10k 28x28 grey images, 10 classes",
                  paper="Xiao et al. 2017, arXiv:1708.07747")
def fashion_mnist(path: str = DEFAULT_PATH, normalize: bool = True) -> OfflineSource:
    """Fashion-MNIST read from the idx files in ``path``.

    Pixels are scaled to [0, 1] and, with ``normalize``, standardized with the training
    set's mean 0.2860 and std 0.3530. Images are held as uint8; only batch rows are
    converted to float.

    Args:
        path: the folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        normalize: standardize pixels (else keep [0, 1]).

    Returns:
        an offline source: input_shape (1, 28, 28), 10 classes.

    Raises:
        DataError: the folder or a file is missing, or a file is corrupt.
    """
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"Fashion-MNIST not found in {root}: {INSTALL_HINT}")
    info = DataInfo("classification", 10, (1, 28, 28))
    transform = Affine(1 / (255 * STD), -MEAN / STD) if normalize else Affine(1 / 255, 0.0)
    return OfflineSource(info, _split(root, "train", info, transform), _split(root, "t10k", info, transform))
