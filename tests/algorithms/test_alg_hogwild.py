"""Hogwild! on a sparse problem: 2 processes sharing one model reach the sequential loss."""

import json
import os
import signal
import sys
import time

import pytest

from procs import distml, session

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]

CONFIG = """
name = "hw"
seed = 0
workers = {workers}
[data]
source = {{ name = "synthetic", kind = "sparse_logistic", n_train = 3000, dim = 200, density = 0.05 }}
batch_size = 1
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 0.05
[algorithm]
name = "hogwild"
lock = {lock}
[train]
epochs = 2
progress = false
"""


def _run(tmp_path, workers, lock):
    path = tmp_path / f"c{workers}{lock}.toml"
    path.write_text(CONFIG.format(workers=workers, lock=lock))
    out = tmp_path / f"run{workers}{lock}"
    res = distml("run", str(path), "--out", str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "hogwild.json").read_text()), out


def test_hogwild_reaches_sequential_loss_and_reports_the_lock(tmp_path):
    seq, _ = _run(tmp_path, 1, "false")
    free, out = _run(tmp_path, 2, "false")
    locked, _ = _run(tmp_path, 2, "true")
    # the same number of samples touched: 2 epochs of the whole set, split over the workers
    assert seq["samples"] == free["samples"] == locked["samples"] == 6000
    for run in (free, locked):
        assert abs(run["final_loss"] - seq["final_loss"]) <= 0.02 * seq["final_loss"], (run, seq)
    assert seq["final_loss"] < 0.6                          # it learned (ln 2 = 0.69 at the start)
    assert free["lock_wait_seconds"] == 0 and locked["lock_wait_seconds"] > 0
    assert free["samples_per_second"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "hogwild" and summary["test_accuracy"] > 0.7


LIVENESS = """
name = "hw-live"
seed = 0
workers = 2
[data]
source = {{ name = "synthetic", kind = "sparse_logistic", n_train = {n}, dim = 200, density = 0.05 }}
batch_size = 1
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 0.05
[algorithm]
name = "hogwild"
[comm]
timeout_s = 2
[train]
epochs = {epochs}
progress = false
"""


def test_an_epoch_longer_than_the_timeout_is_no_failure(tmp_path):
    """Liveness is a heartbeat per batch, not a deadline per epoch (issue 14, point 5)."""
    path = tmp_path / "long.toml"
    path.write_text(LIVENESS.format(n=20000, epochs=1))
    res = distml("run", str(path), "--out", str(tmp_path / "long"), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    hw = json.loads((tmp_path / "long" / "hogwild.json").read_text())
    assert hw["train_seconds"] > 2.5, hw          # the epoch outlasted timeout_s = 2


def _descendants(pid: int) -> dict[int, int]:
    """pid -> depth below ``pid`` of every live descendant (from /proc)."""
    parents = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            parents[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    depth, frontier = {}, [(pid, 0)]
    while frontier:
        p, k = frontier.pop()
        for child, parent in parents.items():
            if parent == p:
                depth[child] = k + 1
                frontier.append((child, k + 1))
    return depth


def test_a_stuck_worker_is_named_within_the_timeout(tmp_path):
    """A SIGSTOPped worker (alive, silent) fails the run, named, about timeout_s later."""
    path = tmp_path / "stuck.toml"
    path.write_text(LIVENESS.format(n=200000, epochs=1))
    with session([sys.executable, "-m", "distml", "run", str(path), "--out",
                  str(tmp_path / "stuck")]) as p:
        def workers():     # the forked Hogwild workers: the deepest descendants
            d = _descendants(p.pid)
            deepest = max(d.values(), default=0)
            leaves = sorted(c for c, k in d.items() if k == deepest)
            return leaves if deepest >= 2 and len(leaves) == 2 else None
        deadline = time.monotonic() + 60
        while (found := workers()) is None and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.2)
        assert found, "the hogwild workers did not start"
        time.sleep(1.0)
        os.kill(found[-1], signal.SIGSTOP)      # a descendant of the run this test started
        t0 = time.monotonic()
        _, err = p.communicate(timeout=60)
        took = time.monotonic() - t0
    assert p.returncode == 1, err[-3000:]
    assert "is stuck" in err and "no heartbeat" in err, err[-2000:]
    assert took < 30, took
