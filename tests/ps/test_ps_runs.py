"""`[algorithm] name = "ps"` end to end through the CLI (sklearn digits, a small MLP, float64).

- BSP through the PS with an SGD(momentum) server equals 2-worker sync SGD (within 1e-5);
- two servers give the same model as one;
- a BSP run stopped and resumed equals the uninterrupted one; an ASP run resumes from
  the servers' saved state (their push counters continue);
- a quorum of 1 of 2 drops a straggler's late pushes and counts them, and
  ``stop_at_target`` stops every worker without a barrier;
- a dead server or worker ends the run within the timeout, naming the rank.
"""

import json
import time

import pytest
import torch

import distml
from distml.errors import ConfigError
from procs import distml as run_cli
from procs import run_side_by_side

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(200)]

STEPS = 30

CONFIG = """
name = "ps"
seed = 1
workers = {workers}
[data]
source = {{ name = "sklearn", dataset = "digits", test_fraction = 0.2, standardize = true }}
partition = {{ name = "shuffle_split", reshuffle = "global" }}
batch_size = 32
[model]
name = "mlp"
hidden = [32]
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
[algorithm]
{algorithm}
[comm]
timeout_s = {timeout}
[train]
dtype = "float64"
epochs = {epochs}
max_steps = {steps}
eval_every = 100000
progress = false
{faults}
"""


def write(tmp_path, name, algorithm, workers=2, timeout=20, steps=STEPS, epochs=100, faults=""):
    path = tmp_path / f"{name}.toml"
    path.write_text(CONFIG.format(workers=workers, algorithm=algorithm, timeout=timeout, steps=steps,
                                  epochs=epochs, faults=faults))
    return path


