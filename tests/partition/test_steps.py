"""The one total-steps formula and the one batch iterator (partition/steps.py)."""

import numpy as np
import pytest
import torch

from distml.partition import PARTITIONS, ArrayData, DataInfo, ShardLoader
from distml.partition.steps import batches, total_steps


@pytest.mark.parametrize("epochs,spe,max_steps,want", [
    (1, 10, None, 10), (2.5, 4, None, 10), (0.01, 10, None, 1), (3, 10, 7, 7), (1, 2.5, None, 3),
])
def test_total_steps(epochs, spe, max_steps, want):
    assert total_steps(epochs, spe, max_steps) == want


def _loader():
    x = np.arange(2 * 50, dtype=np.float32).reshape(50, 2)
    data = ArrayData(x, np.arange(50) % 3, DataInfo("classification", 3, (2,)))
    return ShardLoader(data, PARTITIONS.build("shuffle_split"), 0, 2, 4, 5)


def test_batches_walk_the_epochs_in_order_and_resume_mid_epoch():
    ld = _loader()
    spe = ld.steps_per_epoch            # 25 samples / 4 = 6 steps per epoch
    expected = [b for e in range(3) for b in ld.batches(e)][:15]
    got = list(batches(ld, spe, 15))
    assert [s for s, _, _ in got] == list(range(15))
    for (_, x, y), (ex, ey) in zip(got, expected):
        assert torch.equal(x, ex) and torch.equal(y, ey)
    resumed = list(batches(ld, spe, 15, start=8))     # mid-epoch 1
    assert [s for s, _, _ in resumed] == list(range(8, 15))
    for (_, x, _), (_, gx, _) in zip(resumed, got[8:]):
        assert torch.equal(x, gx)


def test_full_batch_every_step():
    ld = _loader()
    got = list(batches(ld, 1, 3, full_batch=True))
    assert [s for s, _, _ in got] == [0, 1, 2]
    assert all(torch.equal(x, ld.full_batch()[0]) for _, x, _ in got)
