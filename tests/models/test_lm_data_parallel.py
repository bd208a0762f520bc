"""2-worker sync SGD on a tiny transformer_lm (tied embedding, contiguous text shards) equals one
process on the concatenated batches (float64), and the run reports language-model metrics."""

import json
import math

import pytest
import torch

from procs import distml
from distml.config import load_config
from distml.models import build_loss
from distml.optim import build_optimizer
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.runtime.build import build_model_for

STEPS = 5
CONFIG = """
name = "lm-sync"
seed = 5
workers = 2
[data]
partition = "contiguous"
batch_size = 4
[data.source]
name = "text"
context = 16
max_bytes = 40000
[model]
name = "transformer_lm"
d_model = 16
n_layers = 2
n_heads = 2
[optim]
name = "sgd"          # not Adam: its update barely depends on the gradient's scale
lr = 0.5
momentum = 0.9
[algorithm]
name = "sync_sgd"
[train]
dtype = "float64"
max_steps = {steps}
log_every = 1
progress = false
"""


def reference(cfg):
    """One process; each step's batch is rank 0's windows followed by rank 1's."""
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    loaders = [make_loader(source, PARTITIONS.build(cfg.data.partition), r, 2, cfg.data.batch_size,
                           cfg.seed) for r in range(2)]
    model = build_model_for(cfg, source.info).double()
    loss_fn = build_loss(cfg.model.loss, cfg.model.name, source.info)
    opt = build_optimizer(cfg.optim.spec(), model.parameters())
    for _, (x0, y0), (x1, y1) in zip(range(STEPS), loaders[0].batches(0), loaders[1].batches(0)):
        opt.zero_grad()
        loss_fn(model(torch.cat([x0, x1])), torch.cat([y0, y1])).backward()
        opt.step()
    return model.state_dict()


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_sync_sgd_on_transformer_lm_equals_one_process(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(steps=STEPS))
    out = tmp_path / "run"
    res = distml("run", str(path), "--out", str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    ref = reference(load_config(path))
    got = torch.load(out / "model.pt", weights_only=True)
    assert got.keys() == ref.keys()
    worst = max((got[k] - ref[k]).abs().max().item() for k in got)
    assert worst <= 1e-6, worst
    assert torch.equal(got["layers.0.tokens.weight"], got["layers.3.weight"])   # still tied
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bits_per_token"] == pytest.approx(summary["test_loss"] / math.log(2))
    assert summary["perplexity"] == pytest.approx(math.exp(summary["test_loss"]))
    assert 0 <= summary["test_accuracy"] <= 1 and summary["test_tokens"] > 0
    evals = [json.loads(ln) for ln in (out / "eval.jsonl").read_text().splitlines()]
    assert evals and all("bits_per_token" in e for e in evals)
