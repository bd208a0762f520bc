"""``[train] precision / accumulate_steps / clip_grad_norm``: what is refused before any
process starts (exit code 2, one line), and bf16 autocast training for real."""

import json

import pytest
import torch

from procs import distml
from distml.config import load_config
from distml.errors import ConfigError
from distml.runtime.build import make_plan

BASE = {"workers": 2, "data": {"source": {"name": "sklearn", "dataset": "digits"}, "batch_size": 16},
        "model": {"name": "mlp"}, "optim": {"name": "sgd", "lr": 0.05}}


def plan(*overrides):
    return make_plan(load_config(base=BASE, overrides=list(overrides)))


def test_accumulation_counts_optimizer_steps():
    one = plan("train.epochs=2")
    four = plan("train.epochs=2", "train.accumulate_steps=4")
    assert four["total_steps"] == -(-2 * one["steps_per_epoch"] // 4)
    assert four["steps_per_epoch"] == one["steps_per_epoch"] // 4


@pytest.mark.parametrize("overrides,match", [
    (["train.precision=bf16", "train.dtype=float64"], "with dtype = 'float64' leave precision"),
    (["algorithm.name=hogwild", "train.clip_grad_norm=1.0"], "'hogwild' runs its own step"),
    (["algorithm.name=pipeline", "train.accumulate_steps=2"], "'pipeline' runs its own step"),
    (["optim.name=lbfgs", "train.precision=bf16"], "'lbfgs' evaluates the loss itself"),
])
def test_refused_with_a_reason(overrides, match):
    with pytest.raises(ConfigError, match=match):
        plan(*overrides)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed where CUDA is")
def test_fp16_needs_cuda():
    with pytest.raises(ConfigError, match="fp16' needs CUDA"):
        plan("train.precision=fp16")


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_refusal_is_exit_code_2(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[algorithm]\nname = "hogwild"\n[train]\nprecision = "bf16"\n')
    res = distml("run", str(cfg), "--dry-run", timeout=100)
    assert res.returncode == 2 and "runs its own step" in res.stderr, res.stderr[-2000:]


@pytest.mark.multiprocess
@pytest.mark.timeout(150)
def test_bf16_sync_sgd_trains(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "bf16"\n[data]\nsource = { name = "sklearn", dataset = "digits" }\n'
                   'batch_size = 16\n[model]\nname = "mlp"\n[optim]\nname = "sgd"\nlr = 0.1\n'
                   'momentum = 0.9\n[train]\nepochs = 2\nprecision = "bf16"\nlog_every = 5\n'
                   'progress = false\n')
    res = distml("run", str(cfg), "--out", str(tmp_path / "run"), timeout=140)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = [json.loads(line)["loss"] for line in
              (tmp_path / "run" / "events-rank0.jsonl").read_text().splitlines()]
    assert losses[-1] < 0.5 * losses[0], losses
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["test_accuracy"] > 0.85
    # the master weights stay float32
    assert all(t.dtype == torch.float32 for t in
               torch.load(tmp_path / "run" / "model.pt", weights_only=True).values()
               if t.is_floating_point())


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16)])
def test_loop_autocast_runs_forward_in_the_precision(precision, dtype):
    from types import SimpleNamespace
    from distml.runtime.loop import TrainLoop
    loop = SimpleNamespace(config=load_config(base={"train": {"precision": precision}}), device="cpu")
    layer = torch.nn.Linear(4, 3)
    with TrainLoop._autocast(loop):
        out = layer(torch.randn(2, 4))
    assert out.dtype == dtype and layer.weight.dtype == torch.float32


@pytest.mark.multiprocess
@pytest.mark.timeout(200)
def test_resume_with_accumulation_equals_uninterrupted(tmp_path):
    """A checkpoint after step s resumes at batch k·s of the epoch (here across an epoch end)."""
    cfg = tmp_path / "c.toml"
    cfg.write_text('name = "acc"\nseed = 2\n[data]\nsource = { name = "sklearn", dataset = "digits" }\n'
                   'batch_size = 64\n[model]\nname = "mlp"\nhidden = [16]\n[optim]\nname = "sgd"\n'
                   'lr = 0.05\nmomentum = 0.9\n[train]\nepochs = 3\nmax_steps = 8\naccumulate_steps = 3\n'
                   'clip_grad_norm = 0.5\ncheckpoint_every = 4\nlog_every = 1\nprogress = false\n')
    full, part = tmp_path / "full", tmp_path / "part"
    assert distml("run", str(cfg), "--out", str(full), timeout=90).returncode == 0
    res = distml("run", str(cfg), "--out", str(part), "--stop-after", "5", timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    res = distml("run", str(cfg), "--out", str(part), "--resume", timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(part / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed model differs from the uninterrupted one"
    sa = json.loads((full / "summary.json").read_text())
    assert sa["steps"] == 8
    # one all-reduce per optimizer step, not per batch
    assert sa["per_rank"][0]["ops"]["all_reduce"]["calls"] <= 8 + 4
