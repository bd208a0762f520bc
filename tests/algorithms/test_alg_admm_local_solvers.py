"""ADMM's local optimizer keeps its state across steps and rounds (issue 14, point 4).

With the default ``reset_optimizer`` (L-BFGS only), momentum SGD and Adam as the local
solvers (20 full-batch steps a round; their state is never cleared) reach the objective L-BFGS reaches, within 1e-3 relative, on
L2-regularized logistic regression (breast_cancer standardized, 2 workers, float64). See
test_alg_admm.py for the objective and ``l2 = 2/(C·n)``.
"""

import pytest
import torch

from distml.config import load_config
from distml.partition import PARTITIONS, SOURCES, make_loader
from procs import run_side_by_side
from test_alg_admm import C, sklearn_objective

SOURCE = {"name": "sklearn", "dataset": "breast_cancer", "standardize": True}
PARTITION = {"name": "shuffle_split", "reshuffle": "none"}

CONFIG = """
name = "admm-{name}"
seed = 0
workers = 2
[data]
source = {{ name = "sklearn", dataset = "breast_cancer", standardize = true }}
partition = {{ name = "shuffle_split", reshuffle = "none" }}
batch_size = 227
[model]
name = "softmax"
[optim]
{optim}
[algorithm]
name = "admm"
rho = 0.1
l2 = {l2}
adaptive_rho = false
local_steps = {local_steps}
[train]
dtype = "float64"
epochs = {rounds}
eval_every = 100000
progress = false
"""

SOLVERS = {
    "lbfgs": ('name = "lbfgs"\nmax_iter = 50\ntolerance_grad = 1e-10\ntolerance_change = 1e-12\n'
              'history_size = 20', 1, 60),
    # 20 steps a round, 100 rounds: the state carries across the steps and the rounds
    "momentum": ('name = "momentum"\nlr = 0.1\nmomentum = 0.9', 20, 2000),
    "adam": ('name = "adam"\nlr = 0.01', 20, 2000),
}


def data():
    """The two workers' shards, concatenated (the objective's samples)."""
    cfg = load_config(base={"data": {"source": SOURCE, "partition": PARTITION}})
    source = SOURCES.build(cfg.data.source, seed=0)
    shards = [make_loader(source, PARTITIONS.build(cfg.data.partition), r, 2, 32, 0).full_batch()
              for r in range(2)]
    return (torch.cat([s[0] for s in shards]).double().numpy(),
            torch.cat([s[1] for s in shards]).numpy())


def objectives(tmp_path, x, y) -> dict[str, float]:
    """Every solver's run, side by side (each is two small processes that mostly wait on
    each other); the objective each one's saved model reaches."""
    configs = {}
    for name, (optim, local_steps, steps) in SOLVERS.items():
        configs[name] = tmp_path / f"{name}.toml"
        configs[name].write_text(CONFIG.format(name=name, optim=optim, l2=2.0 / (C * len(y)),
                                               local_steps=local_steps, rounds=steps))
    found = {}
    for name, (code, err, out, leftover, _) in run_side_by_side(tmp_path, configs, 300).items():
        assert code == 0 and not leftover, f"{name}: exit {code}\n{err[-3000:]}"
        state = torch.load(out / "model.pt", weights_only=True)
        w = (state["linear.weight"][1] - state["linear.weight"][0]).numpy()
        found[name] = sklearn_objective(w, float(state["linear.bias"][1] - state["linear.bias"][0]),
                                        x, y)
    return found


@pytest.mark.multiprocess
@pytest.mark.timeout(400)
def test_momentum_and_adam_local_solvers_reach_the_lbfgs_objective(tmp_path):
    x, y = data()
    got = objectives(tmp_path, x, y)
    ref = got["lbfgs"]
    for name in ("momentum", "adam"):
        print(name, got[name], "lbfgs", ref, "rel", (got[name] - ref) / ref)
        assert abs(got[name] - ref) / ref <= 1e-3, name


@pytest.mark.parametrize("optimizer, kept", [("momentum", True), ("adam", True), ("lbfgs", False)])
def test_default_keeps_first_order_state_and_resets_lbfgs_once_a_round(optimizer, kept):
    """World of one, ``local_steps = 1`` (the default): after three rounds momentum's buffer
    and Adam's step count have lived through all of them; L-BFGS's state is cleared."""
    from distml.algorithms import ALGORITHMS
    from distml.comm.transport import Transport
    from distml.optim import build_optimizer
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    spec = {"momentum": {"name": "momentum", "lr": 0.1, "momentum": 0.9},
            "adam": {"name": "adam", "lr": 0.01}, "lbfgs": {"name": "lbfgs"}}[optimizer]
    opt = build_optimizer(spec, model.parameters())
    algo = ALGORITHMS.build({"name": "admm", "rho": 1.0})
    algo.setup(model, opt, Transport(0, 1))
    x, y = torch.randn(16, 3, dtype=torch.float64), torch.randint(2, (16,))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x), y) + algo.loss_terms(model)
        loss.backward()
        return loss

    for step in range(3):
        opt.step(closure)
        algo.after_step(step)
    assert algo.round == 3
    assert bool(opt.state) == kept
    if optimizer == "adam":
        assert all(int(s["step"]) == 3 for s in opt.state.values())
