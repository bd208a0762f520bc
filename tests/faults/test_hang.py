"""A rank that stops inside a run: the hang report names who waits for whom (issue 18, part 3).

``[faults] hang = {rank = 1, step = 3}`` stops rank 1 for good before step 3, alive and
in no operation, so rank 0 waits in that step's all_reduce. Before the wait times out
(``comm.timeout_s``), the launcher prints one line naming the waiting rank, the
operation and its sequence number, and the stuck rank with the last such operation it
finished; every rank's log gets its Python stacks and ring buffer; ``distml doctor``
prints the same line from the logs afterwards. The same for an algorithm that drives
its own steps (``cocoa``).
"""

from __future__ import annotations

import re
import sys
import time

import pytest
from faultkit import write_config

from procs import REPO, distml, group_alive, session

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]

HANG_TIMEOUT_S = 4


def _hang_line(cmd: list[str]) -> str:
    """Run ``cmd`` (a run with a rank stopped by ``[faults] hang``) to its end; its hang line."""
    with session(cmd) as p:
        _, err = p.communicate(timeout=90)
        deadline = time.monotonic() + 10
        while group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(p.pid), "worker processes outlived the launcher"
    assert p.returncode == 1, err[-3000:]
    hang_lines = [line for line in err.splitlines() if line.startswith("distml: hang: ")]
    assert len(hang_lines) == 1, err[-3000:]
    # the run's error is the waiting rank's timeout, not the stuck rank the launcher ended
    assert re.search(r"distml: error: rank 0: .*all_reduce failed", err), err[-3000:]
    return hang_lines[0]


def test_stuck_rank_is_named_by_the_launcher_and_by_doctor(tmp_path):
    cfg = write_config(tmp_path, "sync_sgd", steps=200, ckpt=0, timeout=HANG_TIMEOUT_S, compute=0.01)
    cfg.write_text(cfg.read_text() + "hang = { rank = 1, step = 3 }\n")
    out = tmp_path / "run"
    hang_lines = [_hang_line([sys.executable, "-m", "distml", "run", str(cfg), "--out", str(out)])]
    m = re.search(r"rank 0 waits in all_reduce #(\d+) since ([\d.]+) s; "
                  r"rank 1 last finished all_reduce #(\d+) and is in no operation", hang_lines[0])
    assert m, hang_lines[0]
    waiting_seq, since, finished_seq = int(m[1]), float(m[2]), int(m[3])
    assert waiting_seq == finished_seq + 1        # rank 0 is one all_reduce ahead of rank 1
    assert finished_seq >= 3                      # steps 0, 1, 2 each reduced at least once
    assert 0.8 * HANG_TIMEOUT_S - 0.5 <= since < HANG_TIMEOUT_S + 1

    # the stacks: rank 1's main thread is in the injected stop, rank 0's in the wait
    log1 = (out / "logs" / "rank1.log").read_text()
    log0 = (out / "logs" / "rank0.log").read_text()
    assert "Python stacks of every thread" in log1 and "in begin" in log1, log1[-3000:]
    assert "Python stacks of every thread" in log0 and "in wait" in log0, log0[-3000:]

    doctor = distml("doctor", str(out), timeout=60)
    assert doctor.returncode == 0, doctor.stderr
    assert doctor.stdout.strip() == hang_lines[0].removeprefix("distml: ").split(" (stacks in ")[0]


def test_doctor_on_a_run_without_a_hang_says_so(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "rank0.log").write_text("2026-01-01 rank0 INFO starting\n")
    res = distml("doctor", str(tmp_path), timeout=60)
    assert res.returncode == 0 and "no hang report" in res.stdout, res.stdout + res.stderr
    res = distml("doctor", str(tmp_path / "nothing"), timeout=60)
    assert res.returncode == 2 and "not a run folder" in res.stderr, res.stderr


def test_a_hang_in_a_loop_an_algorithm_drives_itself(tmp_path):
    line = _hang_line([sys.executable, "-m", "distml", "run", str(REPO / "examples" / "cocoa.toml"),
                       "--out", str(tmp_path / "run"), "--set", f"comm.timeout_s={HANG_TIMEOUT_S}",
                       "--set", "faults.hang={rank=1,step=3}", "--set", "train.eval_every=1000"])
    m = re.search(r"rank 0 waits in all_reduce #(\d+) since [\d.]+ s; "
                  r"rank 1 last finished all_reduce #(\d+) and is in no operation", line)
    assert m and int(m[1]) == int(m[2]) + 1, line
