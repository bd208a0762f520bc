"""transformer_lm under tensor_parallel (heads and MLP split) and pipeline (blocks split, the tied
embedding's two copies summed), and a BatchNorm resnet under pipeline (its statistics gathered),
equal the single-process model step for step (2 ranks, float64)."""

import json

import pytest
import torch

from procs import distml
from distml.config import load_config
from distml.models import build_loss
from distml.optim import build_optimizer
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.runtime.build import build_model_for

STEPS = 3
CONFIG = """
name = "mp-lm"
seed = 3
workers = 2
[data]
source = {{ name = "text", context = 16, max_bytes = 40000 }}
partition = {{ name = "contiguous" }}
batch_size = 8
test_batch_size = 64
[model]
name = "transformer_lm"
d_model = 16
n_layers = 2
n_heads = 2
d_ff = 32
[optim]
name = "adam"
lr = 0.01
[algorithm]
{algorithm}
[train]
dtype = "float64"
max_steps = {steps}
log_every = 1
progress = false
"""
RESNET = """
name = "mp-resnet"
seed = 3
workers = 2
[data]
source = {{ name = "fashion_mnist" }}
batch_size = 8
test_batch_size = 1000
[model]
name = "resnet"
depth = 8
width = 4
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
[algorithm]
{algorithm}
[train]
dtype = "float64"
max_steps = {steps}
log_every = 1
progress = false
"""


def reference(cfg, steps):
    """One process, the whole (tied) model, the same batches: per-step losses and final weights."""
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    loader = make_loader(source, PARTITIONS.build(cfg.data.partition), 0, 1, cfg.data.batch_size,
                         cfg.seed)
    model = build_model_for(cfg, source.info).double()
    loss_fn = build_loss(cfg.model.loss, cfg.model.name, source.info)
    opt = build_optimizer(cfg.optim.spec(), model.parameters())
    losses = []
    for _, (x, y) in zip(range(steps), loader.batches(0)):
        opt.zero_grad()
        loss = loss_fn(model(x.double() if x.is_floating_point() else x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.state_dict()


def run_and_compare(tmp_path, algorithm, config=CONFIG):
    path = tmp_path / "c.toml"
    path.write_text(config.format(algorithm=algorithm, steps=STEPS))
    out = tmp_path / "run"
    res = distml("run", str(path), "--out", str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = load_config(path)
    ref_losses, ref_state = reference(cfg, STEPS)
    events = [json.loads(ln) for ln in (out / "events-rank0.jsonl").read_text().splitlines()]
    assert len(events) == STEPS
    assert max(abs(e["loss"] - r) for e, r in zip(events, ref_losses)) <= 1e-6
    got = torch.load(out / "model.pt", weights_only=True)
    assert got.keys() == ref_state.keys()
    worst = max((got[k] - ref_state[k]).abs().max().item() for k in got)   # buffers included
    assert worst <= 1e-6, worst
    if config is not CONFIG:
        return events, None
    # the tied embedding is still one weight: both of its names hold the same values
    assert torch.equal(got["layers.0.tokens.weight"], got["layers.3.weight"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["bits_per_token"] == pytest.approx(summary["test_loss"] / torch.log(
        torch.tensor(2.0)).item())
    return events, summary


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_tensor_parallel_splits_heads_and_mlp_exactly(tmp_path):
    events, _ = run_and_compare(tmp_path, 'name = "tensor_parallel"')
    # per step: 2 blocks x 2 row-parallel outputs (8 x 16 x 16 float64) all-reduced forward
    assert events[-1]["bytes_sent"] >= STEPS * 4 * 8 * 16 * 16 * 8


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_pipeline_splits_blocks_and_keeps_the_embedding_tied(tmp_path):
    run_and_compare(tmp_path, 'name = "pipeline"\nschedule = "gpipe"\nmicrobatches = 2')


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_pipeline_gathers_batchnorm_statistics_of_every_stage(tmp_path):
    """One micro-batch per step: BatchNorm sees the whole batch, as in the single process."""
    run_and_compare(tmp_path, 'name = "pipeline"\nmicrobatches = 1', RESNET)
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    last_bn = [k for k in got if k.endswith("running_mean")][-1]
    assert got[last_bn].abs().sum() > 0          # the last stage's statistics moved and arrived
    assert int(got[last_bn.replace("running_mean", "num_batches_tracked")]) == STEPS


def test_tensor_parallel_refuses_heads_not_divisible_by_workers(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(algorithm='name = "tensor_parallel"', steps=1)
                    .replace("n_heads = 2", "n_heads = 1"))
    res = distml("run", str(path), "--dry-run", timeout=60)
    assert res.returncode == 2
    assert "n_heads (1) must be divisible by the 2 workers" in res.stderr
