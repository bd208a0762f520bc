"""ShardLoader / OnlineLoader / make_loader / FeatureSplit."""

import numpy as np
import pytest
import torch

from distml.errors import ConfigError, DataError
from distml.partition import (PARTITIONS, SOURCES, ArrayData, DataInfo, FeatureSplit, OnlineLoader,
                              ShardLoader, make_loader)


def toy(n=103, classes=4):
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return ArrayData(x, np.arange(n) % classes, DataInfo("classification", classes, (2,)))


@pytest.mark.parametrize("spec", ["shuffle_split", {"name": "random_sampling", "fraction": 0.7},
                                  {"name": "dirichlet", "alpha": 0.1}])
def test_equal_steps_and_full_batches(spec):
    data, world, bs = toy(), 3, 8
    loaders = [ShardLoader(data, PARTITIONS.build(spec), r, world, bs, 0) for r in range(world)]
    steps = {ld.steps_per_epoch for ld in loaders}
    assert len(steps) == 1
    for ld in loaders:
        got = list(ld.batches(1))
        assert len(got) == ld.steps_per_epoch
        assert all(x.shape == (bs, 2) and y.shape == (bs,) for x, y in got)


def test_steps_per_epoch_formula():
    ld = ShardLoader(toy(103), PARTITIONS.build("shuffle_split"), 0, 3, 8, 0)
    assert ld.steps_per_epoch == (103 // 3) // 8


def test_deterministic_and_resumable():
    data = toy()
    a = ShardLoader(data, PARTITIONS.build("shuffle_split"), 1, 2, 5, 7)
    b = ShardLoader(data, PARTITIONS.build("shuffle_split"), 1, 2, 5, 7)
    full = list(a.batches(3))
    again = list(b.batches(3))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(full, again))
    for k in (0, 4, len(full)):
        tail = list(a.batches(3, start=k))
        assert len(tail) == len(full) - k
        assert all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(tail, full[k:]))
    assert not torch.equal(full[0][0], next(a.batches(4))[0])     # a new epoch reshuffles


def test_ranks_disjoint_under_shuffle_split():
    data = toy(100)
    seen = [torch.cat([x[:, 0] for x, _ in ShardLoader(data, PARTITIONS.build("shuffle_split"),
                                                         r, 2, 10, 0).batches(0)]) for r in range(2)]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert len(set(seen[0].tolist()) | set(seen[1].tolist())) == 100


def test_short_dirichlet_shard_cycles_its_own_indices():
    labels = np.repeat([0, 1], [90, 10])
    data = ArrayData(np.arange(100, dtype=np.float32)[:, None], labels, DataInfo("classification", 2, (1,)))
    part = PARTITIONS.build({"name": "dirichlet", "alpha": 0.05})
    sizes = [len(part.indices(100, r, 2, 0, 0, labels)) for r in range(2)]
    small = int(np.argmin(sizes))
    ld = ShardLoader(data, part, small, 2, 5, 0)
    idx = ld.indices(0)
    assert len(idx) == ld.steps_per_epoch * 5 == 50
    assert set(idx) == set(part.indices(100, small, 2, 0, 0, labels))


def test_full_batch_is_epoch0_shard():
    data, part = toy(100), PARTITIONS.build("shuffle_split")
    ld = ShardLoader(data, part, 0, 2, 8, 0)
    x, y = ld.full_batch()
    assert x.shape == (50, 2) and y.shape == (50,)
    assert torch.equal(x, data.take(part.indices(100, 0, 2, 0, 0, None))[0])
    used = torch.cat([b[0][:, 0] for b in ld.batches(0)])
    assert set(used.tolist()) <= set(x[:, 0].tolist())


@pytest.mark.parametrize("world,bs,err,match", [
    (200, 1, DataError, "103 samples cannot be split over 200 workers: use fewer workers"),
    (4, 30, DataError, "fewer than batch_size=30: use fewer workers or a smaller batch_size"),
    (0, 4, ConfigError, "world must be an int >= 1, got 0"),
    (2, 0, ConfigError, "batch_size must be an int >= 1, got 0"),
])
def test_bad_sizes(world, bs, err, match):
    with pytest.raises(err, match=match):
        ShardLoader(toy(), PARTITIONS.build("shuffle_split"), 0, world, bs, 0)


def test_make_loader_online_and_offline():
    online = SOURCES.build({"name": "synthetic", "kind": "teacher_mlp", "mode": "online",
                            "n_test": 10}, seed=0)
    ld = make_loader(online, None, 1, 2, 16, 0, samples_per_epoch=1000)
    assert isinstance(ld, OnlineLoader) and ld.steps_per_epoch == 1000 // 2 // 16
    got = list(ld.batches(2, start=3))
    assert len(got) == ld.steps_per_epoch - 3
    assert torch.equal(got[0][0], online.batch(1, 2, 3, 16)[0])
    assert ld.full_batch()[0].shape == (500, 20)
    with pytest.raises(ConfigError, match="samples_per_epoch"):
        make_loader(online, None, 0, 2, 16, 0)
    offline = SOURCES.build({"name": "sklearn", "dataset": "iris"}, seed=0)
    ld = make_loader(offline, {"name": "shuffle_split", "reshuffle": "shard"}, 0, 2, 10, 0)
    assert isinstance(ld, ShardLoader) and ld.steps_per_epoch == 6


def test_online_too_small_epoch():
    online = SOURCES.build({"name": "synthetic", "kind": "linear_regression", "mode": "online"}, seed=0)
    with pytest.raises(ConfigError, match="raise samples_per_epoch"):
        OnlineLoader(online, 0, 4, 64, 100)


@pytest.mark.parametrize("d,world", [(10, 3), (7, 7), (100, 1), (1000, 6)])
def test_feature_split_contiguous_balanced(d, world):
    fs = FeatureSplit(d, world)
    cols = [fs.columns(r) for r in range(world)]
    assert cols[0].start == 0 and cols[-1].stop == d
    assert all(a.stop == b.start for a, b in zip(cols, cols[1:]))
    sizes = [c.stop - c.start for c in cols]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1


def test_feature_split_errors():
    with pytest.raises(ConfigError, match="3 feature columns cannot be split over 4 workers"):
        FeatureSplit(3, 4)
    with pytest.raises(ConfigError, match="balance"):
        FeatureSplit(3, 1, balance="nnz")
