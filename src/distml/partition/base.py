"""The data contract: registries, :class:`DataInfo`, :class:`ArrayData` and :class:`Source`.

Every data source (file loader or generator) returns a :class:`Source`; finite sets are
:class:`ArrayData`, which converts only the rows a batch asks for, so the backing array
may be an ``np.memmap``, a uint8 image array or a scipy CSR matrix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from distml.errors import ConfigError, DataError
from distml.registry import Registry

SOURCES = Registry("data source")
PARTITIONS = Registry("partition")

LANGUAGE_MODELING = "language_modeling"
TASKS = ("classification", "regression", LANGUAGE_MODELING)


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data.

    Args:
        task: "classification", "regression" or "language_modeling" (next-token
            prediction: a sample is a window of T token ids, its target the same window
            shifted by one).
        num_classes: number of classes (2 for binary tasks, labels 0/1); the vocabulary
            size for language modelling; None for regression.
        input_shape: the shape of one sample, e.g. ``(1, 28, 28)``, ``(d,)`` or ``(T,)``.
    """

    task: str
    num_classes: int | None
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        if self.task != "regression" and (self.num_classes is None or self.num_classes < 2):
            raise DataError(f"a {self.task} task needs at least 2 classes (tokens), got {self.num_classes}")
        if self.task == "regression" and self.num_classes is not None:
            raise ConfigError("a regression task has num_classes=None, "
                              f"got {self.num_classes}")


class Affine:
    """Per-feature ``x * scale + shift`` applied to the float32 rows of a batch (picklable).

    Args:
        scale: a scalar or an array broadcastable to one sample.
        shift: a scalar or an array broadcastable to one sample.
    """

    def __init__(self, scale: Any, shift: Any):
        self.scale = torch.as_tensor(np.asarray(scale, dtype=np.float32))
        self.shift = torch.as_tensor(np.asarray(shift, dtype=np.float32))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.scale).add_(self.shift)


def standardizer(x: Any) -> Affine:
    """The :class:`Affine` that makes each column of ``x`` zero-mean, unit-variance.

    Columns with zero variance are only centred (divided by 1), so they stay finite.
    """
    x = np.asarray(x, dtype=np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std == 0] = 1.0
    return Affine(1.0 / std, -mean / std)


