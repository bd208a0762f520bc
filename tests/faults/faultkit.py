"""What the fault tests share: a small run, waiting on its folder, and the pids of its ranks.

A run is killed from outside, as an operator or the kernel's OOM killer would: the
test reads the rank's pid from its log, checks that the process is a descendant of
the launcher it started (so only processes it started are ever signalled), and sends
SIGKILL.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import time
from pathlib import Path

CONFIG = """
name = "faults"
seed = 1
workers = 2
[data]
# synthetic: no scikit-learn import in every process (most of a tiny run is start-up)
source = {{ name = "synthetic", kind = "gaussian_mixture", n_train = 2000, n_test = 500, dim = 16, num_classes = 4, noise = 2.0 }}
partition = {{ name = "shuffle_split", reshuffle = "global" }}
batch_size = 16
[model]
name = "mlp"
hidden = [32]
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
[algorithm]
name = "{algorithm}"
[comm]
timeout_s = {timeout}
[train]
epochs = 1000
max_steps = {steps}
eval_every = 100000
checkpoint_every = {ckpt}
log_every = 5
progress = false
[faults]
compute_s = {compute}
"""

TIMEOUT_S = 6          # [comm] timeout_s of every fault test
STEPS = 80             # a finishing run: 80 steps padded to 30 ms each, checkpoints every 20
CKPT = 20


def write_config(folder: Path, algorithm: str, steps: int = STEPS, ckpt: int = CKPT,
                 timeout: float = TIMEOUT_S, compute: float = 0.03, name: str | None = None) -> Path:
    path = Path(folder) / f"{name or algorithm}.toml"
    path.write_text(CONFIG.format(algorithm=algorithm, steps=steps, ckpt=ckpt, timeout=timeout,
                                  compute=compute))
    return path


def wait_until(cond, timeout: float, what: str, proc=None, poll: float = 0.05):
    """Poll ``cond()`` until it returns something truthy; fail if ``proc`` ends first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = cond()
        if got:
            return got
        if proc is not None and proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}:\n{err[-3000:]}")
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def committed_step(out: Path) -> int | None:
    try:
        return int(json.loads((Path(out) / "checkpoints" / "latest.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        return None


def logged_steps(out: Path, rank: int = 0) -> list[int]:
    path = Path(out) / f"events-rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc/<pid>/task/*/children; no psutil)."""
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                kids = [int(k) for k in (task / "children").read_text().split()]
            except (OSError, ValueError):
                continue
            for k in kids:
                if k not in out:
                    out.add(k)
                    todo.append(k)
    return out


def rank_pid(out: Path, rank: int, launcher) -> int | None:
    """The pid rank ``rank`` logged at start-up, if it is a live descendant of ``launcher``."""
    log = Path(out) / "logs" / f"rank{rank}.log"
    if not log.exists():
        return None
    pids = [int(line.split("starting: pid ")[1].split(",")[0])
            for line in log.read_text().splitlines() if "starting: pid" in line]
    if not pids or pids[-1] not in descendants(launcher.pid):
        return None
    return pids[-1]


def kill_rank(out: Path, rank: int, launcher) -> float:
    """SIGKILL rank ``rank`` of the run started as ``launcher``; returns the wall time of the kill."""
    # a descendant of the launcher this test started (torchrun's agent puts its workers in
    # sessions of their own, so the process group alone would not tell)
    pid = wait_until(lambda: rank_pid(out, rank, launcher), 60, f"rank {rank}'s pid", launcher)
    now = time.time()
    os.kill(pid, signal.SIGKILL)
    return now


def error_times(out: Path, rank: int) -> list[tuple[float, str]]:
    """(wall time, message) of every ERROR line in rank ``rank``'s log."""
    log = Path(out) / "logs" / f"rank{rank}.log"
    found = []
    for line in log.read_text().splitlines() if log.exists() else []:
        if f" rank{rank} ERROR " in line:
            stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            found.append((stamp.timestamp(), line.split(" ERROR ", 1)[1]))
    return found


def summary(out: Path) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())

