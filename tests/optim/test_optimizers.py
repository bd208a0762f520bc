"""Contract tests over every registered optimizer, and L-BFGS against scikit-learn."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distml.errors import ConfigError
from distml.optim import OPTIMIZERS, build_optimizer, is_full_batch, needs_closure

# Per-method step sizes that make 60 steps on the toy problem count.
LR = {"adam": 0.05, "adamw": 0.05, "adagrad": 0.3, "rmsprop": 0.01, "sgd": 0.5,
      "momentum": 0.1, "nesterov": 0.1, "gd": 0.5, "lbfgs": 1.0,
      "cd": 1.0, "slbfgs": 0.5, "newton_cg": 1.0}


def _logistic_problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 5, generator=g)
    w_true = torch.tensor([1.5, -2.0, 0.5, 0.0, 1.0])
    y = (x @ w_true + 0.3 * torch.randn(200, generator=g) > 0).float()
    return x, y


def _objective(w, x, y):
    return F.binary_cross_entropy_with_logits(x @ w, y) + 0.01 * w.pow(2).sum()


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_reduces_logistic_objective(name):
    x, y = _logistic_problem()
    w = torch.zeros(5, requires_grad=True)
    spec = {"name": name, "lr": LR.get(name, 0.05)} if "lr" in OPTIMIZERS.parameters(name) \
        else name
    opt = build_optimizer(spec, [w])
    assert isinstance(opt, torch.optim.Optimizer)
    start = _objective(w, x, y).item()

    def closure():
        opt.zero_grad()
        loss = _objective(w, x, y)
        loss.backward()
        return loss

    for _ in range(3 if needs_closure(name) and is_full_batch(name) else 60):
        if needs_closure(name):
            opt.step(closure)
        else:
            closure()
            opt.step()
    end = _objective(w, x, y).item()
    assert end < 0.6 * start, f"{name}: {start:.4f} -> {end:.4f}"


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_has_meta(name):
    meta = OPTIMIZERS.meta(name)
    assert meta["kind"] and meta["paper"] and meta["summary"]
    assert isinstance(needs_closure(name), bool) and isinstance(is_full_batch(name), bool)


def test_flags_and_papers():
    assert is_full_batch("gd") and is_full_batch("lbfgs")
    assert not is_full_batch("sgd") and not is_full_batch("adam")
    assert needs_closure("lbfgs") and not needs_closure("gd")
    assert OPTIMIZERS.meta("adam")["paper"] == "Kingma & Ba 2015"
    assert OPTIMIZERS.meta("lbfgs")["paper"] == "Liu & Nocedal 1989"
    assert OPTIMIZERS.meta("adagrad")["paper"] == "Duchi et al. 2011"
    assert OPTIMIZERS.meta("nesterov")["paper"].startswith("Nesterov 1983")
    assert "deterministic" in OPTIMIZERS.meta("gd")["kind"]
    assert OPTIMIZERS.meta("lbfgs")["kind"].startswith("second-order")


def test_presets_set_torch_hyperparameters():
    w = [torch.nn.Parameter(torch.zeros(2))]
    assert build_optimizer("sgd", w).defaults["lr"] == 0.01
    assert build_optimizer("momentum", w).defaults["momentum"] == 0.9
    nag = build_optimizer("nesterov", w).defaults
    assert nag["momentum"] == 0.9 and nag["nesterov"] is True
    assert build_optimizer({"name": "adam", "betas": [0.8, 0.9]}, w).defaults["betas"] == (0.8, 0.9)
    lb = build_optimizer({"name": "lbfgs", "line_search": "none"}, w).defaults
    assert lb["line_search_fn"] is None and lb["history_size"] == 10 and lb["max_iter"] == 20
    assert build_optimizer("lbfgs", w).defaults["line_search_fn"] == "strong_wolfe"


def test_unknown_optimizer_lists_registered():
    with pytest.raises(ConfigError, match="unknown optimizer 'adamax'; registered: adagrad, adam, "
                                          "adamw, cd, gd, lbfgs, momentum, nesterov, newton_cg, "
                                          "rmsprop, sgd, slbfgs"):
        build_optimizer("adamax", [torch.nn.Parameter(torch.zeros(1))])


@pytest.mark.parametrize("spec,message", [
    ({"name": "sgd", "lr": -1}, "sgd: lr must be > 0, got -1"),
    ({"name": "adam", "lr": 0}, "adam: lr must be > 0, got 0"),
    ({"name": "momentum", "momentum": 1.0}, r"momentum: momentum must be in \[0, 1\), got 1.0"),
    ({"name": "adam", "betas": [0.9, 1.2]}, r"betas\[1\] must be in \[0, 1\)"),
    ({"name": "sgd", "nesterov": True}, "nesterov needs momentum in"),
    ({"name": "lbfgs", "line_search": "armijo"}, "line_search must be 'strong_wolfe' or 'none'"),
    ({"name": "lbfgs", "history_size": 0}, "history_size must be an int >= 1"),
    ({"name": "sgd", "lr": "fast"}, "lr must be a number"),
    ({"name": "sgd", "weight_decay": -0.1}, "weight_decay must be >= 0"),
    ({"name": "sgd", "momentun": 0.9}, "has no parameter 'momentun'"),
])
def test_bad_hyperparameters_name_the_range(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_optimizer(spec, [torch.nn.Parameter(torch.zeros(1))])


def test_lbfgs_matches_sklearn_l2_logistic_regression():
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x_np, y_np = load_breast_cancer(return_X_y=True)
    x_np = StandardScaler().fit_transform(x_np)
    n, c = len(y_np), 1.0
    lam = 1.0 / (c * n)  # sklearn: C·Σ log-loss + ½‖w‖²  ≡  mean log-loss + λ/2‖w‖²
    ref = LogisticRegression(C=c, tol=1e-12, max_iter=10_000).fit(x_np, y_np)

    x = torch.from_numpy(x_np)
    y = torch.from_numpy(y_np.astype(np.float64))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def objective(w, b):  # intercept unpenalized, as in sklearn
        return F.binary_cross_entropy_with_logits(x @ w + b, y) + lam / 2 * w.pow(2).sum()

    opt = build_optimizer({"name": "lbfgs", "max_iter": 100, "history_size": 20,
                           "tolerance_grad": 1e-12, "tolerance_change": 1e-14}, [w, b])

    def closure():
        opt.zero_grad()
        loss = objective(w, b)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    with torch.no_grad():
        ours = objective(w, b).item()
        theirs = objective(torch.from_numpy(ref.coef_[0]), torch.tensor(ref.intercept_[0])).item()
    assert abs(ours - theirs) <= 1e-4 * abs(theirs), (ours, theirs)
    assert ours <= theirs * (1 + 1e-6)
