"""Feature-partitioned logistic regression: 2 workers equal one process step for step."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from procs import distml
from distml.config import load_config
from distml.models import build_loss
from distml.optim import build_optimizer
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.runtime.build import build_model_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]

STEPS = 300
WD = 0.05
CONFIG = """
name = "fs"
seed = 1
workers = {workers}
[data]
source = {{ name = "sklearn", dataset = "breast_cancer" }}
batch_size = 64
[model]
name = "softmax"
bias = false
[optim]
name = "gd"
lr = 1.0
weight_decay = {wd}
[algorithm]
name = "feature_split"
[train]
dtype = "float64"
epochs = {steps}
log_every = 1
eval_every = 100
progress = false
"""


def _run(tmp_path, workers, steps):
    path = tmp_path / f"c{workers}.toml"
    path.write_text(CONFIG.format(workers=workers, steps=steps, wd=WD))
    out = tmp_path / f"run{workers}"
    res = distml("run", str(path), "--out", str(out), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    return load_config(path), out


def _reference(cfg, steps):
    """One process, the whole model, full-batch GD on the same rows: per-step losses and weights."""
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    x, y = make_loader(source, PARTITIONS.build(cfg.data.partition), 0, 1, 64, cfg.seed).full_batch()
    x = x.double()
    model = build_model_for(cfg, source.info).double()
    loss_fn = build_loss(cfg.model.loss, cfg.model.name, source.info)
    opt = build_optimizer(cfg.optim.spec(), model.parameters())
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, model.linear.weight.detach(), x, y


def test_two_workers_equal_single_process_reach_sklearn_and_use_less_memory(tmp_path):
    cfg, out = _run(tmp_path, 2, STEPS)
    events = [json.loads(ln) for ln in (out / "events-rank0.jsonl").read_text().splitlines()]
    got_losses = [e["loss"] for e in events]
    ref_losses, ref_w, x, y = _reference(cfg, STEPS)
    assert len(got_losses) == STEPS
    assert np.max(np.abs(np.array(got_losses) - ref_losses)) <= 1e-6
    got_w = torch.load(out / "model.pt", weights_only=True)["linear.weight"]
    assert (got_w - ref_w).abs().max().item() <= 1e-6
    assert got_losses[-1] < 0.5 * got_losses[0]          # it trained

    # the optimum: softmax with 2 outputs and L2 wd on both rows = logistic with λ = wd/2
    # on w = W1 − W0 (at the optimum W0 = −W1); scikit-learn solves the latter
    from sklearn.linear_model import LogisticRegression
    lam = WD / 2
    ref = LogisticRegression(C=1.0 / (lam * len(y)), fit_intercept=False, tol=1e-12,
                             max_iter=10_000).fit(x.numpy(), y.numpy())
    w_star = torch.from_numpy(ref.coef_[0])

    def objective(w):
        return (F.binary_cross_entropy_with_logits(x @ w, y.double()) + lam / 2 * w @ w).item()

    ours, theirs = objective(got_w[1] - got_w[0]), objective(w_star)
    assert abs(ours - theirs) <= 1e-4 * theirs, (ours, theirs)

    # memory per worker shrinks with workers: each of 2 holds half the columns and weights
    two = [json.loads((out / f"feature_split-rank{r}.json").read_text()) for r in range(2)]
    assert [m["columns"] for m in two] == [[0, 15], [15, 30]]
    _, out1 = _run(tmp_path, 1, 2)
    one = json.loads((out1 / "feature_split-rank0.json").read_text())
    assert one["columns"] == [0, 30]
    for m in two:
        assert m["data_bytes"] * 2 == one["data_bytes"]
        assert m["param_bytes"] * 2 == one["param_bytes"]


def test_rejects_non_elementwise_optimizer(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(workers=2, steps=2, wd=0.0).replace('name = "gd"', 'name = "lbfgs"')
                    .replace("lr = 1.0\n", "").replace("weight_decay = 0.0\n", ""))
    res = distml("run", str(path), "--dry-run", timeout=60)     # refused before any worker starts
    assert res.returncode == 2
    assert "element-wise optimizer" in res.stderr
