"""Per-rank batch iterators over finite data (:class:`ShardLoader`) and online streams.

Every rank runs the same number of steps per epoch (collectives need it), and batch
``s`` of epoch ``e`` is a pure function of ``(seed, rank, e, s)``: a run resumed at
``batches(e, start=s)`` sees exactly the batches it would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch

from distml.errors import ConfigError, DataError
from distml.partition.base import PARTITIONS, ArrayData, Source
from distml.partition.samplers import SamplePartition, ShuffleSplit

Batch = tuple[torch.Tensor, torch.Tensor]


def _check_common(rank: int, world: int, batch_size: int) -> None:
    for name, v in (("world", world), ("batch_size", batch_size)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ConfigError(f"{name} must be an int >= 1, got {v!r}")
    if not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world - 1}], got {rank}")


class ShardLoader:
    """This rank's batches of a finite data set under a sample partition.

    ``steps_per_epoch = shard_size // batch_size`` on every rank, where ``shard_size``
    is the partition's nominal per-rank size (``len(data) // world`` for shuffle_split
    and dirichlet, ``round(fraction·n/world)`` for random_sampling). A shard shorter than
    ``steps_per_epoch·batch_size`` (dirichlet) cycles through its own indices; a longer
    one uses its first ``steps_per_epoch·batch_size`` indices of the epoch's order.

    Args:
        data: the training set.
        partition: the sample partitioner.
        rank: this worker, in ``[0, world)``.
        world: the number of workers.
        batch_size: samples per batch (per worker).
        seed: the run's seed.

    Raises:
        ConfigError: batch_size/world < 1 or rank out of range.
        DataError: fewer samples than workers, or a shard smaller than one batch.
    """

    def __init__(self, data: ArrayData, partition: SamplePartition, rank: int, world: int,
                 batch_size: int, seed: int):
        _check_common(rank, world, batch_size)
        n = len(data)
        if n < world:
            raise DataError(f"{n} samples cannot be split over {world} workers: "
                            "use fewer workers or more data")
        self.data, self.partition = data, partition
        self.rank, self.world, self.batch_size, self.seed = rank, world, batch_size, seed
        self.shard_size = partition.shard_size(n, world)
        if self.shard_size < batch_size:
            raise DataError(f"each of {world} workers gets {self.shard_size} of {n} samples, fewer "
                            f"than batch_size={batch_size}: use fewer workers or a smaller batch_size")
        self.steps_per_epoch = self.shard_size // batch_size

    def indices(self, epoch: int) -> np.ndarray:
        """The ``steps_per_epoch·batch_size`` sample indices this rank reads in ``epoch``, in order."""
        idx = self.partition.indices(len(self.data), self.rank, self.world, epoch, self.seed,
                                     self.data.labels)
        if len(idx) == 0:
            raise DataError(f"rank {self.rank} got an empty shard in epoch {epoch}: "
                            "use fewer workers or another partition")
        need = self.steps_per_epoch * self.batch_size
        return np.resize(idx, need) if len(idx) < need else idx[:need]

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start .. steps_per_epoch-1`` of ``epoch``.

        Raises:
            ConfigError: ``start`` outside ``[0, steps_per_epoch]``.
        """
        if not 0 <= start <= self.steps_per_epoch:
            raise ConfigError(f"start must be in [0, {self.steps_per_epoch}], got {start}")
        idx, b = self.indices(epoch), self.batch_size
        for s in range(start, self.steps_per_epoch):
            yield self.data.take(idx[s * b:(s + 1) * b])

    def full_batch(self) -> Batch:
        """This rank's whole epoch-0 shard as one batch (for full-batch GD / L-BFGS)."""
        idx = self.partition.indices(len(self.data), self.rank, self.world, 0, self.seed,
                                     self.data.labels)
        return self.data.take(idx)


class OnlineLoader:
    """This rank's batches of an online source: ``source.batch(rank, epoch, step, batch_size)``.

    Args:
        source: an online source.
        rank: this worker, in ``[0, world)``.
        world: the number of workers.
        batch_size: samples per batch (per worker).
        samples_per_epoch: samples all workers together read per "epoch" (the unit of
            schedules and evaluation; the stream itself never ends).

    Raises:
        ConfigError: bad sizes, an offline source, or fewer than one batch per worker.
    """

    def __init__(self, source: Source, rank: int, world: int, batch_size: int, samples_per_epoch: int):
        _check_common(rank, world, batch_size)
        if not source.online:
            raise ConfigError("OnlineLoader needs an online source; use ShardLoader (make_loader) "
                              "for finite data")
        if not isinstance(samples_per_epoch, (int, np.integer)) or samples_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch must be an int >= 1, got {samples_per_epoch!r}")
        self.source, self.rank, self.world, self.batch_size = source, rank, world, batch_size
        self.samples_per_epoch = samples_per_epoch
        self.shard_size = samples_per_epoch // world
        self.steps_per_epoch = self.shard_size // batch_size
        if self.steps_per_epoch < 1:
            raise ConfigError(f"samples_per_epoch={samples_per_epoch} over {world} workers gives "
                              f"{self.shard_size} samples each, fewer than batch_size={batch_size}: "
                              "raise samples_per_epoch, or use fewer workers or a smaller batch_size")

    def batches(self, epoch: int, start: int = 0) -> Iterator[Batch]:
        """Batches ``start .. steps_per_epoch-1`` of ``epoch``."""
        if not 0 <= start <= self.steps_per_epoch:
            raise ConfigError(f"start must be in [0, {self.steps_per_epoch}], got {start}")
        for s in range(start, self.steps_per_epoch):
            yield self.source.batch(self.rank, epoch, s, self.batch_size)

    def full_batch(self) -> Batch:
        """One batch of ``samples_per_epoch // world`` samples (epoch 0, step 0 of this rank)."""
        return self.source.batch(self.rank, 0, 0, self.shard_size)


def make_loader(source: Source, partition: SamplePartition | str | Mapping[str, Any] | None,
                rank: int, world: int, batch_size: int, seed: int,
                samples_per_epoch: int | None = None) -> ShardLoader | OnlineLoader:
    """The loader for ``source``: a :class:`ShardLoader` for finite data, else an :class:`OnlineLoader`.

    Args:
        source: what ``SOURCES.build`` returned.
        partition: a partitioner, a ``PARTITIONS`` spec, or None for shuffle_split;
            ignored for online sources (each rank's stream is already its own).
        rank: this worker.
        world: the number of workers.
        batch_size: samples per batch (per worker).
        seed: the run's seed.
        samples_per_epoch: required for online sources.

    Raises:
        ConfigError: an online source without ``samples_per_epoch``, or bad sizes.
        DataError: the data cannot be split as asked.
    """
    if source.online:
        if samples_per_epoch is None:
            raise ConfigError("online data has no size: set data.samples_per_epoch "
                              "(e.g. samples_per_epoch = 20000)")
        return OnlineLoader(source, rank, world, batch_size, samples_per_epoch)
    if partition is None:
        partition = ShuffleSplit()
    elif not isinstance(partition, SamplePartition):
        partition = PARTITIONS.build(partition)
    return ShardLoader(source.train(), partition, rank, world, batch_size, seed)
