"""Consensus ADMM (2 workers, real processes) reaches scikit-learn's logistic-regression optimum.

The model is the 2-output softmax regression; its logit difference ``w = W_1 − W_0``,
``b = b_1 − b_0`` is scikit-learn's binary model. With ``l2/2 (‖W_0‖² + ‖W_1‖²)`` the
optimum has ``W_1 = −W_0 = w/2``, i.e. ``l2/4 ‖w‖²``; scikit-learn minimizes
``½‖w‖² + C Σ log-loss`` = ``C n (mean log-loss + ‖w‖²/(2Cn))``, so ``l2 = 2/(C n)``.
"""

import json

import numpy as np
import pytest
import torch

from procs import distml
from distml.config import load_config
from distml.partition import PARTITIONS, SOURCES, make_loader

C = 1.0

CONFIG = """
name = "admm"
seed = 0
workers = 2
[data]
source = {{ name = "sklearn", dataset = "breast_cancer" }}
partition = {{ name = "shuffle_split", reshuffle = "none" }}
batch_size = 32
[model]
name = "softmax"
[optim]
name = "lbfgs"
max_iter = 50
tolerance_grad = 1e-10
tolerance_change = 1e-12
history_size = 20
[algorithm]
name = "admm"
rho = 0.1
l2 = {l2}
[train]
dtype = "float64"
epochs = {rounds}
eval_every = 20
progress = false
"""


def sklearn_objective(w: np.ndarray, b: float, x: np.ndarray, y: np.ndarray) -> float:
    z = x @ w + b
    return 0.5 * float(w @ w) + C * float(np.logaddexp(0.0, -np.where(y == 1, 1, -1) * z).sum())


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_admm_reaches_sklearn_logistic_regression_optimum(tmp_path):
    from sklearn.linear_model import LogisticRegression
    path = tmp_path / "admm.toml"
    path.write_text(CONFIG.format(l2=0.0, rounds=1))
    cfg = load_config(path)
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    shards = [make_loader(source, PARTITIONS.build(cfg.data.partition), r, 2, 32, cfg.seed).full_batch()
              for r in range(2)]
    x = torch.cat([s[0] for s in shards]).double().numpy()
    y = torch.cat([s[1] for s in shards]).numpy()
    n = len(y)
    assert n == 2 * len(shards[0][1])           # equal shards: mean of means = global mean
    ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(x, y)
    best = sklearn_objective(ref.coef_[0], float(ref.intercept_[0]), x, y)

    path.write_text(CONFIG.format(l2=2.0 / (C * n), rounds=200))
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=100)
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    w = (state["linear.weight"][1] - state["linear.weight"][0]).numpy()
    b = float(state["linear.bias"][1] - state["linear.bias"][0])
    ours = sklearn_objective(w, b, x, y)
    print("ADMM objective", ours, "sklearn", best, "rel", abs(ours - best) / best)
    assert abs(ours - best) / best <= 1e-4, (ours, best)

    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    m = summary["algorithm_metrics"]
    print(m, summary["wall_seconds"])
    assert m["admm_round"] == 200
    assert m["primal_residual"] < 1e-4 and m["dual_residual"] < 1e-4, m
    evals = [json.loads(line) for line in (tmp_path / "run" / "eval.jsonl").read_text().splitlines()]
    assert all("primal_residual" in e and "rho" in e for e in evals)
    assert summary["test_accuracy"] > 0.93


def test_admm_hooks_in_one_process_and_checkpoint_round_trip():
    """World of one (no process group): ADMM is then the proximal-point method; its state
    (z, u, ρ, round) survives a state_dict round trip and the proximal term has the right gradient."""
    from distml.algorithms import ALGORITHMS
    from distml.comm.transport import Transport
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    algo = ALGORITHMS.build({"name": "admm", "rho": 2.0, "l2": 0.5, "local_steps": 2})
    algo.setup(model, opt, Transport(0, 1))
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(2, (16,))
    for step in range(6):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + algo.loss_terms(model)
        loss.backward()
        opt.step()
        algo.after_step(step)
    assert algo.round == 3 and algo.primal_residual is not None
    # d/dp of ρ/2‖p − (z − u)‖² is ρ (p − z + u)
    model.zero_grad()
    algo.loss_terms(model).backward()
    flat_grad = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    flat_p = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    assert torch.allclose(flat_grad, algo.rho * (flat_p - algo.z + algo.u))
    state = algo.state_dict()
    other = ALGORITHMS.build({"name": "admm", "rho": 2.0, "l2": 0.5, "local_steps": 2})
    other.setup(torch.nn.Linear(3, 2).double(), torch.optim.SGD(model.parameters(), lr=0.1),
                Transport(0, 1))
    other.load_state_dict(state)
    assert torch.equal(other.z, algo.z) and torch.equal(other.u, algo.u)
    assert (other.rho, other.round) == (algo.rho, algo.round)
    # the consensus model carries z, biases unpenalized
    ev = other.eval_model()
    assert torch.equal(torch.cat([p.detach().reshape(-1) for p in ev.parameters()]), algo.z)


def test_admm_config_errors():
    from distml.errors import ConfigError
    from distml.runtime.build import make_plan
    base = {"data": {"source": {"name": "sklearn", "dataset": "breast_cancer"}},
            "model": {"name": "softmax"}}
    for algo, extra, match in [({"rho": 0}, {}, "rho must be > 0"),
                               ({"local_steps": 0}, {}, "local_steps must be an integer >= 1"),
                               ({"mu": 1}, {}, "mu and tau must be > 1"),
                               ({}, {"comm": {"codec": "fp16"}}, "'admm' takes no comm.codec")]:
        cfg = load_config(base={**base, **extra, "algorithm": {"name": "admm", **algo}})
        with pytest.raises(ConfigError, match=match):
            make_plan(cfg)
