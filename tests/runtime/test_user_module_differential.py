"""A user's own ``nn.Module`` with BatchNorm through ``distml.run`` equals single-process training.

Each rank runs its forward on its own batch (BatchNorm normalizes with that batch's
statistics), so the reference does the same: one forward per rank batch, then the
algorithm's combination (averaged gradients for sync_sgd; H independent steps then
averaged parameters for local_sgd). float64, so only the algorithm is measured. This
caught user modules being shared across worker processes (W optimizer steps per step).
"""

import itertools
import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from procs import run
import user_script_bn as script
from references import rank_streams
from distml.config import load_config
from distml.partition.user_data import DatasetSource

HERE = Path(__file__).parent

pytestmark = [pytest.mark.multiprocess]
WORKERS = (1, 2, 3)


def rank_batches(workers: int):
    """Per step, every rank's (x, y) exactly as its loader yields them."""
    cfg = load_config(base=script.config({"name": "sync_sgd"}, workers))
    streams = rank_streams(cfg, DatasetSource(*script.datasets()), workers)
    return [[(x.double(), y) for x, y in step] for step in itertools.islice(zip(*streams), script.STEPS)]


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def reference_sync_sgd(workers: int) -> nn.Module:
    """One model; per step the mean over ranks of each rank-batch's gradient."""
    model = script.make_model().double()
    opt = sgd(model)
    for per_rank in rank_batches(workers):
        opt.zero_grad()
        for x, y in per_rank:
            (nn.functional.cross_entropy(model(x), y) / workers).backward()
        opt.step()
    return model


def reference_local_sgd(workers: int, period: int) -> nn.Module:
    """One model per rank, each with its own optimizer; parameters averaged every H steps."""
    models = [script.make_model().double() for _ in range(workers)]
    opts = [sgd(m) for m in models]
    for step, per_rank in enumerate(rank_batches(workers)):
        for model, opt, (x, y) in zip(models, opts, per_rank):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        if (step + 1) % period == 0:
            with torch.no_grad():
                for ps in zip(*(m.parameters() for m in models)):
                    mean = torch.stack(ps).mean(0)
                    for p in ps:
                        p.copy_(mean)
    return models[0]


CASES = {
    "sync_sgd": ({"name": "sync_sgd", "bucket_mb": 0.0001}, reference_sync_sgd),
    "local_sgd": ({"name": "local_sgd", "period": 3},
                  lambda w: reference_local_sgd(w, period=3)),
}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", list(CASES))
def test_user_bn_module_equals_single_process(tmp_path, name):
    algorithm, reference = CASES[name]
    res = run([sys.executable, str(HERE / "user_script_bn.py"), str(tmp_path), json.dumps(algorithm),
               ",".join(map(str, WORKERS))], timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    init = dict(script.make_model().double().named_parameters())
    for w in WORKERS:
        got = torch.load(tmp_path / f"w{w}" / "model.pt", weights_only=True)
        ref = dict(reference(w).named_parameters())
        worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
        assert worst <= 1e-5, f"{name}, {w} workers: max abs parameter difference {worst}"
        moved = max((got[k] - init[k]).abs().max().item() for k in ref)
        assert moved > 1e-2, f"{name}, {w} workers: the weights did not move ({moved})"
