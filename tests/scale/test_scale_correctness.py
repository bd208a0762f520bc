"""Correctness at 8 ranks (issue 17, point 4), on loopback, against independent references.

- 8-worker sync SGD (ring all-reduce) equals one process stepping on the concatenated
  batch of the 8 ranks (float64, ≤ 1e-5 after 20 steps);
- 8-worker gossip on a 2 × 4 torus from 8 different initial models, learning rate 1e-12
  (mixing alone; the optimizer refuses 0):
  the replicas reach consensus, on the mean of the 8 initial models (mixing with a doubly
  stochastic W preserves the mean; Xiao & Boyd 2004), and contract at least as fast as
  the graph's second-largest eigenvalue modulus allows;
- a parameter server with 2 servers and 6 workers (BSP, SGD on the servers) applies every
  push exactly once on each shard, and so equals single-process SGD on the concatenated
  batch of the 6 workers.

The smallest set that exercises 8 processes: sklearn digits, an MLP with one hidden layer of
16, 8 samples per rank per step. More ranks than CPUs is expected here (the launcher says so).
"""

import json
import os
import math
from pathlib import Path

import pytest
import torch

from procs import distml
from references import concatenated_sgd, max_difference
from distml.comm.topology import build_graph
from distml.config import load_config
from distml.models.layers import reinitialize
from distml.partition import SOURCES
from distml.runtime.build import build_model_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]

STEPS = 20
GOSSIP_SEED = 100
MATRIX_WORLD = Path(__file__).parents[1] / "runtime" / "matrix_world.py"

CONFIG = """
name = "scale"
seed = 5
workers = {workers}
[data]
source = {{ name = "sklearn", dataset = "digits", test_fraction = 0.2, standardize = true }}
partition = {{ name = "shuffle_split", reshuffle = "global" }}
batch_size = 8
[model]
name = "mlp"
hidden = [16]
[optim]
name = "sgd"
lr = {lr}
momentum = {momentum}
[algorithm]
{algorithm}
[comm]
timeout_s = 60
[train]
dtype = "float64"
max_steps = {steps}
eval_every = {eval_every}
log_every = 100000
progress = false
"""


CELLS = {   # name: (algorithm table, workers, lr, momentum, eval_every)
    "sync": ('name = "sync_sgd"', 8, 0.1, 0.9, 100000),
    "gossip": (f'name = "gossip"\ngraph = "torus"\nlocal_init_seed = {GOSSIP_SEED}', 8, 1e-12, 0.0, 1),
    "ps": ('name = "ps"\nservers = 2', 6, 0.1, 0.9, 100000),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One 8-process world trains the three cells in turn with the worker's own code path
    (tests/runtime/matrix_world.py): one process start instead of three."""
    root = tmp_path_factory.mktemp("scale")
    cells, out = [], {}
    for name, (algorithm, workers, lr, momentum, eval_every) in CELLS.items():
        text = CONFIG.format(workers=workers, algorithm=algorithm, lr=lr, momentum=momentum,
                             steps=STEPS, eval_every=eval_every)
        (root / f"{name}.toml").write_text(text)
        out[name] = (load_config(root / f"{name}.toml"), root / name)
        cells.append({"config": out[name][0].to_dict(), "out": str(root / name)})
    (root / "cells.json").write_text(json.dumps(cells))
    res = distml("launch", "-n", "8", str(MATRIX_WORLD), str(root / "cells.json"), timeout=280)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def saved(folder):
    return torch.load(folder / "model.pt", weights_only=True)


def moved(cfg, got) -> float:
    torch.manual_seed(0)
    init = build_model_for(cfg, SOURCES.build(cfg.data.source).info).double().state_dict()
    return max((got[k] - init[k]).abs().max().item() for k in init)


def test_eight_worker_sync_sgd_equals_single_process_sgd(world):
    cfg, out = world["sync"]
    got = saved(out)
    reference = concatenated_sgd(cfg, STEPS, workers=8)[0].state_dict()
    assert max_difference(got, reference) <= 1e-5
    assert moved(cfg, got) > 1e-3          # the comparison is not trivially true


def test_eight_worker_gossip_on_a_torus_reaches_consensus_on_the_mean(world):
    cfg, out = world["gossip"]
    # the independent reference: the mean of the 8 initial replicas, built here
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    replicas = []
    for r in range(8):
        model = build_model_for(cfg, source.info).double()
        reinitialize(model, GOSSIP_SEED + r)
        replicas.append(model.state_dict())
    mean = {k: torch.stack([m[k] for m in replicas]).mean(0) for k in replicas[0]}
    assert max_difference(saved(out), mean) <= 1e-9
    events = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    dist = {e["step"]: e["consensus_distance"] for e in events if e.get("consensus_distance") is not None}
    first, last = min(dist), max(dist)
    assert last == STEPS
    rate = build_graph("torus", 8).rate()           # ‖W − 11ᵀ/n‖₂ of the 2 × 4 torus
    assert 0 < rate < 1
    # ‖X_k − X̄‖ ≤ λ^k ‖X_0 − X̄‖ for every start (the bound is tight only for the slowest mode)
    assert dist[last] <= dist[first] * rate ** (last - first) * (1 + 1e-6) + 1e-9
    assert dist[last] <= 1e-4 * dist[first]
    assert math.isfinite(dist[first]) and dist[first] > 1e-2     # the replicas did start apart


def test_two_servers_six_workers_apply_every_push_exactly_once(world):
    cfg, out = world["ps"]
    summary = json.loads((out / "summary.json").read_text())
    pushes = sum(r["pushes"] for r in summary["per_rank"])
    reports = summary["ps"]["server_reports"]
    assert len(reports) == 2 and pushes == 6 * STEPS
    for server in reports:        # each shard saw every push once: applied, none dropped
        assert server["pushes_applied"] == pushes and server["pushes_dropped"] == 0
    # applied once each, with BSP and SGD on the servers, the model is 6-worker sync SGD's
    got = saved(out)
    reference = concatenated_sgd(cfg, STEPS, workers=6)[0].state_dict()
    assert max_difference(got, reference) <= 1e-5
    assert moved(cfg, got) > 1e-3


def test_more_ranks_than_cpus_warns_once_and_sets_one_thread_per_rank():
    from distml.runtime.launcher import oversubscribed
    cpus = len(os.sched_getaffinity(0))
    said = []
    config = {"train": {"threads_per_worker": 4, "max_steps": 3}}
    assert oversubscribed(config, cpus, say=said.append) is config and said == []
    changed = oversubscribed(config, cpus + 1, say=said.append)
    assert changed["train"] == {"threads_per_worker": 1, "max_steps": 3}
    assert len(said) == 1 and f"{cpus + 1} ranks on {cpus} CPUs" in said[0]
