"""A replacement joins the running group from a live peer (issue 18, point 2).

``[faults] on_worker_loss = "continue"`` with ``--max-restarts 1``: rank 1 dies, the
survivors go on in place, the launcher starts a replacement, which asks to join; the
group admits it at a join point every member agrees on, it receives the lead's model,
optimizer, schedule and algorithm state by broadcast, the data is re-partitioned among
three again, and training goes on. The three runs start together (one wall-clock wait):

- ``sync_sgd`` (float64): the final model equals single-process SGD on the concatenated
  batches of three shards (steps before the loss), two (until the join) and three again
  (from the join point on), and ``summary.json`` records the join;
- ``local_sgd`` (H = 4): after the averagings that follow the join, the replacement's
  model is the others' (its anchor and momentum came from the lead; a stale anchor would
  put it elsewhere after the averaging of deltas);
- ``gossip`` (ring): the replacement joins at a gossip join point (every
  ``every × (workers − 1)`` steps: a rank may run ahead of rank 0 by the graph's
  diameter) and the ring is rebuilt over three again.

``[faults] join_wait_s`` holds the group at its first join point after the loss until
the replacement asks (an interpreter importing torch: seconds), so the runs are short and
the join happens however loaded the machine is.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from faultkit import summary
from procs import run_side_by_side
from references import concatenated_sgd

from distml.comm.transport import Transport
from distml.config import load_config
from distml.runtime.elastic import FINISHED_KEY, SEAT_KEY, Replacement, await_seat

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]

STEPS = 40
CONFIG = """
name = "join"
seed = 2
workers = 3
[data]
source = {{ name = "synthetic", kind = "gaussian_mixture", n_train = 960, n_test = 200, dim = 8, num_classes = 3, noise = 2.0 }}
partition = {{ name = "shuffle_split", reshuffle = "global" }}
batch_size = 8
[model]
name = "mlp"
hidden = [8]
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
[algorithm]
{algorithm}
[comm]
timeout_s = {timeout}
[train]
dtype = "float64"
max_steps = {steps}
epochs = 1000
eval_every = 100000
log_every = 1
progress = false
[faults]
on_worker_loss = "continue"
join_wait_s = {wait}
crash = {{ rank = 1, step = 5 }}
"""
RUNS = {"sync": 'name = "sync_sgd"', "local": 'name = "local_sgd"\nperiod = 4',
        "gossip": 'name = "gossip"\ngraph = "ring"'}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Start the runs side by side, one restart allowed; kill what they leave, always."""
    tmp = tmp_path_factory.mktemp("join")
    configs = {}
    for name, algorithm in RUNS.items():
        configs[name] = tmp / f"{name}.toml"
        configs[name].write_text(CONFIG.format(algorithm=algorithm, steps=STEPS, timeout=120,
                                               wait=60))
    return run_side_by_side(tmp, configs, deadline_s=210, extra_args=("--max-restarts", "1"))


def _joined(name, runs):
    code, err, out, leftover, cfg = runs[name]
    assert code == 0, err[-3000:]
    assert not leftover, "processes outlived the run"
    assert "distml: replacement 1/1: rank 1: killed by SIGKILL; a new process joins" in err
    s = summary(out)
    assert s["steps"] == STEPS and s["workers"] == 3 and s["workers_at_start"] == 3
    loss, join = s["membership"]
    assert loss["left"] == [1] and loss["workers"] == 2
    assert join["joined"] == [1] and join["workers"] == 3 and loss["step"] < join["step"] < STEPS
    assert join["state_bytes"] > 0 and 0 < join["join_seconds"] < 120
    assert join["next_step_at"] >= join["admitted_at"]
    assert sorted(r["elastic"]["launch_rank"] for r in s["per_rank"]) == [0, 1, 2]
    return s, out, cfg, loss, join


def test_sync_sgd_replacement_joins_and_equals_the_reference(runs):
    s, out, cfg, loss, join = _joined("sync", runs)
    got = torch.load(out / "model.pt", weights_only=True)
    phases = [(loss["step"], 2), (join["step"], 3)]
    ref = concatenated_sgd(load_config(cfg), STEPS, workers=3, regroup=phases)[0].state_dict()
    worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-9, f"max abs parameter difference {worst}"
    # without the join (two workers to the end) the reference differs: the check can fail
    alone = concatenated_sgd(load_config(cfg), STEPS, workers=3, regroup=phases[:1])[0].state_dict()
    assert max((got[k] - alone[k]).abs().max().item() for k in ref) > 1e-6
    newcomer = next(r for r in s["per_rank"] if r["elastic"]["started_at"] is not None)
    assert newcomer["elastic"]["launch_rank"] == 1 and newcomer["rank"] == 2   # joined last


def test_local_sgd_replacement_holds_the_others_model_after_averaging(runs):
    s, *_, join = _joined("local", runs)
    assert join["step"] % 4 == 0, "a local SGD replacement joins right after an averaging"
    digests = {r["elastic"]["launch_rank"]: r["elastic"]["model_sha256"] for r in s["per_rank"]}
    assert digests[1] == digests[0] == digests[2], digests


def test_gossip_replacement_joins_at_a_join_point(runs):
    s, *_, join = _joined("gossip", runs)
    assert join["step"] % 2 == 0, "3 workers on a ring: gossip join points are 2 steps apart"
    assert s["test_accuracy"] > 0.5      # the regrown ring goes on training (3 classes: chance 0.33)


def test_a_replacement_never_takes_a_stale_seat():
    """A seat left for an earlier replacement of the same rank (incarnation 1, which
    died) is not taken by the next one (incarnation 2): it waits for its own seat, and
    gives up when the run finished."""
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    store = Transport.host_store(sock, 5.0)
    sock.detach()
    stale = {"prefix": "distml/elastic/1/", "rank": 2, "world": 3, "step": 8}
    store.set(SEAT_KEY.format(rank=1, incarnation=1), json.dumps(stale))
    store.set(FINISHED_KEY, "1")
    assert await_seat(store, 1, Replacement(incarnation=2, started_at=time.time()), 5.0) is None
    assert store.get("distml/elastic/join/1") == b"2"        # it asked, as itself
    mine = dict(stale, step=12)
    store.set(SEAT_KEY.format(rank=1, incarnation=2), json.dumps(mine))
    assert await_seat(store, 1, Replacement(incarnation=2, started_at=time.time()), 5.0) == mine


@pytest.mark.parametrize("wait,timeout,restarts,message", [
    (10, 60, [], "faults.join_wait_s waits for a replacement, which needs --max-restarts N"),
    (40, 60, ["--max-restarts", "1"], "faults.join_wait_s must be at most comm.timeout_s / 2 = 30"),
])
def test_join_wait_is_checked_before_any_process(tmp_path, capsys, wait, timeout, restarts, message):
    from distml.cli import main
    path = tmp_path / "join.toml"
    path.write_text(CONFIG.format(algorithm='name = "sync_sgd"', steps=STEPS, timeout=timeout,
                                  wait=wait))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), *restarts]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
