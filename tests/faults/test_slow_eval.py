"""An evaluation on rank 0 longer than ``comm.timeout_s`` does not kill the run (issue 14, point 6).

Rank 0's evaluations are slowed by ``[faults] slow_eval`` to well past the timeout; the
other ranks wait for it — in the evaluation barrier of a collective algorithm, and in a
held pull and the servers' receive of a parameter server — and the run finishes. A peer
that dies is still named within the ordinary timeout (tests/ps/test_ps_runs.py).
"""

import json

import pytest
from procs import run_side_by_side

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(150)]

TIMEOUT_S = 3
SLOW_S = 7         # > 2 x TIMEOUT_S: a wait that uses the ordinary limit fails

CONFIG = """
name = "slow_eval"
seed = 1
workers = 2
[data]
source = {{ name = "synthetic", kind = "gaussian_mixture", n_train = 256, n_test = 64, dim = 8, num_classes = 2 }}
batch_size = 16
[model]
name = "mlp"
hidden = [8]
[optim]
name = "sgd"
lr = 0.05
[algorithm]
{algorithm}
[comm]
timeout_s = {timeout}
[train]
max_steps = 4
eval_every = 3          # one evaluation mid-run (step 3) and the final one: both slowed
progress = false
[faults]
slow_eval = {{ seconds = {slow} }}
"""


ALGORITHMS = {
    "sync_sgd": 'name = "sync_sgd"',
    "ps_bsp": 'name = "ps"\nservers = 1\npace = "bsp"',
    "ps_ssp": 'name = "ps"\nservers = 1\npace = {name = "ssp", staleness = 1}',
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three runs side by side: they spend most of their time asleep in rank 0's
    evaluations (step 0, step 3 and the final one)."""
    tmp = tmp_path_factory.mktemp("slow_eval")
    configs = {}
    for name, algorithm in ALGORITHMS.items():
        configs[name] = tmp / f"{name}.toml"
        configs[name].write_text(CONFIG.format(algorithm=algorithm, timeout=TIMEOUT_S, slow=SLOW_S))
    return run_side_by_side(tmp, configs, deadline_s=120)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_a_slow_evaluation_outlasts_the_timeout(runs, name):
    code, err, out, leftover, _ = runs[name]
    assert code == 0, err[-3000:]
    assert not leftover, "processes outlived the run"
    s = json.loads((out / "summary.json").read_text())
    assert all(r["steps"] == 4 for r in s["per_rank"] if r.get("role") != "server"), s["per_rank"]