class ArrayData:
    """A finite, indexable set of samples that converts only the requested rows.

    Args:
        x: features, one row per sample: ``np.ndarray`` (also ``np.memmap``), a scipy
            sparse matrix (kept sparse; rows are densified in :meth:`take`) or a tensor.
        y: targets, one per sample (int class ids for classification).
        info: the task and shapes; ``take`` reshapes rows to ``(k, *info.input_shape)``.
        transform: applied in place to the float32 rows of a batch (e.g. :class:`Affine`).
        rows: the rows of ``x``/``y`` this set consists of (a view; None = all rows).

    Attributes:
        labels: int64 class ids of this set (classification), or None (regression).
    """

    def __init__(self, x: Any, y: Any, info: DataInfo, transform: Any = None,
                 rows: np.ndarray | None = None):
        n = x.shape[0]
        if len(y) != n:
            raise DataError(f"features have {n} rows but there are {len(y)} targets; "
                            "each sample needs exactly one target")
        self.x, self.y, self.info, self.transform = x, y, info, transform
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        sel = np.asarray(y) if self.rows is None else np.asarray(y[self.rows])
        self.labels = sel.astype(np.int64) if info.task == "classification" else None

    def __len__(self) -> int:
        return self.x.shape[0] if self.rows is None else len(self.rows)

    def subset(self, idx: np.ndarray) -> ArrayData:
        """A view of the samples ``idx`` of this set (no feature data is copied)."""
        idx = np.asarray(idx, dtype=np.int64)
        rows = idx if self.rows is None else self.rows[idx]
        return ArrayData(self.x, self.y, self.info, self.transform, rows)

    def take(self, idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """The samples ``idx`` as tensors.

        Returns:
            ``(x, y)``: x float32 of shape ``(len(idx), *input_shape)``; y int64 for
            classification, float32 for regression, shape ``(len(idx),)``.
        """
        idx = np.asarray(idx, dtype=np.int64)
        r = idx if self.rows is None else self.rows[idx]
        if isinstance(self.x, torch.Tensor):
            xb = self.x[torch.from_numpy(r)].to(torch.float32)
        else:
            part = self.x[r]
            part = part.toarray() if hasattr(part, "toarray") else np.asarray(part)
            xb = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
        xb = xb.reshape(len(r), *self.info.input_shape)
        if self.transform is not None:
            xb = self.transform(xb)
        yt = np.asarray(self.y[r])
        dtype = np.int64 if self.info.task == "classification" else np.float32
        return xb, torch.from_numpy(np.ascontiguousarray(yt, dtype=dtype))


class Source:
    """What ``SOURCES.build`` returns: a fixed test set and either a training set or a stream.

    Attributes:
        info: task, number of classes and sample shape.
        online: True for endless generators (use :meth:`batch`), False for finite data.
    """

    info: DataInfo
    online: bool = False

    def train(self) -> ArrayData:
        """The training set (offline sources only).

        Raises:
            ConfigError: an online source has no fixed training set.
        """
        raise ConfigError(f"{type(self).__name__} is an online source with no fixed training set: "
                          "read it with batch() (set data.samples_per_epoch), or use mode='offline'")

    def test(self) -> ArrayData:
        """The fixed test set."""
        raise NotImplementedError

    def batch(self, rank: int, epoch: int, step: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A fresh batch, a pure function of (source seed, rank, epoch, step) (online only).

        Raises:
            ConfigError: an offline source has no stream.
        """
        raise ConfigError(f"{type(self).__name__} is an offline source: read it through "
                          "train() and a partition, not batch()")


class OfflineSource(Source):
    """A source made of a fixed training set and a fixed test set.

    Args:
        info: what the data is.
        train: the training set.
        test: the test set.
    """

    online = False

    def __init__(self, info: DataInfo, train: ArrayData, test: ArrayData):
        self.info, self._train, self._test = info, train, test

    def train(self) -> ArrayData:
        return self._train

    def test(self) -> ArrayData:
        return self._test


def rng(*ints: int) -> np.random.Generator:
    """A numpy generator seeded by a tuple of ints (negative ints allowed)."""
    return np.random.default_rng(np.random.SeedSequence([int(i) % 2**64 for i in ints]))


def seed_of(*ints: int) -> int:
    """A 63-bit seed mixed from a tuple of ints (for ``torch.Generator.manual_seed``)."""
    hi, lo = np.random.SeedSequence([int(i) % 2**64 for i in ints]).generate_state(2, np.uint32)
    return ((int(hi) << 32) | int(lo)) & (2**63 - 1)


def split_train_test(n: int, test_fraction: float, seed: int,
                     labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic train/test row indices, stratified by ``labels`` when every class has 2+ samples.

    Raises:
        ConfigError: ``test_fraction`` outside (0, 1).
        DataError: too few samples to leave at least one on each side.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if n_test < 1 or n - n_test < 1:
        raise DataError(f"{n} samples cannot be split with test_fraction={test_fraction}: "
                        "use a larger data set or give a separate test file")
    g = rng(seed, 0x5E1)
    if labels is not None:
        classes, counts = np.unique(labels, return_counts=True)
        if counts.min() >= 2 and n_test >= len(classes) and n - n_test >= len(classes):
            from sklearn.model_selection import train_test_split
            tr, te = train_test_split(np.arange(n), test_size=n_test, stratify=labels,
                                      random_state=int(g.integers(2**31)))
            return np.sort(tr), np.sort(te)
    perm = g.permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def encode_labels(name: str, *ys: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Map the labels of one or more arrays to 0..C-1 with one shared mapping (sorted values).

    Binary −1/+1 labels become 0/1.

    Returns:
        the encoded int64 arrays and C.

    Raises:
        DataError: fewer than 2 distinct labels.
    """
    classes = np.unique(np.concatenate([np.asarray(y).ravel() for y in ys]))
    if len(classes) < 2:
        raise DataError(f"{name}: a classification task needs at least 2 distinct labels, "
                        f"found {len(classes)}; use task='regression' or check the label column")
    return [np.searchsorted(classes, np.asarray(y)).astype(np.int64) for y in ys], len(classes)
