"""End-to-end runs through the CLI: results folder, resume, dead peers, sockets, bad input."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

from procs import distml, group_alive, session

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

SMALL = """
name = "small"
seed = 1
workers = 2
[data]
source = {{ name = "sklearn", dataset = "digits" }}
batch_size = 16
[model]
name = "mlp"
hidden = [32]
dropout = 0.1
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
schedule = {{ name = "cosine", warmup_steps = 5 }}
[train]
max_steps = {steps}
eval_every = 10
checkpoint_every = {ckpt}
progress = false
target_accuracy = 0.5
"""


def small(tmp_path, steps=40, ckpt=10, name="c.toml"):
    p = tmp_path / name
    p.write_text(SMALL.format(steps=steps, ckpt=ckpt))
    return p


def test_results_folder_and_evaluate(tmp_path):
    cfg = small(tmp_path)
    out = tmp_path / "run"
    res = distml("run", str(cfg), "--out", str(out), "--json", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    for key in ("test_accuracy", "test_loss", "train_loss", "steps", "wall_seconds", "bytes_sent",
                "bytes_received", "compute_seconds", "comm_seconds", "wait_seconds",
                "time_to_target", "algorithm", "workers"):
        assert key in summary
    assert summary["steps"] == 40 and summary["workers"] == 2 and summary["algorithm"] == "sync_sgd"
    assert summary["test_accuracy"] > 0.5 and summary["time_to_target"] is not None
    n_params = 64 * 32 + 32 + 32 * 10 + 10
    # every step each worker all-reduces its gradients once (float32), plus the initial broadcast
    assert summary["bytes_sent"] >= 2 * 40 * 4 * n_params
    assert summary["bytes_sent"] < 2 * 42 * 4 * n_params
    for f in ("config.json", "model.pt", "eval.jsonl", "events-rank0.jsonl", "events-rank1.jsonl",
              "logs/rank0.log", "logs/rank1.log"):
        assert (out / f).exists(), f
    events = [json.loads(x) for x in (out / "events-rank1.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == [10, 20, 30, 40]
    assert all(e["bytes_sent"] > 0 and e["compute_seconds"] > 0 for e in events)
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [0, 10, 20, 30, 40]
    ev = distml("evaluate", str(out), timeout=60)
    assert ev.returncode == 0, ev.stderr
    assert abs(json.loads(ev.stdout)["test_accuracy"] - summary["test_accuracy"]) < 1e-9


def test_resume_equals_uninterrupted(tmp_path):
    cfg = small(tmp_path)
    full, part = tmp_path / "full", tmp_path / "part"
    assert distml("run", str(cfg), "--out", str(full), timeout=120).returncode == 0
    res = distml("run", str(cfg), "--out", str(part), "--stop-after", "20", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (part / "summary.json").exists()
    assert json.loads((part / "checkpoints" / "latest.json").read_text())["step"] == 20
    res = distml("run", str(cfg), "--out", str(part), "--resume", timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(part / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed model differs from the uninterrupted one"
    sa = json.loads((full / "summary.json").read_text())
    sb = json.loads((part / "summary.json").read_text())
    assert sa["steps"] == sb["steps"] == 40
    assert sa["test_loss"] == sb["test_loss"] and sa["bytes_sent"] == sb["bytes_sent"]
    steps = [json.loads(x)["step"] for x in (part / "events-rank0.jsonl").read_text().splitlines()]
    assert steps == [10, 20, 30, 40]                 # no duplicated or lost events


def test_truncated_checkpoint_is_reported(tmp_path):
    cfg = small(tmp_path)
    part = tmp_path / "part"
    assert distml("run", str(cfg), "--out", str(part), "--stop-after", "20", timeout=120).returncode == 0
    f = next((part / "checkpoints").glob("step000000020-rank1.pt"))
    f.write_bytes(f.read_bytes()[:100])
    res = distml("run", str(cfg), "--out", str(part), "--resume", timeout=120)
    assert res.returncode == 2
    assert "truncated or corrupt" in res.stderr and "rank 1" in res.stderr


def _pid_of_rank(out: Path, rank: int, timeout: float = 60) -> int:
    log = out / "logs" / f"rank{rank}.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and (out / f"events-rank{rank}.jsonl").exists() and \
                (out / f"events-rank{rank}.jsonl").read_text().strip():
            for line in log.read_text().splitlines():
                if "starting: pid" in line:
                    return int(line.split("starting: pid ")[1].split(",")[0])
        time.sleep(0.2)
    raise AssertionError("rank never started training")


def test_killed_worker_stops_the_run_within_timeout(tmp_path):
    cfg = small(tmp_path, steps=100000, ckpt=0)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distml", "run", str(cfg), "--out", str(out),
           "--set", "comm.timeout_s=10", "--set", "train.log_every=1",
           "--set", "train.epochs=1000"]     # still training when the kill comes
    with session(cmd) as p:
        pid = _pid_of_rank(out, 1)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        _, err = p.communicate(timeout=60)
        elapsed = time.monotonic() - t0
        assert p.returncode == 1
        assert "rank 1" in err and "SIGKILL" in err, err
        assert elapsed < 10 + 15
        # the survivor noticed by itself and names the dead rank (tests/faults: ps, gossip)
        log0 = (out / "logs" / "rank0.log").read_text()
        assert "dead peer: rank 1 killed by SIGKILL" in log0, log0[-2000:]
        deadline = time.monotonic() + 10
        while group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(p.pid), "worker processes outlived the launcher"


def _listening_sockets(pids: set[int]) -> list[str]:
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (FileNotFoundError, PermissionError):
            continue
    addrs = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:    # 0A = LISTEN
                addrs.append(parts[1])
    return addrs


def _group_pids(pgid: int) -> set[int]:
    out = set()
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                if os.getpgid(int(d)) == pgid:
                    out.add(int(d))
            except ProcessLookupError:
                pass
    return out


def test_local_run_listens_only_on_loopback(tmp_path):
    cfg = small(tmp_path, steps=100000, ckpt=0)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "distml", "run", str(cfg), "--out", str(out), "--set", "train.log_every=1"]
    with session(cmd) as p:
        _pid_of_rank(out, 1)
        addrs = _listening_sockets(_group_pids(p.pid))
    assert addrs, "found no listening socket at all (the check would be vacuous)"
    loopback4 = "0100007F"                       # 127.0.0.1 in /proc/net/tcp byte order
    loopback6 = "00000000000000000000000001000000"
    bad = [a for a in addrs if a.split(":")[0] not in (loopback4, loopback6)
           and not a.split(":")[0].endswith("0100007F")]
    assert not bad, f"listening beyond loopback: {bad}"


@pytest.mark.parametrize("override,message", [
    ("model.name='nope'", "unknown model 'nope'; registered:"),
    ("optim.lr=-1", "lr"),
    ("data.source.dataset='nope'", "nope"),
    ("train.epocs=1", "unknown key 'train.epocs'"),
    ("workers=5000", "workers"),
    ("algorithm.sync_batchnorm=true", "sync_batchnorm needs CUDA"),
])
def test_bad_input_is_one_line_exit_2(tmp_path, override, message):
    cfg = small(tmp_path)
    res = distml("run", str(cfg), "--dry-run", "--set", override, timeout=60)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("distml: error:") and message in lines[0], res.stderr


def test_missing_data_file_says_how_to_get_it(tmp_path):
    cfg = small(tmp_path)
    res = distml("run", str(cfg), "--dry-run", "--set", "data.source={name='fashion_mnist', path='/nonexistent'}",
                 timeout=60)
    assert res.returncode == 2 and "apt-get install dataset-fashion-mnist" in res.stderr


def test_more_workers_than_samples(tmp_path):
    cfg = small(tmp_path)
    res = distml("run", str(cfg), "--dry-run", "--set", "workers=1000", timeout=60)
    assert res.returncode == 2 and "workers" in res.stderr and len(res.stderr.strip().splitlines()) == 1


def test_dry_run_prints_plan(tmp_path):
    cfg = small(tmp_path)
    res = distml("run", str(cfg), "--dry-run", "--json", timeout=60)
    assert res.returncode == 0, res.stderr
    plan = json.loads(res.stdout)
    assert [s["rank"] for s in plan["shards"]] == [0, 1]
    assert plan["algorithm"]["algorithm"] == "sync_sgd" and plan["total_steps"] == 40
    assert not (tmp_path / "runs").exists()
