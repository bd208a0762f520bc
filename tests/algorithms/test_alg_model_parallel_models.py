"""transformer_lm under tensor_parallel (heads and MLP split) and pipeline (blocks split, the tied
embedding's two copies summed), and a BatchNorm resnet under pipeline (its statistics gathered),
equal the single-process model step for step (2 ranks, float64)."""

import json
import math

import pytest
import torch

from procs import distml
from test_alg_pipeline import STEPS, check_equal
from test_alg_tensor_parallel import check_tensor_parallel_traffic

TEMPLATE = """
name = "mp"
seed = 3
workers = 2
[data]
{data}
[model]
{model}
[optim]
{optim}
[algorithm]
{{algorithm}}
[train]
dtype = "float64"
max_steps = {{steps}}
log_every = 1
progress = false
"""
LM = TEMPLATE.format(
    data='partition = "contiguous"\nbatch_size = 8\n'
         '[data.source]\nname = "text"\ncontext = 16\nmax_bytes = 40000',
    model='name = "transformer_lm"\nd_model = 16\nn_layers = 2\nn_heads = 2\nd_ff = 32',
    optim='name = "adam"\nlr = 0.01')
RESNET = TEMPLATE.format(data='source = "fashion_mnist"\nbatch_size = 8',
                         model='name = "resnet"\ndepth = 8\nwidth = 4',
                         optim='name = "sgd"\nlr = 0.1\nmomentum = 0.9')


def run_lm(tmp_path, algorithm):
    """The tiny transformer_lm run equals the single process; its embedding stays tied and the
    summary reports bits per token."""
    check_equal(tmp_path, algorithm, LM)
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    assert torch.equal(got["layers.0.tokens.weight"], got["layers.3.weight"])
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["bits_per_token"] == pytest.approx(summary["test_loss"] / math.log(2))
    res = distml("evaluate", str(tmp_path / "run"), timeout=90)   # model.pt reproduces the summary
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)
    for key in ("test_loss", "bits_per_token", "perplexity", "test_accuracy"):
        assert again[key] == pytest.approx(summary[key], rel=1e-9), key
    events = [json.loads(ln) for ln in (tmp_path / "run" / "events-rank0.jsonl").read_text().splitlines()]
    return events


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_tensor_parallel_splits_heads_and_mlp_exactly(tmp_path):
    run_lm(tmp_path, 'name = "tensor_parallel"')
    # per block and step, all-reduces of (batch 8 × context 16 × d_model 16) float64:
    # forward, the attention output's and fc2's partial sums (row-parallel); backward,
    # the input gradients of q, k, v and fc1 (column-parallel, inputs that need one)
    check_tensor_parallel_traffic(tmp_path, per_step=[8 * 16 * 16 * 8] * 6 * 2)


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_pipeline_splits_blocks_and_keeps_the_embedding_tied(tmp_path):
    run_lm(tmp_path, 'name = "pipeline"\nschedule = "gpipe"\nmicrobatches = 2')


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_pipeline_gathers_batchnorm_statistics_of_every_stage(tmp_path):
    """One micro-batch per step: BatchNorm sees the whole batch, as in the single process."""
    check_equal(tmp_path, 'name = "pipeline"\nmicrobatches = 1', RESNET)
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    last_bn = [k for k in got if k.endswith("running_mean")][-1]
    assert got[last_bn].abs().sum() > 0          # the last stage's statistics moved and arrived
    assert int(got[last_bn.replace("running_mean", "num_batches_tracked")]) == STEPS


def test_tensor_parallel_refuses_heads_not_divisible_by_workers(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(LM.format(algorithm='name = "tensor_parallel"', steps=1)
                    .replace("n_heads = 2", "n_heads = 1"))
    res = distml("run", str(path), "--dry-run", timeout=60)
    assert res.returncode == 2
    assert "n_heads (1) must be divisible by the 2 workers" in res.stderr
