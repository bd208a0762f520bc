"""A synchronous run is deterministic for its seed: two runs save bit-identical models.

Benchmarks compare methods across seeds, so run-to-run noise within a seed would be
counted as a difference between methods. One world trains every cell twice, each time
from scratch (model, optimizer, data, algorithm state and its collectives built anew, as
``distml run`` does after joining: one process start instead of two, to stay cheap); the
two saved ``model.pt`` must match to the bit. (Runs in fresh processes agree as well:
two invocations of ``bench/aggregation.py`` give the same accuracies to every digit.) What could break it and does not here: gloo's reduction order (fixed by rank
for a given world and tensor size), intra-op threads (``threads_per_worker = 1`` by
default), the data order (seeded samplers, no loader workers), codecs' randomness
(seeded per step). Asynchronous paces (ASP, SSP, quorum, Hogwild) depend on timing and
are not deterministic by design.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))      # tests/procs.py
from procs import distml as distml_cli  # noqa: E402

ALGORITHMS = {
    "sync_sgd": {"name": "sync_sgd"},
    "local_sgd": {"name": "local_sgd", "period": 4},
    "ensemble_compression": {"name": "ensemble_compression", "every": 1},
}


def cell(name: str, algorithm: dict, out: Path) -> dict:
    return {"out": str(out), "config": {
        "name": name, "seed": 3, "workers": 2,
        "data": {"source": {"name": "sklearn", "dataset": "digits"}, "batch_size": 32,
                 "partition": {"name": "shuffle_split", "reshuffle": "none"}},
        "model": {"name": "mlp", "hidden": [16]},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
        "algorithm": algorithm, "comm": {"timeout_s": 60},
        "train": {"epochs": 1, "eval_every": 0, "progress": False}}}


@pytest.mark.timeout(300)
def test_two_runs_of_the_same_seed_save_identical_models(tmp_path: Path) -> None:
    listing = tmp_path / "cells.json"
    listing.write_text(json.dumps([cell(n, a, tmp_path / attempt / n)
                                   for n, a in ALGORITHMS.items() for attempt in ("a", "b")]))
    res = distml_cli("launch", "-n", "2", str(HERE / "matrix_world.py"), str(listing),
                     timeout=280)
    assert res.returncode == 0, res.stderr[-2000:]
    for name in ALGORITHMS:
        a = torch.load(tmp_path / "a" / name / "model.pt", weights_only=True)
        b = torch.load(tmp_path / "b" / name / "model.pt", weights_only=True)
        assert a.keys() == b.keys()
        differ = [k for k in a if not torch.equal(a[k], b[k])]
        assert not differ, f"{name}: two runs of seed 3 differ in {differ}"
        # the run trained: the model moved away from its initialization
        assert json.loads((tmp_path / "a" / name / "summary.json").read_text())["steps"] > 0
