"""Learning-rate schedules: the shape of each curve and the range checks."""

import math

import pytest
import torch

from distml.errors import ConfigError
from distml.optim import SCHEDULES, build_optimizer, build_schedule


def _lrs(spec, total_steps=20, steps=None, base=1.0):
    opt = build_optimizer({"name": "sgd", "lr": base}, [torch.nn.Parameter(torch.zeros(1))])
    sched = build_schedule(spec, opt, total_steps)
    out = []
    for _ in range(total_steps + 1 if steps is None else steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("spec", [None, "constant"])
def test_constant(spec):
    assert _lrs(spec, base=0.3) == [0.3] * 21


def test_warmup_ramps_linearly_then_holds():
    lrs = _lrs({"name": "warmup", "warmup_steps": 4}, base=0.8)
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4:] == pytest.approx([0.8] * 17)


def test_step_decays_at_step_size():
    lrs = _lrs({"name": "step", "step_size": 5, "gamma": 0.5})
    assert lrs[:5] == [1.0] * 5
    assert lrs[5:10] == pytest.approx([0.5] * 5)
    assert lrs[10] == pytest.approx(0.25)


def test_step_with_warmup():
    lrs = _lrs({"name": "step", "step_size": 5, "gamma": 0.5, "warmup_steps": 2})
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[5] == pytest.approx(0.5)


def test_cosine_reaches_min_at_total_steps():
    total = 20
    lrs = _lrs({"name": "cosine", "warmup_steps": 4, "min_lr_ratio": 0.1}, total, steps=total + 3)
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    mid = 4 + (total - 4) // 2
    assert lrs[mid] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[total] == pytest.approx(0.1)
    assert lrs[total:] == pytest.approx([0.1] * 3)


def test_linear_decays_to_zero():
    lrs = _lrs({"name": "linear", "warmup_steps": 2}, 10)
    assert lrs[:2] == pytest.approx([0.5, 1.0])
    assert lrs[6] == pytest.approx(0.5)
    assert lrs[10] == pytest.approx(0.0)


def test_schedule_drives_every_optimizer_group():
    w = [torch.nn.Parameter(torch.zeros(1))]
    opt = build_optimizer({"name": "lbfgs", "lr": 0.5}, w)
    sched = build_schedule({"name": "warmup", "warmup_steps": 2}, opt, 10)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)
    opt.step(lambda: w[0].square().sum())
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("spec,total,message", [
    ({"name": "cosine", "warmup_steps": 10}, 10, r"warmup_steps must be < total_steps \(10\)"),
    ({"name": "cosine"}, None, "needs the run's total number of steps"),
    ({"name": "step", "step_size": 0}, 10, "step_size must be an int >= 1"),
    ({"name": "step", "step_size": 2, "gamma": 0}, 10, r"gamma must be in \(0, 1\]"),
    ({"name": "warmup", "warmup_steps": -1}, 10, "warmup_steps must be an int >= 0"),
    ({"name": "cosine", "min_lr_ratio": 2}, 10, r"min_lr_ratio must be in \[0, 1\]"),
    ("warmup", 10, "needs parameter"),
    ("exponential", 10, "registered: constant, cosine, linear, step, warmup"),
])
def test_bad_schedules(spec, total, message):
    opt = build_optimizer("sgd", [torch.nn.Parameter(torch.zeros(1))])
    with pytest.raises(ConfigError, match=message):
        build_schedule(spec, opt, total)


def test_every_schedule_is_documented():
    for name in SCHEDULES.names():
        assert SCHEDULES.meta(name)["summary"]
        assert SCHEDULES.get(name).__doc__
