"""Adapters for a user's own ``torch.utils.data.Dataset`` of ``(x, y)`` pairs."""

from __future__ import annotations

import numpy as np
import torch

from distml.errors import DataError
from distml.partition.base import ArrayData, DataInfo, OfflineSource


class DatasetRows:
    """Row access ``rows[idx]`` over a map-style Dataset, reading only the requested samples."""

    def __init__(self, dataset, part: int):
        self.dataset = dataset
        self.part = part
        self.shape = (len(dataset),)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx):
        items = [self.dataset[int(i)][self.part] for i in np.atleast_1d(idx)]
        return torch.stack([torch.as_tensor(t) for t in items]).numpy()


def _targets(dataset) -> np.ndarray:
    targets = getattr(dataset, "targets", None)   # torchvision's convention: no need to read x
    if targets is not None:
        return np.asarray(targets)
    return np.asarray([np.asarray(dataset[i][1]) for i in range(len(dataset))])


def _infer(train, task: str | None) -> DataInfo:
    if len(train) == 0:
        raise DataError("train_data is empty")
    x0, y0 = train[0]
    x0 = torch.as_tensor(x0)
    y = _targets(train)
    if task is None:
        task = "classification" if np.issubdtype(y.dtype, np.integer) else "regression"
    if task == "classification":
        if y.min() < 0:
            raise DataError(f"train_data labels must be 0..C-1, found {y.min()}")
        return DataInfo("classification", max(int(y.max()) + 1, 2), tuple(x0.shape))
    return DataInfo("regression", None, tuple(x0.shape))


class DatasetSource(OfflineSource):
    """A source over a user's train and test Datasets (each item ``(x, y)``).

    Args:
        train, test: map-style datasets.
        task: "classification" or "regression"; inferred from the label dtype if None.
    """

    def __init__(self, train, test, task: str | None = None):
        info = _infer(train, task)

        def wrap(ds) -> ArrayData:
            return ArrayData(DatasetRows(ds, 0), _targets(ds), info)

        super().__init__(info, wrap(train), wrap(test))
