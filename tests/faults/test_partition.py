"""Network partitions between two namespace hosts, one torchrun agent and one rank each.

The cable of host 1 is unplugged at the bridge (``set_link``: its packets are dropped,
nothing is reset), as a failed switch port would:

- back within the timeout, training continues; later a rank is SIGKILLed and
  ``torchrun --max-restarts 1`` restarts both hosts' workers, which continue from rank
  0's committed checkpoint although host 1's run folder has no marker of its own;
- down for longer than ``[comm] timeout_s``, each rank fails with a clear error
  within the timeout and both agents exit: no hang.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from contextlib import ExitStack

import pytest
from faultkit import committed_step, error_times, kill_rank, logged_steps, summary, wait_until, write_config

from netns import can_make_namespaces, hosts, set_link
from procs import group_alive, session

pytestmark = [pytest.mark.multiprocess, pytest.mark.netns, pytest.mark.timeout(150)]


@pytest.fixture
def testbed():
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    tag = "f" + uuid.uuid4().hex[:6]
    with hosts(2, tag=tag) as hs:
        yield tag, hs


def _torchrun(stack: ExitStack, hs, cfg, tmp_path, max_restarts: int, port: int) -> list:
    """Start one agent per host; their process groups are killed when ``stack`` closes."""
    master = hs[0].addr
    procs = []
    for node, (ns, addr, iface) in enumerate(hs):
        # TORCH_DISABLE_SHARE_RDZV_TCP_STORE: restarted workers must not see the keys of the
        # previous attempt in the agent's store (pytorch issue #135712); docs/faults.md
        env = dict(os.environ, GLOO_SOCKET_IFNAME=iface, PYTHONUNBUFFERED="1",
                   TORCH_DISABLE_SHARE_RDZV_TCP_STORE="1")
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run",
               "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master}:{port}",
               "--rdzv-id", f"faults{port}", "--max-restarts", str(max_restarts),
               "--rdzv-conf", f"is_host={1 if node == 0 else 0}", "--local-addr", addr,
               "-m", "distml", "run", str(cfg), "--out", str(tmp_path / f"host{node}")]
        procs.append(stack.enter_context(session(cmd, cwd=tmp_path, env=env)))
        time.sleep(0.5)          # the first host serves the rendezvous
    return procs


def _wait_all(procs, timeout: float) -> list[str]:
    outs = [p.communicate(timeout=timeout)[1] for p in procs]
    for p in procs:
        deadline = time.monotonic() + 10
        while group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not group_alive(p.pid), "an agent's processes outlived it"
    return outs


def test_short_partition_is_ridden_out_and_a_killed_rank_restarts_from_rank0s_checkpoint(
        tmp_path, testbed):
    tag, hs = testbed
    steps = 200
    cfg = write_config(tmp_path, "sync_sgd", steps=steps, ckpt=40, timeout=10)
    out0, out1 = tmp_path / "host0", tmp_path / "host1"
    with ExitStack() as stack:
        procs = _torchrun(stack, hs, cfg, tmp_path, max_restarts=1, port=29521)
        wait_until(lambda: max(logged_steps(out0), default=0) >= 20, 90, "training", procs[0])
        set_link(tag, 1, up=False)
        time.sleep(2.0)                      # well within the 10 s timeout
        set_link(tag, 1, up=True)
        wait_until(lambda: (committed_step(out0) or 0) >= 80, 60, "a checkpoint after the partition",
                   procs[0])
        kill_rank(out1, 1, procs[1])
        errs = _wait_all(procs, timeout=120)
    assert [p.returncode for p in procs] == [0, 0], "\n=====\n".join(e[-2500:] for e in errs)
    s = summary(out0)
    assert s["steps"] == steps and s["restarts"] >= 1 and s["test_accuracy"] > 0.6
    events = [json.loads(x) for x in (out0 / "events-rank0.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events] == list(range(5, steps + 1, 5))
    # the partition stalled training (events are 0.15 s apart otherwise) and it went on
    walls = [e["wall_seconds"] for e in events]
    assert max(b - a for a, b in zip(walls, walls[1:])) >= 1.5
    # host 1 keeps its rank's files but no marker: it resumed at the step rank 0 committed
    assert not (out1 / "checkpoints" / "latest.json").exists()
    log1 = (out1 / "logs" / "rank1.log").read_text()
    assert "resuming from rank 0's checkpoint at step" in log1, log1[-2000:]


def test_long_partition_ends_every_rank_with_a_clear_error(tmp_path, testbed):
    tag, hs = testbed
    timeout = 6
    cfg = write_config(tmp_path, "sync_sgd", steps=10**7, ckpt=0, timeout=timeout)
    out0, out1 = tmp_path / "host0", tmp_path / "host1"
    with ExitStack() as stack:
        procs = _torchrun(stack, hs, cfg, tmp_path, max_restarts=0, port=29522)
        wait_until(lambda: logged_steps(out0) and logged_steps(out1, rank=1), 90, "training", procs[0])
        cut = time.time()
        set_link(tag, 1, up=False)
        # both ranks must give up on their own; the agents then need the link to wind down
        wait_until(lambda: error_times(out0, 0) and error_times(out1, 1), timeout + 20,
                   "both ranks to report the partition")
        set_link(tag, 1, up=True)
        errs = _wait_all(procs, timeout=60)
        ended = time.time()
    assert all(p.returncode != 0 for p in procs)
    for out, rank in ((out0, 0), (out1, 1)):
        at, message = error_times(out, rank)[0]
        assert at - cut <= timeout + 3, (rank, at - cut, message)
        assert f"did not answer within {timeout} s" in message, message
    assert ended - cut < timeout + 45, errs
