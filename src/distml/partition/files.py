"""Table files: svmlight/LIBSVM (kept sparse) and CSV."""

from __future__ import annotations

import csv as _csv
from pathlib import Path

import numpy as np

from distml.errors import ConfigError, DataError
from distml.partition.base import SOURCES, OfflineSource
from distml.partition.tables import check_task, table_source


def _exists(path: str | Path, what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        raise DataError(f"{what} file {p} not found: check data.source.path (or test_path)")
    return p


@SOURCES.register("svmlight", summary="svmlight/LIBSVM text files, kept as sparse CSR")
def svmlight(path: str, test_path: str | None = None, n_features: int | None = None,
             test_fraction: float = 0.2, task: str = "classification", seed: int = 0) -> OfflineSource:
    """An svmlight/LIBSVM file read with ``sklearn.datasets.load_svmlight_file``.

    Features stay a CSR matrix; only the rows of a batch are made dense. Labels are
    mapped to 0..C-1 (−1/+1 becomes 0/1).

    Args:
        path: the training file.
        test_path: a test file; None splits ``test_fraction`` off the training file.
        n_features: the number of features (default: the largest index seen in the files).
        test_fraction: held-out share when there is no test file.
        task: "classification" or "regression".
        seed: fixes the split (context).

    Raises:
        DataError: a missing or unparsable file.
        ConfigError: bad task or test_fraction.
    """
    from sklearn.datasets import load_svmlight_file, load_svmlight_files

    check_task(task)
    if n_features is not None and n_features < 1:
        raise ConfigError(f"n_features must be >= 1, got {n_features}")
    paths = [_exists(path, "svmlight")] + ([] if test_path is None else [_exists(test_path, "svmlight test")])
    try:
        if test_path is None:
            x, y = load_svmlight_file(str(paths[0]), n_features=n_features, dtype=np.float32)
            xt = yt = None
        else:
            x, y, xt, yt = load_svmlight_files([str(p) for p in paths], n_features=n_features,
                                               dtype=np.float32)
    except (ValueError, RuntimeError) as e:
        raise DataError(f"{' / '.join(map(str, paths))} is not a valid svmlight file: {e}") from None
    for p, m in zip(paths, (x, xt)):
        if m is not None and not np.isfinite(m.data).all():
            row = int(np.searchsorted(m.indptr, np.flatnonzero(~np.isfinite(m.data))[0], side="right"))
            raise DataError(f"{p}: sample {row} (counting from 1) holds a nan or inf feature "
                            "value; fix it (missing values are not supported)")
    return table_source(" / ".join(map(str, paths)), x.tocsr(), y, task, test_fraction=test_fraction,
                        seed=seed, x_test=None if xt is None else xt.tocsr(), y_test=yt)


def _is_number(s: str) -> bool:
    try:
        float(s)
        return True
    except ValueError:
        return False


def read_csv(path: str | Path, label_column: int | str = -1, header: bool | str = "auto",
             delimiter: str = ",", task: str = "classification") -> tuple[np.ndarray, np.ndarray]:
    """Read a numeric CSV table with one label column.

    Args:
        path: the file.
        label_column: the label column's index (negative counts from the end) or name.
        header: True, False or "auto" (a first row with a non-numeric feature is a header).
        delimiter: the field separator.
        task: "classification" keeps labels as strings; "regression" parses them as floats.

    Returns:
        features float32 ``(n, d)`` and labels ``(n,)`` (str for classification,
        numbers sort numerically).

    Raises:
        DataError: missing file, no rows, a row with the wrong number of fields, a
            non-numeric feature (the message names the line), or an unknown column name.
        ConfigError: a bad ``header`` value or a column name without a header.
    """
    p = _exists(path, "csv")
    if isinstance(label_column, bool) or not isinstance(label_column, (int, str)):
        raise ConfigError(f"label_column must be a column index or a header name, got {label_column!r}")
    if header not in (True, False, "auto"):
        raise ConfigError(f"header must be true, false or \"auto\", got {header!r}")
    if isinstance(label_column, str) and header is False:
        raise ConfigError(f"label_column={label_column!r} is a name but header=false: "
                          "give the column index or set header=true")
    try:
        with open(p, newline="", encoding="utf-8") as f:
            reader = _csv.reader(f, delimiter=delimiter)
            rows = [(reader.line_num, r) for r in reader if r and any(c.strip() for c in r)]
    except UnicodeDecodeError as e:
        raise DataError(f"{p} is not a UTF-8 text file ({e.reason} at byte {e.start}); "
                        "is it really a CSV table?") from None
    except _csv.Error as e:
        raise DataError(f"{p} line {reader.line_num}: {e}") from None
    if not rows:
        raise DataError(f"{p} has no rows; it must hold a table with a label column")
    ncols = len(rows[0][1])
    if ncols < 2:
        raise DataError(f"{p} line {rows[0][0]}: found {ncols} column; need features and a label "
                        f"(check the delimiter, now {delimiter!r})")
    first = rows[0][1]
    if header == "auto":
        header = isinstance(label_column, str) or not all(_is_number(c) for c in first)
    if isinstance(label_column, str):
        names = [c.strip() for c in first]
        if label_column not in names:
            raise DataError(f"{p}: no column named {label_column!r}; columns: {', '.join(names)}")
        lab = names.index(label_column)
    else:
        if not -ncols <= label_column < ncols:
            raise DataError(f"{p}: label_column={label_column} but the file has {ncols} columns; "
                            f"use an index in [-{ncols}, {ncols - 1}]")
        lab = label_column % ncols
    body = rows[1:] if header else rows
    feats = np.empty((len(body), ncols - 1), dtype=np.float32)
    labels: list[str] = []
    for i, (line, r) in enumerate(body):
        if len(r) != ncols:
            raise DataError(f"{p} line {line}: expected {ncols} fields, found {len(r)}; "
                            "fix or remove that row")
        try:
            feats[i] = [float(c) for j, c in enumerate(r) if j != lab]
        except ValueError:
            bad = next(c for j, c in enumerate(r) if j != lab and not _is_number(c))
            raise DataError(f"{p} line {line}: feature value {bad!r} is not a number; "
                            "fix the row (missing values are not supported)") from None
        labels.append(r[lab].strip())
    if not labels:
        raise DataError(f"{p} has a header but no data rows")
    bad_rows = np.flatnonzero(~np.isfinite(feats).all(axis=1))
    if len(bad_rows):
        line, r = body[bad_rows[0]]
        bad = next(c for j, c in enumerate(r) if j != lab and not np.isfinite(float(c)))
        raise DataError(f"{p} line {line}: feature value {bad!r} is not a finite number; "
                        "fix the row (missing values are not supported)")
    if all(_is_number(v) for v in labels):
        return feats, np.array([float(v) for v in labels], dtype=np.float64)
    if task == "regression":
        bad = next((line, v) for (line, _), v in zip(body, labels) if not _is_number(v))
        raise DataError(f"{p} line {bad[0]}: target {bad[1]!r} is not a number (task='regression')")
    return feats, np.array(labels)


@SOURCES.register("csv", summary="a numeric CSV table with one label column")
def csv(path: str, label_column: int | str = -1, header: bool | str = "auto",
        test_path: str | None = None, test_fraction: float = 0.2, task: str = "classification",
        delimiter: str = ",", standardize: bool = False, seed: int = 0) -> OfflineSource:
    """A CSV table: numeric features and one label column (see :func:`read_csv`).

    Args:
        path: the training file.
        label_column: index (negative from the end) or header name of the label column.
        header: True, False or "auto".
        test_path: a test file with the same columns; None splits ``test_fraction`` off.
        test_fraction: held-out share when there is no test file.
        task: "classification" (labels, numeric or text, mapped to 0..C-1) or "regression".
        delimiter: the field separator.
        standardize: scale features by the training rows' mean and std.
        seed: fixes the split (context).

    Raises:
        DataError: a missing or malformed file (the message names the line).
        ConfigError: bad task, header or test_fraction.
    """
    check_task(task)
    x, y = read_csv(path, label_column, header, delimiter, task)
    xt = yt = None
    if test_path is not None:
        xt, yt = read_csv(test_path, label_column, header, delimiter, task)
        if y.dtype.kind != yt.dtype.kind:  # one file has text labels, the other numbers
            y, yt = y.astype(str), yt.astype(str)
    return table_source(str(path), x, y, task, test_fraction=test_fraction, seed=seed,
                        x_test=xt, y_test=yt, standardize=standardize)
