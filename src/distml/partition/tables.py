"""Turning loaded feature/target arrays into an :class:`OfflineSource` (shared by the file loaders)."""

from __future__ import annotations

from typing import Any

import numpy as np

from distml.errors import ConfigError, DataError
from distml.partition.base import (TASKS, ArrayData, DataInfo, OfflineSource, encode_labels,
                                   split_train_test, standardizer)


def check_task(task: str) -> str:
    """Return ``task`` if it is valid.

    Raises:
        ConfigError: not "classification" or "regression".
    """
    if task not in TASKS:
        raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return task


def table_source(name: str, x: Any, y: Any, task: str, *, test_fraction: float, seed: int,
                 x_test: Any = None, y_test: Any = None, standardize: bool = False) -> OfflineSource:
    """An offline source from 2-D features and 1-D targets, split or with a given test set.

    Args:
        name: the file (or files) the data came from, for messages.
        x: training features ``(n, *sample_shape)``: ndarray, memmap or scipy sparse (kept as is).
        y: training targets ``(n,)``: class labels of any sortable type, or numbers.
        task: "classification" (labels mapped to 0..C-1, shared with the test set) or
            "regression".
        test_fraction: held-out share when no test set is given.
        seed: fixes the split.
        x_test: test features, or None to split ``x``.
        y_test: test targets (with ``x_test``).
        standardize: scale dense features by the training rows' mean and std.

    Raises:
        DataError: shapes that do not fit, fewer than 2 classes, non-numeric regression targets.
        ConfigError: bad ``task``/``test_fraction``, or ``standardize`` on sparse data.
    """
    check_task(task)
    if x.ndim < 2:
        raise DataError(f"{name}: features must be an array of shape (samples, *sample_shape), "
                        f"got shape {x.shape}")
    for what, xs, ys_ in (("training", x, y), ("test", x_test, y_test)):
        if xs is not None and ys_ is not None and xs.shape[0] != len(ys_):
            raise DataError(f"{name}: {xs.shape[0]} {what} samples but {len(ys_)} targets; "
                            "features and targets must have one row per sample")
    if x_test is not None and x_test.shape[1:] != x.shape[1:]:
        raise DataError(f"{name}: test samples have shape {x_test.shape[1:]}, training samples "
                        f"{x.shape[1:]}; they must match (set n_features for svmlight files)")
    ys = [np.asarray(y).ravel()] + ([] if y_test is None else [np.asarray(y_test).ravel()])
    if task == "classification":
        ys, num_classes = encode_labels(name, *ys)
    else:
        try:
            ys = [v.astype(np.float32) for v in ys]
        except (ValueError, TypeError):
            raise DataError(f"{name}: regression targets must be numbers; "
                            "use task='classification' for labels") from None
        num_classes = None
    info = DataInfo(task, num_classes, tuple(int(d) for d in x.shape[1:]))
    if standardize and hasattr(x, "toarray"):
        raise ConfigError(f"{name}: standardize would make sparse features dense; "
                          "set standardize=false")
    if x_test is None:
        tr, te = split_train_test(x.shape[0], test_fraction, seed, ys[0] if num_classes else None)
        transform = standardizer(x[tr]) if standardize else None
        full = ArrayData(x, ys[0], info, transform)
        return OfflineSource(info, full.subset(tr), full.subset(te))
    transform = standardizer(x) if standardize else None
    return OfflineSource(info, ArrayData(x, ys[0], info, transform),
                         ArrayData(x_test, ys[1], info, transform))
