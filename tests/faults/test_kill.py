"""A rank killed with SIGKILL from outside, on each topology (issue 8, faults).

- without restarts, the run ends within ``[comm] timeout_s``: the launcher names the
  dead rank, and every survivor detects the loss itself within the timeout and names
  the dead rank in its own error (``gossip`` here; ``sync_sgd`` in
  tests/runtime/test_run_lifecycle.py::test_killed_worker_stops_the_run_within_timeout;
  ``ps`` in the server test below, and a dead PS worker in tests/ps/test_ps_runs.py);
- with ``--max-restarts 1`` the group restarts from the last committed checkpoint and
  finishes with the accuracy of an uninterrupted run (``sync_sgd``, ``ps``, ``gossip``);
- a killed parameter server is detected within the timeout, and the run resumes from
  the checkpoint with the server's parameters, optimizer state and clocks intact.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
from faultkit import (CKPT, STEPS, TIMEOUT_S, committed_step, error_times, kill_rank,
                      logged_steps, rank_pid, summary, wait_until, write_config)

from procs import distml, group_alive, session

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(150)]


def _run_cmd(cfg, out, *extra):
    return [sys.executable, "-m", "distml", "run", str(cfg), "--out", str(out), *extra]


def _finish(p, timeout: float = 120) -> str:
    """Wait for the launcher; check that no process of its group outlives it."""
    _, err = p.communicate(timeout=timeout)
    deadline = time.monotonic() + 10
    while group_alive(p.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not group_alive(p.pid), "worker processes outlived the launcher"
    return err


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The same runs without a fault, made once per algorithm when a test first asks."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    made = {}

    def get(algo: str):
        if algo not in made:
            out = tmp / algo
            res = distml("run", str(write_config(tmp, algo)), "--out", str(out), timeout=120)
            assert res.returncode == 0, res.stderr[-3000:]
            made[algo] = out
        return made[algo]
    return get


def test_sigkilled_gossip_worker_ends_the_run_within_the_timeout(tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, "gossip", steps=10**7, ckpt=0)
    with session(_run_cmd(cfg, out)) as p:
        wait_until(lambda: logged_steps(out), 90, "training", p)
        killed_at = kill_rank(out, 1, p)
        err = _finish(p, timeout=60)
        ended = time.time()
    assert p.returncode == 1, err[-3000:]
    assert "distml: error: rank 1: killed by SIGKILL" in err, err[-3000:]
    # survivors get the timeout to notice, then the launcher stops them (5 s grace)
    assert ended - killed_at < TIMEOUT_S + 10
    errors = error_times(out, 0)
    assert errors, "rank 0 did not detect the dead peer itself"
    at, message = errors[0]
    assert at - killed_at <= TIMEOUT_S + 2.5, (at - killed_at, message)
    assert f"within {TIMEOUT_S} s" in message and "dead peer: rank 1 killed by SIGKILL" in message


def _ended(pid: int) -> bool:
    """Gone, or a zombie waiting for its new parent to reap it."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_workers_end_when_the_launcher_is_killed(tmp_path, how):
    """An operator (or the OOM killer) ending ``distml run`` itself leaves no worker training."""
    out = tmp_path / "run"
    cfg = write_config(tmp_path, "sync_sgd", steps=10**7, ckpt=0)
    with session(_run_cmd(cfg, out)) as p:
        wait_until(lambda: logged_steps(out), 90, "training", p)
        ranks = [wait_until(lambda r=r: rank_pid(out, r, p), 30, f"rank {r}'s pid", p) for r in (0, 1)]
        os.kill(p.pid, how)                 # the launcher only, not its process group
        p.wait(10)
        wait_until(lambda: all(_ended(pid) for pid in ranks), 15, "the workers to end")


@pytest.mark.parametrize("algo", ["sync_sgd", "ps", "gossip"])
def test_max_restarts_resumes_from_the_checkpoint_and_finishes(tmp_path, algo, uninterrupted):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, algo)
    with session(_run_cmd(cfg, out, "--max-restarts", "1")) as p:
        wait_until(lambda: committed_step(out), 90, "the first checkpoint", p)
        kill_rank(out, 1, p)
        err = _finish(p)
    assert p.returncode == 0, err[-3000:]
    lines = [ln for ln in err.splitlines() if "restart" in ln]
    assert len(lines) == 1, err[-3000:]
    m = re.fullmatch(r"distml: restart 1/1: rank 1: killed by SIGKILL; resuming from the "
                     r"checkpoint at step (\d+)", lines[0])
    assert m, lines[0]
    step = int(m.group(1))
    assert step % CKPT == 0 and 0 < step < STEPS
    s = summary(out)
    assert s["restarts"] == 1 and s["steps"] == STEPS
    assert s["restart_log"][0]["rank"] == 1 and s["restart_log"][0]["resumed_from_step"] == step
    assert logged_steps(out) == list(range(5, STEPS + 1, 5))     # no lost or repeated events
    ref = summary(uninterrupted(algo))
    assert ref["restarts"] == 0
    # the restart resumes the exact state, so "within noise" holds with room to spare
    assert abs(s["test_accuracy"] - ref["test_accuracy"]) <= 0.02, (s["test_accuracy"], ref["test_accuracy"])


def test_killed_parameter_server_is_detected_and_resumes_with_its_state(tmp_path, uninterrupted):
    out = tmp_path / "run"
    cfg = write_config(tmp_path, "ps")
    with session(_run_cmd(cfg, out)) as p:
        wait_until(lambda: committed_step(out), 90, "the first checkpoint", p)
        killed_at = kill_rank(out, 2, p)                  # ranks 0, 1 train; rank 2 serves
        err = _finish(p, timeout=60)
    assert p.returncode == 1 and "distml: error: rank 2: killed by SIGKILL" in err, err[-3000:]
    for rank in (0, 1):
        at, message = error_times(out, rank)[0]
        assert at - killed_at <= TIMEOUT_S + 2.5 and "parameter servers (ranks 2) failed" in message
        assert "dead peer: rank 2 killed by SIGKILL" in message

    step = committed_step(out)
    saved = torch.load(out / "checkpoints" / f"step{step:09d}-rank2.pt", weights_only=True)
    assert saved["clocks"] == {0: step, 1: step} and saved["applied"] == 2 * step
    assert saved["rule"]["state"], "the server's optimizer state (momentum) was not saved"
    res = distml("run", "--resume", "--out", str(out), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    s = summary(out)
    # every push of both workers applied exactly once across the crash
    assert s["ps"]["pushes_applied"] == [2 * STEPS] and s["steps"] == STEPS
    # parameters, momentum and clocks came back: the model is the uninterrupted run's
    ref = uninterrupted("ps")
    a = torch.load(out / "model.pt", weights_only=True)
    b = torch.load(ref / "model.pt", weights_only=True)
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