def train(tmp_path, name, algorithm, *extra, **kw):
    path = write(tmp_path, name, algorithm, **kw)
    out = tmp_path / name
    res = run_cli("run", str(path), "--out", str(out), *extra, timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    return out


def model(out):
    return torch.load(out / "model.pt", weights_only=True)


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def summary(out):
    return json.loads((out / "summary.json").read_text())


PS_BSP = 'name = "ps"\nservers = 1\npace = "bsp"'


@pytest.fixture(scope="module")
def bsp_runs(tmp_path_factory):
    """The three reference runs side by side (most of a small run is start-up and waiting)."""
    tmp = tmp_path_factory.mktemp("bsp")
    algorithms = {"sync": 'name = "sync_sgd"', "ps1": PS_BSP,
                  "ps2": 'name = "ps"\nservers = 2\npace = "bsp"'}
    done = run_side_by_side(tmp, {name: write(tmp, name, a) for name, a in algorithms.items()},
                            deadline_s=150)
    for name, (code, err, out, leftover, _) in done.items():
        assert code == 0 and not leftover, f"{name}: exit {code}\n{err[-3000:]}"
    return {name: done[name][2] for name in algorithms} | {"tmp": tmp}


def test_bsp_ps_equals_sync_sgd(bsp_runs):
    got, ref = model(bsp_runs["ps1"]), model(bsp_runs["sync"])
    assert max_diff(got, ref) <= 1e-5
    s = summary(bsp_runs["ps1"])
    assert s["steps"] == STEPS and s["workers"] == 2
    assert s["ps"]["staleness_max"] == 0 and s["ps"]["pushes_applied"] == [2 * STEPS]
    assert len(s["per_rank"]) == 2 and all(r["role"] == "worker" for r in s["per_rank"])
    assert s["per_rank"][0]["staleness_hist"] == {"0": STEPS}
    assert s["staleness_histogram"] == {"0": 2 * STEPS}      # both workers' pulls
    assert s["bytes_sent"] > 0 and s["test_accuracy"] > 0.5


def test_report_plots_the_staleness_histogram(bsp_runs, tmp_path):
    res = run_cli("report", str(bsp_runs["ps1"]), "--out", str(tmp_path / "rep"), timeout=60)
    assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "rep" / "staleness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_two_servers_give_the_same_model_as_one(bsp_runs):
    assert max_diff(model(bsp_runs["ps2"]), model(bsp_runs["ps1"])) <= 1e-12
    assert summary(bsp_runs["ps2"])["ps"]["servers"] == 2


def test_bsp_resumed_equals_uninterrupted(bsp_runs):
    tmp = bsp_runs["tmp"]
    path = write(tmp, "resume", PS_BSP)
    out = tmp / "resume"
    first = run_cli("run", str(path), "--out", str(out), "--stop-after", "12", timeout=90)
    assert first.returncode == 0, first.stderr[-3000:]
    assert not (out / "summary.json").exists()
    assert sorted(p.name for p in (out / "checkpoints").glob("*rank2.pt")) == ["step000000012-rank2.pt"]
    second = run_cli("run", str(path), "--out", str(out), "--resume", timeout=90)
    assert second.returncode == 0, second.stderr[-3000:]
    assert max_diff(model(out), model(bsp_runs["ps1"])) <= 1e-12


def test_asp_resumes_from_the_saved_server_state(tmp_path):
    algo = 'name = "ps"\nservers = 1\npace = "asp"'
    path = write(tmp_path, "asp", algo)
    out = tmp_path / "asp"
    first = run_cli("run", str(path), "--out", str(out), "--stop-after", "12", timeout=90)
    assert first.returncode == 0, first.stderr[-3000:]
    saved = torch.load(out / "checkpoints" / "step000000012-rank2.pt", weights_only=True)
    assert saved["applied"] == 2 * 12 and saved["clocks"] == {0: 12, 1: 12}
    second = run_cli("run", str(path), "--out", str(out), "--resume", timeout=90)
    assert second.returncode == 0, second.stderr[-3000:]
    s = summary(out)
    # the server continued from its saved counters: every push of both runs, once
    assert s["ps"]["pushes_applied"] == [2 * STEPS]
    assert s["steps"] == STEPS and s["test_accuracy"] > 0.5


def test_quorum_drops_a_slow_workers_pushes_and_stop_at_target_needs_no_barrier(tmp_path):
    path = write(tmp_path, "quorum", 'name = "ps"\nquorum = 1', steps=400,
                 faults="[faults]\ncompute_s = 0.005\nstraggler = { ranks = [1], slowdown = 10.0 }")
    # the first evaluation (where rank 0 may stop) after 50 steps: by then the straggler,
    # 10x slower, has pushed several times late (after 10 steps it had often pushed once)
    path.write_text(path.read_text().replace(
        "eval_every = 100000", "eval_every = 50\ntarget_accuracy = 0.5\nstop_at_target = true"))
    res = run_cli("run", str(path), "--out", str(tmp_path / "quorum"), timeout=90)
    assert res.returncode == 0, res.stderr[-3000:]
    s = summary(tmp_path / "quorum")
    server = s["ps"]["server_reports"][0]
    dropped = server["dropped_by_worker"]
    assert dropped["1"] > 0 and dropped["1"] > dropped["0"]      # the straggler's late pushes
    # exactly once: every push of both workers was applied or counted as dropped
    assert server["pushes_applied"] + server["pushes_dropped"] == sum(r["pushes"] for r in s["per_rank"])
    # rank 0 met the target and stopped; the straggler learnt it from a pull reply
    assert s["time_to_target"] is not None
    assert all(r["steps"] < 400 for r in s["per_rank"])


@pytest.mark.parametrize("dead", [2, 1], ids=["server", "worker"])
def test_a_dead_server_or_worker_ends_the_run_within_the_timeout(tmp_path, dead):
    path = write(tmp_path, "dead", PS_BSP, timeout=4, steps=10**6, epochs=10**4,
                 faults=f"[faults]\ncrash = {{ rank = {dead}, after_s = 3.0 }}")
    t0 = time.monotonic()
    res = run_cli("run", str(path), "--out", str(tmp_path / "dead"), timeout=90)
    took = time.monotonic() - t0
    assert res.returncode == 1, res.stderr[-3000:]
    assert f"rank {dead}" in res.stderr and "SIGKILL" in res.stderr, res.stderr[-2000:]
    assert took < 60, took        # start-up + 3 s + the 4 s timeout + the launcher's grace


def test_plan_counts_servers_and_refuses_what_does_not_compose():
    base = {"workers": 3, "data": {"source": {"name": "sklearn", "dataset": "digits"}},
            "model": {"name": "softmax"}, "algorithm": {"name": "ps", "servers": 2}}
    plan = distml.plan(base)
    assert plan["processes"] == 5
    assert [s["role"] for s in plan["shards"]][3:] == ["server", "server"]
    bad = [({"algorithm": {"name": "ps", "pace": "asp", "quorum": 2}}, "quorum .*needs pace = 'bsp'"),
           ({"algorithm": {"name": "ps", "quorum": 4}}, r"quorum must be in \[1, 3\]"),
           ({"algorithm": {"name": "ps", "pace": "bulk"}}, "unknown pace 'bulk'; registered: asp, bsp, ssp"),
           ({"optim": {"name": "lbfgs"}, "algorithm": {"name": "ps"}}, "cannot run on a parameter server"),
           ({"algorithm": {"name": "ps"}, "comm": {"codec": "powersgd"}},
            "takes a Compressor, not the multi-round Reducer"),
           ({"algorithm": {"name": "ps"}, "train": {"stop_at_target": True, "checkpoint_every": 5}},
            "do not compose"),
           ({"algorithm": {"name": "ps"}, "faults": {"straggler": {"ranks": [3]}}},
            r"faults.straggler.ranks must be worker ranks in \[0, 2\]")]
    for change, message in bad:
        with pytest.raises(ConfigError, match=message):
            distml.plan({**base, **change})
