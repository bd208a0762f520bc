"""Pipeline parallelism (GPipe, 1F1B; 2 stages) equals the single-process model step for step."""

import json

import pytest
import torch

from procs import distml
from distml.algorithms.pipeline import Pipeline, balance, layer_times
from distml.algorithms._sequential import sequential_of
from distml.algorithms.pipeline import balance as balance_of   # "balance" is a parameter below
from distml.config import load_config
from distml.errors import ConfigError
from distml.models import build_loss
from distml.optim import build_optimizer
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.runtime.build import build_model_for

STEPS = 3
CONFIG = """
name = "mp"
seed = 2
workers = 2
[data]
source = {{ name = "sklearn", dataset = "digits" }}
batch_size = 32
[model]
name = "mlp"
hidden = [64, 32]
[optim]
name = "sgd"
lr = 0.5
[algorithm]
{algorithm}
[train]
dtype = "float64"
max_steps = {steps}
log_every = 1
progress = false
"""


def reference(cfg, steps):
    """One process, the whole model, the same batches: per-step losses and final weights."""
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    loader = make_loader(source, PARTITIONS.build(cfg.data.partition), 0, 1, cfg.data.batch_size,
                         cfg.seed)
    model = build_model_for(cfg, source.info).double()
    loss_fn = build_loss(cfg.model.loss, cfg.model.name, source.info)
    opt = build_optimizer(cfg.optim.spec(), model.parameters())
    losses = []
    for _, (x, y) in zip(range(steps), loader.batches(0)):
        opt.zero_grad()
        loss = loss_fn(model(x.double() if x.is_floating_point() else x), y)   # token ids stay ints
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.state_dict()


def check_equal(tmp_path, algorithm, config=CONFIG):
    """Run ``config`` with ``algorithm``; its losses and model.pt (buffers included) must equal
    the single-process run's. Returns rank 0's step events."""
    path = tmp_path / "c.toml"
    path.write_text(config.format(algorithm=algorithm, steps=STEPS))
    out = tmp_path / "run"
    res = distml("run", str(path), "--out", str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = load_config(path)
    ref_losses, ref_state = reference(cfg, STEPS)
    events = [json.loads(ln) for ln in (out / "events-rank0.jsonl").read_text().splitlines()]
    assert len(events) == STEPS
    assert max(abs(e["loss"] - r) for e, r in zip(events, ref_losses)) <= 1e-5
    got = torch.load(out / "model.pt", weights_only=True)
    assert got.keys() == ref_state.keys()
    # after the first step, weights differ by lr × (gradient difference)
    worst = max((got[k] - ref_state[k]).abs().max().item() for k in got)
    assert worst <= 1e-5 * 0.5, worst
    return events


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
@pytest.mark.parametrize("schedule,balance", [("gpipe", "params"), ("1f1b", "params"),
                                              ("gpipe", "time")])
def test_pipeline_equals_single_process(tmp_path, schedule, balance):
    events = check_equal(tmp_path, f'name = "pipeline"\nschedule = "{schedule}"\nmicrobatches = 4\n'
                                   f'balance = "{balance}"')
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    p2p = [r["ops"]["pipeline_p2p"] for r in summary["per_rank"]]
    if balance == "params":
        # exact, from the model's shapes: stage 0 sends each micro-batch's activations at
        # the cut (the whole batch of 32 per step, float64) and receives their gradients;
        # stage 1 the other way round; 4 micro-batches × (1 send + 1 receive) per step
        cfg = load_config(tmp_path / "c.toml")
        model = build_model_for(cfg, SOURCES.build(cfg.data.source, seed=cfg.seed).info)
        layers = list(sequential_of("pipeline", model))
        cut = balance_of([sum(q.numel() for q in m.parameters()) for m in layers], 2)[1]
        width = torch.nn.Sequential(*layers[:cut])(torch.zeros(1, 64)).numel()
        act = STEPS * 32 * width * 8
        for r in p2p:
            assert (r["bytes_sent"], r["bytes_received"], r["calls"]) == (act, act, STEPS * 8), r
        assert events[-1]["bytes_sent"] >= act
    # the schedule's time beyond each stage's arithmetic is communication, on both ranks
    assert all(r["seconds"] > 0 for r in p2p)
    for rank in summary["per_rank"]:
        assert rank["comm_seconds"] >= rank["ops"]["pipeline_p2p"]["seconds"]


def test_balance_by_parameter_count():
    assert balance([10, 0, 10, 0, 10, 0, 10], 2) == [0, 3, 7]
    assert balance([100, 1, 1, 1], 2) == [0, 1, 4]
    assert balance([1, 1, 1], 3) == [0, 1, 2, 3]
    with pytest.raises(ConfigError, match="3 layers cannot make 4 stages"):
        balance([1, 1, 1], 4)


def test_pipeline_refuses_microbatches_that_do_not_divide_the_batch(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(algorithm='name = "pipeline"\nmicrobatches = 5', steps=1))
    res = distml("run", str(path), "--dry-run", timeout=60)
    assert res.returncode == 2
    assert "microbatches (5) must divide data.batch_size (32)" in res.stderr


class _Slow(torch.nn.Module):
    """No parameters, but ~20 matrix products: costly in time, free by parameter count."""

    def __init__(self, d):
        super().__init__()
        self.register_buffer("w", torch.randn(d, d) / d ** 0.5)

    def forward(self, x):
        for _ in range(20):
            x = torch.tanh(x @ self.w)
        return x


def test_balance_by_measured_time_differs_from_parameter_count():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(256, 256), _Slow(256), _Slow(256)]
    by_params = balance([sum(q.numel() for q in m.parameters()) for m in layers], 2)
    assert by_params == [0, 1, 3]                 # all parameters in the first layer
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                      # 2 threads on a loaded 2-core box are erratic
    try:
        times = layer_times(layers, torch.randn(32, 256), repeats=5)
    finally:
        torch.set_num_threads(threads)
    assert len(times) == 3 and all(v > 0 for v in times)
    assert times[1] > times[0] and times[2] > times[0], times   # ~40 products against 3
    assert balance(times, 2) == [0, 2, 3]         # the two slow layers on different stages


def test_layer_times_leave_parameters_grads_buffers_and_rng_alone():
    torch.manual_seed(0)
    layers = [torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8), torch.nn.Dropout(0.5)]
    before = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    x = torch.randn(16, 8)
    rng = torch.get_rng_state()
    layer_times(layers, x, repeats=2)
    assert torch.equal(torch.get_rng_state(), rng)
    for m, b in zip(layers, before):
        assert all(torch.equal(v, b[k]) for k, v in m.state_dict().items())
        assert all(q.grad is None for q in m.parameters())


def test_pipeline_refuses_unknown_balance():
    with pytest.raises(ConfigError, match="balance must be one of params, time"):
        Pipeline(balance="flops")
    assert Pipeline(balance="time").describe()["balance"] == "measured time"
