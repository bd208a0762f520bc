"""scikit-learn's bundled data sets (no download): digits, breast_cancer, wine, iris, diabetes."""

from __future__ import annotations

from types import MappingProxyType

import numpy as np

from distml.errors import ConfigError
from distml.partition.base import (SOURCES, Affine, ArrayData, DataInfo, OfflineSource,
                                   split_train_test, standardizer)

# name -> (loader function name, task)
BUNDLED = MappingProxyType({
    "digits": ("load_digits", "classification"),
    "breast_cancer": ("load_breast_cancer", "classification"),
    "wine": ("load_wine", "classification"),
    "iris": ("load_iris", "classification"),
    "diabetes": ("load_diabetes", "regression"),
})


@SOURCES.register("sklearn", summary="scikit-learn's bundled sets: digits, breast_cancer, wine, "
                  "iris (classification), diabetes (regression)")
def sklearn_set(dataset: str, test_fraction: float = 0.2, standardize: bool = True,
                images: bool = False, seed: int = 0) -> OfflineSource:
    """A bundled scikit-learn data set with a deterministic, stratified train/test split.

    Args:
        dataset: digits | breast_cancer | wine | iris | diabetes.
        test_fraction: share of the samples held out as the test set, in (0, 1).
        standardize: scale each feature to zero mean and unit variance (training-set stats).
        images: serve ``digits`` as 1×8×8 grey images (input_shape ``(1, 8, 8)``), so
            convolutional models train on it; the other sets are tables and refuse it.
        seed: the run's seed (context); it fixes the split.

    Returns:
        an offline source with input_shape ``(d,)``, or ``(1, 8, 8)`` with ``images``.

    Raises:
        ConfigError: unknown ``dataset``, ``test_fraction`` outside (0, 1), or ``images``
            for a set that is not made of images.
    """
    if dataset not in BUNDLED:
        raise ConfigError(f"unknown sklearn dataset {dataset!r}; bundled: {', '.join(BUNDLED)} "
                          "(fetch_* sets need a download: save them as npz/csv and use those sources)")
    if images and dataset != "digits":
        raise ConfigError(f"sklearn: images = true applies to digits (8x8 images), not {dataset!r}")
    import sklearn.datasets

    loader, task = BUNDLED[dataset]
    bunch = getattr(sklearn.datasets, loader)()
    x = np.asarray(bunch.data, dtype=np.float32)
    if task == "classification":
        y = np.asarray(bunch.target, dtype=np.int64)
        info = DataInfo(task, int(y.max()) + 1, (1, 8, 8) if images else (x.shape[1],))
    else:
        y = np.asarray(bunch.target, dtype=np.float32)
        info = DataInfo(task, None, (x.shape[1],))
    tr, te = split_train_test(len(x), test_fraction, seed, y if task == "classification" else None)
    transform = standardizer(x[tr]) if standardize else None
    if transform is not None and images:      # per pixel, shaped like one image
        transform = Affine(transform.scale.reshape(info.input_shape),
                           transform.shift.reshape(info.input_shape))
    full = ArrayData(x, y, info, transform)
    return OfflineSource(info, full.subset(tr), full.subset(te))
