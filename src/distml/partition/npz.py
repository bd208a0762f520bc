"""NumPy ``.npz`` archives, memory-mapped where the member is stored uncompressed.

``np.load(path, mmap_mode="r")`` ignores ``mmap_mode`` for ``.npz``, so an uncompressed
(``np.savez``) member is mapped here directly from its offset inside the zip file;
members of ``np.savez_compressed`` archives cannot be mapped and are read into memory.
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np

from distml.errors import DataError
from distml.partition.base import SOURCES, OfflineSource
from distml.partition.tables import check_task, table_source


def npz_member(path: str | Path, key: str) -> np.ndarray:
    """The array ``key`` of an npz archive, as a read-only memmap when it is stored uncompressed.

    Raises:
        DataError: the file is not a zip/npz archive or has no member ``key``.
    """
    p = Path(path)
    try:
        zf = zipfile.ZipFile(p)
    except FileNotFoundError:
        raise DataError(f"npz file {p} not found: check data.source.path") from None
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{p} is not a readable npz archive ({e}); write it with numpy.savez") from None
    with zf:
        names = [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
        if key not in names:
            raise DataError(f"{p} has no array {key!r}; it holds: {', '.join(names) or '(none)'} "
                            "(set x_key / y_key)")
        info = zf.getinfo(key + ".npy")
        if info.compress_type == zipfile.ZIP_STORED:
            with open(p, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                name_len, extra_len = struct.unpack("<HH", local[26:30])
                f.seek(info.header_offset + 30 + name_len + extra_len)
                try:
                    version = np.lib.format.read_magic(f)
                    read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                                   else np.lib.format.read_array_header_2_0)
                    shape, fortran, dtype = read_header(f)
                except ValueError as e:
                    raise DataError(f"{p}: member {key!r} is not a valid .npy array ({e})") from None
                offset = f.tell()
            if not dtype.hasobject:
                if 0 in shape:
                    return np.empty(shape, dtype)
                try:
                    return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=shape,
                                     order="F" if fortran else "C")
                except (ValueError, OSError) as e:   # the header promises more than the file holds
                    raise DataError(f"{p}: member {key!r} is truncated or corrupt ({e}); "
                                    "write the archive again") from None
        try:
            with zf.open(info) as f:
                return np.lib.format.read_array(f, allow_pickle=False)
        except (ValueError, OSError, zipfile.BadZipFile) as e:
            raise DataError(f"{p}: member {key!r} cannot be read ({e})") from None


def _check_finite(path: str | Path, key: str, x: np.ndarray | None, chunk: int = 1 << 16) -> None:
    """Refuse nan/inf features, naming the first bad sample; reads a memmap once, in chunks.

    Raises:
        DataError: a sample holds nan or inf.
    """
    if x is None or x.dtype.kind not in "fc":
        return
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk]).reshape(min(chunk, len(x) - start), -1)
        bad = np.flatnonzero(~np.isfinite(block).all(axis=1))
        if len(bad):
            raise DataError(f"{path}: features {key!r} sample {start + int(bad[0])} (counting from 0) "
                            "holds nan or inf; fix it (missing values are not supported)")


@SOURCES.register("npz", summary="a NumPy .npz archive (memory-mapped when uncompressed)")
def npz(path: str, x_key: str = "x", y_key: str = "y", x_test_key: str = "x_test",
        y_test_key: str = "y_test", test_fraction: float = 0.2, task: str = "classification",
        standardize: bool = False, seed: int = 0) -> OfflineSource:
    """An npz archive with features ``(n, *sample_shape)`` and targets ``(n,)``.

    The test set is ``x_test_key``/``y_test_key`` when the archive has both, else
    ``test_fraction`` of the training arrays. Features of an ``np.savez`` archive are
    memory-mapped: a batch reads only its rows.

    Args:
        path: the archive.
        x_key: name of the training features.
        y_key: name of the training targets.
        x_test_key: name of the test features (optional member).
        y_test_key: name of the test targets (optional member).
        test_fraction: held-out share when the archive has no test arrays.
        task: "classification" (labels mapped to 0..C-1) or "regression".
        standardize: scale features by the training rows' mean and std (reads them once).
        seed: fixes the split (context).

    Raises:
        DataError: missing file or member, wrong shapes.
        ConfigError: bad task or test_fraction.
    """
    check_task(task)
    x, y = npz_member(path, x_key), npz_member(path, y_key)
    with zipfile.ZipFile(path) as zf:
        names = {n[:-4] for n in zf.namelist()}
    xt = yt = None
    if x_test_key in names and y_test_key in names:
        xt, yt = npz_member(path, x_test_key), npz_member(path, y_test_key)
    for name, arr in ((y_key, y), (y_test_key, yt)):
        if arr is not None and np.squeeze(arr).ndim > 1:
            raise DataError(f"{path}: targets {name!r} must be 1-D, got shape {arr.shape}")
    if x.ndim < 2:
        raise DataError(f"{path}: features {x_key!r} must have shape (samples, *sample_shape), "
                        f"got {x.shape}")
    for key, arr in ((x_key, x), (x_test_key, xt)):
        _check_finite(path, key, arr)
    return table_source(str(path), x, np.asarray(y).reshape(-1), task, test_fraction=test_fraction,
                        seed=seed, x_test=xt, y_test=None if yt is None else np.asarray(yt).reshape(-1),
                        standardize=standardize)
