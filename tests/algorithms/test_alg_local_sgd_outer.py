"""Outer optimizers for periodic averaging: BMUF is one of them, DiLoCo runs as its paper says.

The one-process tests feed the outer step a sequence of mean deltas and compare the anchors
with the papers' own update formulas (written out here, not taken from torch). The
two-process test trains DiLoCo (inner AdamW, H = 3, outer Nesterov SGD) on 2 ranks in
float64 and compares ``model.pt`` with one process that keeps one model and one AdamW per
rank, averages every H steps and takes the outer step by the formula.
"""

import itertools
import json

import pytest
import torch

from procs import distml
from references import rank_streams
from distml.algorithms._fragments import Fragment
from distml.algorithms.local_sgd import DILOCO_OUTER, DiLoCo, LocalSGD
from distml.config import load_config
from distml.errors import ConfigError
from distml.models import build_loss
from distml.partition import SOURCES
from distml.runtime.build import build_model_for


def _anchors(alg, x0, means):
    fragment = Fragment([x0.clone()], alg.outer_spec, alg.codec)     # the whole model: one fragment
    return [fragment.outer_step(m.clone()).clone() for m in means]


def _means(n=6, d=5):
    g = torch.Generator().manual_seed(0)
    return torch.randn(d, dtype=torch.float64, generator=g), \
        [torch.randn(d, dtype=torch.float64, generator=g) for _ in range(n)]


@pytest.mark.parametrize("nesterov", [True, False])
def test_bmuf_is_the_block_momentum_formula(nesterov):
    """Chen & Huo 2016: Δ = ηΔ + ζG, W = W + Δ, the next block starts at W + ηΔ (Nesterov) or W."""
    eta, zeta = 0.9, 1.3
    x0, means = _means()
    got = _anchors(LocalSGD(bmuf=True, block_momentum=eta, block_lr=zeta, nesterov=nesterov), x0, means)
    w, delta, want = x0.clone(), torch.zeros_like(x0), []
    for g in means:                 # g: the mean delta from the block's start point
        delta = eta * delta + zeta * g
        w = w + delta
        want.append(w + eta * delta if nesterov else w)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a, b)


def test_outer_sgd_with_lr_1_is_plain_averaging():
    x0, means = _means()
    plain = _anchors(LocalSGD(), x0, means)
    outer = _anchors(LocalSGD(outer_optimizer={"name": "sgd", "lr": 1.0}), x0, means)
    assert all(torch.equal(a, b) for a, b in zip(plain, outer))
    assert not torch.equal(plain[-1], x0)


def test_outer_adam_takes_adam_steps_on_the_pseudo_gradient():
    """Any registered optimizer: Adam's first step moves every coordinate by lr against the
    pseudo-gradient's sign (anchor − mean θ = −mean delta), i.e. along the mean delta."""
    x0, means = _means(n=1)
    (a,) = _anchors(LocalSGD(outer_optimizer={"name": "adam", "lr": 0.01}), x0, means)
    assert torch.allclose(a - x0, 0.01 * torch.sign(means[0]), atol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    ({"bmuf": True, "outer_optimizer": "sgd"}, "preset of outer_optimizer"),
    ({"outer_optimizer": "nope"}, "nope"),
    ({"outer_optimizer": {"name": "sgd", "lr": -1}}, "lr"),
    ({"outer_optimizer": "lbfgs"}, "closure"),
])
def test_bad_outer_optimizers_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        LocalSGD(**kwargs)


CONFIG = """
name = "diloco"
seed = 4
workers = 2
[data]
source = { name = "sklearn", dataset = "digits" }
batch_size = 16
[model]
name = "mlp"
hidden = [16]
[optim]
name = "adamw"
lr = 0.01
weight_decay = 0.01
[algorithm]
name = "diloco"
period = 3
[train]
dtype = "float64"
max_steps = 9
eval_every = 1000
progress = false
"""


def _diloco_reference(cfg, steps: int, period: int, workers: int = 2):
    """One model and one AdamW per rank; every H steps the anchor takes an outer Nesterov
    step on g = anchor − mean θ (v = μv + g; anchor −= lr (g + μv)) and every rank restarts
    from it (their AdamW states carry on)."""
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    streams = rank_streams(cfg, source, workers)
    loss_fn = build_loss(cfg.model.loss, cfg.model.name, source.info)
    models = [build_model_for(cfg, source.info).double() for _ in range(workers)]
    for m in models[1:]:
        m.load_state_dict(models[0].state_dict())
    opts = [torch.optim.AdamW(m.parameters(), lr=0.01, weight_decay=0.01) for m in models]
    flat = lambda m: torch.cat([p.detach().reshape(-1) for p in m.parameters()])
    anchor, v = flat(models[0]), None
    lr, mu = DILOCO_OUTER["lr"], DILOCO_OUTER["momentum"]
    for step, batches in zip(range(steps), zip(*streams)):
        for m, opt, (x, y) in zip(models, opts, batches):
            opt.zero_grad()
            loss_fn(m(x.double()), y).backward()
            opt.step()
        if (step + 1) % period == 0:
            g = anchor - torch.stack([flat(m) for m in models]).mean(0)
            v = g.clone() if v is None else mu * v + g
            anchor = anchor - lr * (g + mu * v)
            for m in models:
                torch.nn.utils.vector_to_parameters(anchor.clone(), m.parameters())
    return models[0]


@pytest.mark.multiprocess
@pytest.mark.timeout(180)
def test_diloco_on_two_ranks_equals_the_papers_update(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    cfg = load_config(path)
    ref = dict(_diloco_reference(cfg, steps=9, period=3).named_parameters())
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-9, worst
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["algorithm"] == "diloco" and summary["per_rank"][0]["syncs"] == 3


def test_diloco_defaults_are_the_papers():
    d = DiLoCo()
    assert d.period == 50 and d.outer_spec == DILOCO_OUTER
