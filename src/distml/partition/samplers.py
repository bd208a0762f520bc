"""Sample partitioners: which sample indices each rank uses in each epoch.

Every partitioner is a pure function of ``(n, rank, world, epoch, seed, labels)``, so
any rank can recompute any epoch (exact resume) without talking to the others.
"""

from __future__ import annotations

import math

import numpy as np

from distml.errors import ConfigError, DataError
from distml.partition.base import PARTITIONS, rng

# distinct stream tags so two partitioners never share random numbers
_SHUFFLE, _SAMPLE, _DIRICHLET, _CONTIGUOUS = 0x5F1, 0x5A2, 0xD13, 0xC07


def check_rank(n: int, rank: int, world: int) -> None:
    """Raise unless ``0 <= rank < world`` and every rank can get a sample.

    Raises:
        ConfigError: world < 1 or rank out of range.
        DataError: fewer samples than workers.
    """
    if world < 1:
        raise ConfigError(f"world must be >= 1, got {world}")
    if not 0 <= rank < world:
        raise ConfigError(f"rank must be in [0, {world - 1}], got {rank}")
    if n < world:
        raise DataError(f"{n} samples cannot be split over {world} workers: use fewer workers "
                        "or more data")


class SamplePartition:
    """Base class: the sample indices a rank uses in an epoch."""

    def shard_size(self, n: int, world: int) -> int:
        """The nominal number of samples per rank and epoch (equal on every rank)."""
        return n // world

    def indices(self, n: int, rank: int, world: int, epoch: int, seed: int,
                labels: np.ndarray | None) -> np.ndarray:
        """The indices rank ``rank`` uses in ``epoch``, in order (int64)."""
        raise NotImplementedError


@PARTITIONS.register("shuffle_split", summary="one permutation cut into disjoint equal shards; "
                     "reshuffled globally, within the shard, or never")
class ShuffleSplit(SamplePartition):
    """Shuffle-and-split: a permutation cut into ``world`` disjoint equal contiguous shards.

    The last ``n % world`` samples of the permutation are dropped in that epoch.

    Args:
        reshuffle: "global" (a new permutation each epoch, so shards change), "shard"
            (the epoch-0 shards, reshuffled inside each epoch) or "none" (the epoch-0
            shards in the same order every epoch).

    Raises:
        ConfigError: an unknown ``reshuffle``.
    """

    MODES = ("global", "shard", "none")

    def __init__(self, reshuffle: str = "global"):
        if reshuffle not in self.MODES:
            raise ConfigError(f"reshuffle must be one of {', '.join(self.MODES)}, got {reshuffle!r}")
        self.reshuffle = reshuffle

    def indices(self, n, rank, world, epoch, seed, labels=None):
        check_rank(n, rank, world)
        size = n // world
        perm = rng(seed, _SHUFFLE, epoch if self.reshuffle == "global" else 0).permutation(n)
        shard = perm[rank * size:(rank + 1) * size]
        if self.reshuffle == "shard":
            shard = shard[rng(seed, _SHUFFLE, epoch, rank + 1).permutation(size)]
        return shard.astype(np.int64)


@PARTITIONS.register("contiguous", summary="rank r reads the r-th contiguous stretch of the data "
                     "in order (e.g. consecutive text windows); optionally reshuffled inside it")
class Contiguous(ShuffleSplit):
    """Contiguous stretches: rank r reads samples ``[r·n/world, (r+1)·n/world)`` in order.

    Shuffle-and-split without the shuffle. For ordered data such as the windows of a
    token stream (partition/text.py), each rank's batches are then consecutive windows
    of its own stretch of text; the last ``n % world`` samples are dropped.

    Args:
        reshuffle: "none" (the stretch in order every epoch) or "shard" (the same stretch,
            its samples in a new order each epoch).

    Raises:
        ConfigError: an unknown ``reshuffle``.
    """

    MODES = ("none", "shard")

    def __init__(self, reshuffle: str = "none"):
        super().__init__(reshuffle)

    def indices(self, n, rank, world, epoch, seed, labels=None):
        check_rank(n, rank, world)
        size = n // world
        shard = np.arange(rank * size, (rank + 1) * size, dtype=np.int64)
        if self.reshuffle == "shard":
            shard = shard[rng(seed, _CONTIGUOUS, epoch, rank + 1).permutation(size)]
        return shard


@PARTITIONS.register("random_sampling", summary="each rank draws i.i.d. samples with replacement "
                     "from the whole set")
