"""Gossip (D-PSGD) in real processes: 4 workers on a ring, 3 on the one-peer exponential graph,
no gradient steps.

With a learning rate of 1e-30 the float32 SGD update is below the weights' rounding
unit, so only mixing moves the replicas: they must reach the mean of their (distinct)
initial models, and the consensus distance must follow the mixing matrices exactly — so
it shrinks at least as fast as their second eigenvalue predicts (1/3 per round for a
4-node ring with Metropolis–Hastings weights).
"""

import json

import pytest
import torch

from procs import distml
from distml.models.layers import reinitialize
from distml.comm.buckets import flatten
from distml.aggregate.mixing import choco_step, consensus_distance, mix_all
from distml.comm.topology import build_graph, second_eigenvalue
from distml.config import load_config
from distml.partition import SOURCES
from distml.runtime.build import build_model_for

CONFIG = """
name = "gossip"
seed = 1
workers = {workers}
[data]
source = {{ name = "sklearn", dataset = "digits" }}
batch_size = 16
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 1e-30
[algorithm]
name = "gossip"
graph = "{graph}"
local_init_seed = 100
[train]
max_steps = 8
eval_every = 1
progress = false
"""


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
# the ring with 4 (with 2, every graph is exact averaging); the exponential graph with 3, where
# whom a worker sends to and whom it receives from differ (directed, time-varying)
@pytest.mark.parametrize("graph,workers", [("ring", 4), ("exponential", 3)])
def test_gossip_processes_reach_the_initial_mean(tmp_path, graph, workers):
    path = tmp_path / "g.toml"
    path.write_text(CONFIG.format(graph=graph, workers=workers))
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=140)
    assert res.returncode == 0, res.stderr[-3000:]

    cfg = load_config(path)
    info = SOURCES.build(cfg.data.source, seed=cfg.seed).info
    initial = []
    for r in range(workers):
        m = build_model_for(cfg, info)
        reinitialize(m, 100 + r)
        initial.append(flatten(list(m.parameters())))
    x0 = torch.stack(initial)
    d0 = consensus_distance(x0)
    assert d0 > 0.1          # the replicas really start apart

    g = build_graph(graph, workers)
    if graph == "ring":
        assert abs(g.rate() - 1 / 3) < 1e-12
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    if evals[0]["step"] == 0:    # the loop's evaluation of the starting point: the initial spread
        assert evals[0]["consensus_distance"] == pytest.approx(d0, rel=1e-5)
        evals = evals[1:]
    assert [e["gossip_round"] for e in evals] == list(range(1, 9))
    x, bound = x0.double(), d0
    for k, e in enumerate(evals):
        # the processes did exactly what the mixing matrix says, and no worse than λ₂ predicts
        w = g.matrix(k)
        x = mix_all(x, torch.from_numpy(w))
        bound *= second_eigenvalue(w)
        assert e["consensus_distance"] == pytest.approx(consensus_distance(x), rel=1e-4, abs=1e-6)
        assert e["consensus_distance"] <= bound * (1 + 1e-4) + 1e-6, e
    assert evals[-1]["consensus_distance"] < 0.01 * d0

    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    got = torch.cat([saved[k].reshape(-1) for k in saved])
    assert torch.allclose(got, x0.mean(0), atol=1e-6), (got - x0.mean(0)).abs().max()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # 8 rounds × 2 neighbours × one 650-float model per worker, plus the at-eval all-reduces
    assert summary["per_rank"][0]["bytes_sent"] >= 8 * 2 * 650 * 4


def test_gossip_config_errors_fail_before_any_process_starts():
    from distml.errors import ConfigError
    from distml.runtime.build import make_plan
    base = {"workers": 4, "data": {"source": {"name": "sklearn", "dataset": "digits"}},
            "model": {"name": "softmax"}, "algorithm": {"name": "gossip"}}
    for algo, extra, match in [
            ({"graph": {"name": "torus", "rows": 3}}, {}, "rows must divide the 4 workers"),
            ({"graph": "star"}, {}, "registered: complete, exponential, random, ring, torus"),
            ({"every": 0}, {}, "every must be an integer >= 1"),
            ({"graph": "exponential"}, {"comm": {"codec": "topk"}}, "needs a static graph"),
            ({}, {"comm": {"codec": "topk", "error_feedback": True}}, "own error memory"),
            ({}, {"comm": {"codec": "threshold"}}, "fixed-size payloads"),
            ({}, {"comm": {"codec": "powersgd"}}, "takes a Compressor"),
            ({"gamma": 0}, {"comm": {"codec": "topk"}}, "gamma must be in"),
    ]:
        cfg = load_config(base={**base, **extra, "algorithm": {"name": "gossip", **algo}})
        with pytest.raises(ConfigError, match=match):
            make_plan(cfg)


CHOCO = CONFIG.replace("[train]", """gamma = 0.5
[comm]
codec = {{ name = "topk", ratio = 0.25 }}
[train]""").replace("max_steps = 8", "max_steps = 20").replace("eval_every = 1", "eval_every = 5")


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_choco_gossip_three_processes_match_the_one_process_simulation(tmp_path):
    """CHOCO-SGD with top-k 25 %: the processes' consensus distances equal the one-process
    simulation, the replicas' mean stays the initial mean, and each message carries
    exactly k int32 indices + k float32 values."""
    from distml.comm.compress.topk import TopK
    workers = 3
    path = tmp_path / "c.toml"
    path.write_text(CHOCO.format(graph="ring", workers=workers))
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=140)
    assert res.returncode == 0, res.stderr[-3000:]

    cfg = load_config(path)
    info = SOURCES.build(cfg.data.source, seed=cfg.seed).info
    initial = []
    for r in range(workers):
        m = build_model_for(cfg, info)
        reinitialize(m, 100 + r)
        initial.append(flatten(list(m.parameters())))
    x = torch.stack(initial)                 # float32, as in the workers
    g, codec = build_graph("ring", workers), TopK(0.25)
    hat = torch.zeros_like(x)
    expected = {}
    for k in range(20):
        for i in range(workers):
            hat[i] += codec.decompress(codec.compress(x[i] - hat[i], None)[0], x[i])
        x = torch.stack([choco_step(x[i], hat[i], {j: hat[j] for j in g.receives_from(i)},
                                    g.receives_from(i), 0.5) for i in range(workers)])
        expected[k + 1] = consensus_distance(x)
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    evals = [e for e in evals if e["step"] > 0]
    assert [e["gossip_round"] for e in evals] == [5, 10, 15, 20]
    for e in evals:
        assert e["consensus_distance"] == pytest.approx(expected[e["gossip_round"]], rel=1e-3, abs=1e-6)
    d0 = consensus_distance(torch.stack(initial))
    assert evals[-1]["consensus_distance"] < 0.1 * d0
    saved = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    got = torch.cat([saved[k].reshape(-1) for k in saved])
    assert torch.allclose(got, torch.stack(initial).mean(0), atol=1e-5)
    k = codec.k(650)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for r in summary["per_rank"]:
        assert r["ops"]["send"]["bytes_sent"] == 20 * 2 * k * (4 + 4)
