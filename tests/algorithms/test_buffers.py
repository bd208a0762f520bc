"""Every algorithm's buffer policy, end to end: the BatchNorm statistics in ``model.pt``.

Two real worker processes train the registered ``cnn`` with BatchNorm on digits (8×8
images) at a learning rate of 1e-30: the float32 update is below the weights' rounding
unit, so the parameters stay at the shared initial model and each rank's running
statistics depend only on its own batches. The reference replays each rank's batches
through the initial model in one process (no distml communication involved). A running
statistic's update ``r ← (1 − m) r + m s`` is affine, so averaging the ranks' statistics
at any sync point ends at the mean of the ranks' independent statistics:

* ``average``: ``model.pt`` holds the mean of the two ranks' statistics;
* ``rank0``: rank 0's own;
* ``members``: member k holds rank k's.

Each check also asserts the statistics left their initial values (the defect this
guards against: an evaluated copy that only ever receives parameters).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from procs import distml
from distml.config import load_config
from distml.partition.steps import batches
from distml.runtime.build import build_model_for, build_parts

WORKERS, STEPS = 2, 4

CONFIG = """
name = "buffers"
seed = 3
workers = {workers}
[data]
source = {{ name = "npz", path = "{npz}" }}
batch_size = 32
[model]
name = "cnn"
channels = [4]
hidden = 16
batchnorm = true
[optim]
name = "sgd"
lr = 1e-30
[algorithm]
{algorithm}
[train]
max_steps = {steps}
eval_every = 2
progress = false
"""

# (algorithm table, declared policy)
CASES = [
    ('name = "sync_sgd"', "rank0"),
    ('name = "local_sgd"\nperiod = 3', "average"),
    ('name = "gossip"', "average"),
    ('name = "admm"', "average"),
    ('name = "ensemble"', "members"),
    ('name = "ensemble_compression"', "rank0"),    # no round within 4 steps: rank 0's own model
    ('name = "ps"', "rank0"),
    ('name = "admm_async"', "average"),
]


@pytest.fixture(scope="module")
def digits_images(tmp_path_factory) -> str:
    from sklearn.datasets import load_digits
    d = load_digits()
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    x = (d.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    np.savez(path, x=x, y=d.target.astype(np.int64))
    return str(path)


def _rank_statistics(cfg) -> list[dict[str, torch.Tensor]]:
    """Each rank's buffers after its own STEPS batches through the initial model."""
    out = []
    for rank in range(WORKERS):
        parts = build_parts(cfg, rank, WORKERS)
        model = build_model_for(cfg, parts.source.info).train()
        with torch.no_grad():
            for _, x, _ in batches(parts.loader, parts.steps_per_epoch, STEPS):
                model(x)
        out.append({k: v.clone() for k, v in model.state_dict().items()
                    if k.endswith(("running_mean", "running_var"))})
    return out


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
@pytest.mark.parametrize("algorithm,policy", CASES, ids=[c[0].split('"')[1] for c in CASES])
def test_saved_buffers_follow_the_declared_policy(tmp_path, digits_images, algorithm, policy):
    from distml.algorithms import ALGORITHMS
    name = algorithm.split('"')[1]
    assert ALGORITHMS.get(name).buffers == policy

    path = tmp_path / "run.toml"
    path.write_text(CONFIG.format(workers=WORKERS, npz=digits_images, algorithm=algorithm,
                                  steps=STEPS))
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=110)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)

    ranks = _rank_statistics(load_config(path))
    assert set(ranks[0]) == {"features.1.running_mean", "features.1.running_var"}
    # the two ranks saw different batches: the policies are told apart
    assert not torch.allclose(ranks[0]["features.1.running_mean"], ranks[1]["features.1.running_mean"])
    for key in ranks[0]:
        initial = torch.zeros_like(ranks[0][key]) if key.endswith("mean") else torch.ones_like(ranks[0][key])
        if policy == "members":
            for k, mine in enumerate(ranks):
                got = saved[f"members.{k}.{key}"]
                torch.testing.assert_close(got, mine[key], rtol=1e-5, atol=1e-6)
            continue
        expected = (ranks[0][key] + ranks[1][key]) / 2 if policy == "average" else ranks[0][key]
        got = saved[key]
        assert not torch.allclose(got, initial), f"{key} stayed at its initial value"
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


# ---- pipeline: a BatchNorm on the second stage -------------------------------------------------
PIPELINE_SCRIPT = """
import sys
import torch
from torch import nn
import distml

if __name__ == "__main__":
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16), nn.BatchNorm1d(16),
                          nn.ReLU(), nn.Linear(16, 10))
    config = {"name": "pipe", "seed": 3, "workers": 2,
              "data": {"source": {"name": "sklearn", "dataset": "digits"}, "batch_size": 32},
              "optim": {"name": "sgd", "lr": 1e-30},
              "algorithm": {"name": "pipeline", "microbatches": 4},
              "train": {"max_steps": %d, "eval_every": 2, "progress": False}}
    distml.run(config, model=model, out=sys.argv[1])
"""


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_pipeline_saves_the_second_stages_batchnorm_statistics(tmp_path):
    """Balanced by parameters, the first Linear is stage 0 and the BatchNorm lives on rank 1;
    rank 0 saves the model, so the statistics must be gathered from rank 1."""
    import sys

    from procs import run
    from distml.config import parse_config
    from distml.partition import PARTITIONS, SOURCES, make_loader

    script = tmp_path / "pipe.py"
    script.write_text(PIPELINE_SCRIPT % STEPS)
    res = run([sys.executable, str(script), str(tmp_path / "run")], timeout=110)
    assert res.returncode == 0, res.stderr[-3000:]
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)

    # the reference: every rank walks the same batches (one worker's order), each split into
    # 4 micro-batches, through the initial model
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16),
                                torch.nn.BatchNorm1d(16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    cfg = parse_config({"seed": 3, "data": {"source": {"name": "sklearn", "dataset": "digits"},
                                            "batch_size": 32}})
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    order = make_loader(source, PARTITIONS.build(cfg.data.partition), 0, 1, 32, cfg.seed)
    with torch.no_grad():
        for _, x, _ in batches(order, order.steps_per_epoch, STEPS):
            for micro in x.chunk(4):
                model(micro)
    for key in ("3.running_mean", "3.running_var"):
        initial = torch.zeros(16) if key.endswith("mean") else torch.ones(16)
        assert not torch.allclose(saved[key], initial), f"{key} stayed at its initial value"
        torch.testing.assert_close(saved[key], model.state_dict()[key], rtol=1e-5, atol=1e-6)