class RandomSampling(SamplePartition):
    """Random sampling: each rank draws ``round(fraction·n/world)`` indices i.i.d. with replacement.

    Draws are seeded by ``(seed, rank, epoch)``, so ranks are independent and overlap.

    Args:
        fraction: the samples a rank draws per epoch, as a share of ``n/world`` (> 0).

    Raises:
        ConfigError: ``fraction`` <= 0.
    """

    def __init__(self, fraction: float = 1.0):
        if not fraction > 0:
            raise ConfigError(f"fraction must be > 0, got {fraction}")
        if not math.isfinite(fraction):
            raise ConfigError(f"fraction must be finite, got {fraction}")
        self.fraction = float(fraction)

    def shard_size(self, n, world):
        return int(round(self.fraction * n / world))

    def indices(self, n, rank, world, epoch, seed, labels=None):
        check_rank(n, rank, world)
        m = self.shard_size(n, world)
        if m < 1:
            raise DataError(f"random_sampling with fraction={self.fraction} draws 0 samples per "
                            f"worker from {n} samples over {world} workers: raise fraction")
        return rng(seed, _SAMPLE, rank, epoch).integers(0, n, size=m, dtype=np.int64)


@PARTITIONS.register("dirichlet", summary="label-skewed non-IID shards, class shares ~ Dirichlet(alpha)",
                     paper="Hsu, Qi, Brown 2019, arXiv:1909.06335")
class Dirichlet(SamplePartition):
    """Label-skewed non-IID shards: each class is split among ranks by Dirichlet(α) shares.

    Reference: Hsu, Qi, Brown, "Measuring the Effects of Non-Identical Data
    Distribution for Federated Visual Classification", 2019. Small α gives each rank few
    classes; large α approaches an i.i.d. split. Shards are fixed by the seed (the same
    in every epoch) and reshuffled inside each epoch; their sizes differ.

    Args:
        alpha: the Dirichlet concentration (> 0).
        min_size: the fewest samples any shard may get (>= 1); draws are repeated, then
            samples moved from the largest shards, until it holds.

    Raises:
        ConfigError: ``alpha`` <= 0 or ``min_size`` < 1.
    """

    def __init__(self, alpha: float = 0.5, min_size: int = 1):
        if not alpha > 0:
            raise ConfigError(f"alpha must be > 0, got {alpha}")
        if not math.isfinite(alpha):
            raise ConfigError(f"alpha must be finite, got {alpha}")
        if not isinstance(min_size, int) or min_size < 1:
            raise ConfigError(f"min_size must be an int >= 1, got {min_size!r}")
        self.alpha, self.min_size = float(alpha), min_size

    def shards(self, n: int, world: int, seed: int, labels: np.ndarray | None) -> list[np.ndarray]:
        """Every rank's (sorted) shard; the same for every epoch.

        Raises:
            ConfigError: no labels (a regression task).
            DataError: labels of the wrong length, or too few samples for ``min_size``.
        """
        if labels is None:
            raise ConfigError("the dirichlet partition needs class labels but the data has none "
                              "(a regression task): use shuffle_split or random_sampling")
        labels = np.asarray(labels)
        if len(labels) != n:
            raise DataError(f"dirichlet got {len(labels)} labels for {n} samples")
        if n < world * self.min_size:
            raise DataError(f"{n} samples cannot give {world} workers {self.min_size} each "
                            "(dirichlet min_size): use fewer workers or a smaller min_size")
        g = rng(seed, _DIRICHLET)
        by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        for _ in range(100):
            parts: list[list[np.ndarray]] = [[] for _ in range(world)]
            for idx in by_class:
                idx = g.permutation(idx)
                p = np.nan_to_num(g.dirichlet(np.full(world, self.alpha)))
                if p.sum() <= 0:  # tiny alpha can underflow every share
                    p = np.eye(world)[g.integers(world)]
                cuts = np.floor(np.cumsum(p / p.sum())[:-1] * len(idx)).astype(np.int64)
                for r, part in enumerate(np.split(idx, cuts)):
                    parts[r].append(part)
            shards = [np.concatenate(ps) for ps in parts]
            if min(len(s) for s in shards) >= self.min_size:
                break
        else:
            shards = _fill_small(shards, self.min_size)
        return [np.sort(s).astype(np.int64) for s in shards]

    def indices(self, n, rank, world, epoch, seed, labels=None):
        check_rank(n, rank, world)
        shard = self.shards(n, world, seed, labels)[rank]
        return shard[rng(seed, _DIRICHLET, epoch, rank + 1).permutation(len(shard))]


def _fill_small(shards: list[np.ndarray], min_size: int) -> list[np.ndarray]:
    """Move samples from the largest shards to those below ``min_size`` (deterministic)."""
    shards = list(shards)
    for r in range(len(shards)):
        while len(shards[r]) < min_size:
            donor = int(np.argmax([len(s) for s in shards]))
            take = min(min_size - len(shards[r]), len(shards[donor]) - min_size)
            shards[r] = np.concatenate([shards[r], shards[donor][-take:]])
            shards[donor] = shards[donor][:-take]
    return shards
