"""Sample partitioners: shuffle_split, random_sampling, dirichlet."""

import numpy as np
import pytest

from distml.errors import ConfigError, DataError
from distml.partition import PARTITIONS


def shards(part, n, world, epoch, seed=0, labels=None):
    return [part.indices(n, r, world, epoch, seed, labels) for r in range(world)]


@pytest.mark.parametrize("reshuffle", ["global", "shard", "none"])
@pytest.mark.parametrize("n,world", [(100, 3), (7, 7), (1001, 4)])
def test_shuffle_split_disjoint_and_covering(reshuffle, n, world):
    part = PARTITIONS.build({"name": "shuffle_split", "reshuffle": reshuffle})
    for epoch in range(3):
        sh = shards(part, n, world, epoch)
        assert all(len(s) == n // world for s in sh)
        cat = np.concatenate(sh)
        assert len(np.unique(cat)) == len(cat) == world * (n // world)  # disjoint, remainder dropped
        assert cat.min() >= 0 and cat.max() < n


def test_shuffle_split_global_changes_shards_across_epochs():
    part = PARTITIONS.build({"name": "shuffle_split", "reshuffle": "global"})
    e0, e1 = shards(part, 1000, 2, 0), shards(part, 1000, 2, 1)
    assert set(e0[0]) != set(e1[0])
    assert all(np.array_equal(a, b) for a, b in zip(e1, shards(part, 1000, 2, 1)))  # deterministic


def test_shuffle_split_shard_keeps_set_changes_order():
    part = PARTITIONS.build({"name": "shuffle_split", "reshuffle": "shard"})
    for r in range(3):
        a, b = part.indices(300, r, 3, 0, 5, None), part.indices(300, r, 3, 1, 5, None)
        assert set(a) == set(b)
        assert not np.array_equal(a, b)


def test_shuffle_split_none_is_fixed():
    part = PARTITIONS.build({"name": "shuffle_split", "reshuffle": "none"})
    assert np.array_equal(part.indices(300, 1, 3, 0, 5, None), part.indices(300, 1, 3, 4, 5, None))


def test_shuffle_split_depends_on_seed():
    part = PARTITIONS.build("shuffle_split")
    assert not np.array_equal(part.indices(100, 0, 2, 0, 1, None), part.indices(100, 0, 2, 0, 2, None))


def test_shuffle_split_rejects_bad_mode_and_too_many_workers():
    with pytest.raises(ConfigError, match="reshuffle must be one of"):
        PARTITIONS.build({"name": "shuffle_split", "reshuffle": "sometimes"})
    with pytest.raises(DataError, match="fewer workers"):
        PARTITIONS.build("shuffle_split").indices(3, 0, 4, 0, 0, None)


def test_random_sampling_duplicate_rate_matches_expectation():
    n, world, fraction = 2000, 2, 3.0
    part = PARTITIONS.build({"name": "random_sampling", "fraction": fraction})
    idx = part.indices(n, 0, world, 0, 0, None)
    m = round(fraction * n / world)
    assert len(idx) == m and idx.min() >= 0 and idx.max() < n
    expected = n / m * (1 - (1 - 1 / n) ** m)          # share of distinct indices among m draws
    assert abs(len(np.unique(idx)) / m - expected) < 0.02
    # a without-replacement split would have no duplicates at all
    assert len(np.unique(idx)) < m


def test_random_sampling_independent_across_ranks_and_epochs():
    n = 5000
    part = PARTITIONS.build({"name": "random_sampling"})
    a, b = part.indices(n, 0, 2, 0, 0, None), part.indices(n, 1, 2, 0, 0, None)
    m = len(a)
    q = 1 - (1 - 1 / n) ** m                            # P(an index is drawn by one rank)
    overlap = len(np.intersect1d(a, b))
    assert abs(overlap - n * q * q) < 5 * np.sqrt(n * q * q)   # as for independent draws
    assert not np.array_equal(a, part.indices(n, 0, 2, 1, 0, None))
    assert np.array_equal(a, part.indices(n, 0, 2, 0, 0, None))


def test_random_sampling_validates_fraction():
    with pytest.raises(ConfigError, match="fraction must be > 0, got -1"):
        PARTITIONS.build({"name": "random_sampling", "fraction": -1})


def _mean_tv(part, labels, world, seed=0):
    glob = np.bincount(labels, minlength=10) / len(labels)
    tvs = []
    for s in shards(part, len(labels), world, 0, seed, labels):
        assert len(s) > 0
        tvs.append(0.5 * np.abs(np.bincount(labels[s], minlength=10) / len(s) - glob).sum())
    return float(np.mean(tvs))


def test_dirichlet_skew_grows_as_alpha_shrinks():
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 500))
    tv = {a: np.mean([_mean_tv(PARTITIONS.build({"name": "dirichlet", "alpha": a}), labels, 4, s)
                      for s in range(3)])
          for a in (100.0, 1.0, 0.05)}
    assert tv[100.0] < 0.1 < tv[1.0] < tv[0.05]
    assert tv[0.05] > 0.5


def test_dirichlet_shards_fixed_disjoint_reshuffled():
    labels = np.repeat(np.arange(5), 40)
    part = PARTITIONS.build({"name": "dirichlet", "alpha": 0.3})
    e0, e1 = shards(part, 200, 3, 0, 0, labels), shards(part, 200, 3, 1, 0, labels)
    assert sum(len(s) for s in e0) == 200
    assert len(np.unique(np.concatenate(e0))) == 200
    for a, b in zip(e0, e1):
        assert set(a) == set(b)
    assert any(not np.array_equal(a, b) for a, b in zip(e0, e1))


def test_dirichlet_every_shard_reaches_min_size():
    labels = np.repeat(np.arange(2), 50)     # 2 classes, 8 workers, tiny alpha: many empty draws
    part = PARTITIONS.build({"name": "dirichlet", "alpha": 0.01, "min_size": 5})
    sh = shards(part, 100, 8, 0, 3, labels)
    assert min(len(s) for s in sh) >= 5
    assert len(np.unique(np.concatenate(sh))) == 100


def test_dirichlet_errors():
    with pytest.raises(ConfigError, match="alpha must be > 0, got -1"):
        PARTITIONS.build({"name": "dirichlet", "alpha": -1})
    with pytest.raises(ConfigError, match="min_size"):
        PARTITIONS.build({"name": "dirichlet", "min_size": 0})
    with pytest.raises(ConfigError, match="needs class labels"):
        PARTITIONS.build("dirichlet").indices(10, 0, 2, 0, 0, None)
    with pytest.raises(DataError, match="min_size"):
        PARTITIONS.build({"name": "dirichlet", "min_size": 4}).indices(10, 0, 3, 0, 0, np.zeros(10, int))
