"""The transport over 2 real processes (started by `distml launch`): results, bytes, failures."""

import json
from pathlib import Path

import pytest

from procs import distml

HERE = Path(__file__).parent
pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(120)]


def _results(prefix: Path, world: int = 2):
    return [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(world)]


def test_collectives_p2p_and_byte_counts(tmp_path):
    out = tmp_path / "ops"
    res = distml("launch", "-n", "2", str(HERE / "transport_world.py"), "ops", str(out), timeout=90)
    assert res.returncode == 0, res.stderr
    r0, r1 = _results(out)
    for r in (r0, r1):
        assert r["sum"] == 3.0 and r["avg"] == 1.5
        assert r["bcast"] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert r["gather"] == [0.0, 1.0]
    assert r0["sender"] == 1 and r0["recv"] == 42.0       # any-source receive names the sender
    ops0, ops1 = r0["stats"]["ops"], r1["stats"]["ops"]
    # all_reduce input: 1000 + 10 float32 values, counted on both ranks
    assert ops0["all_reduce"]["bytes_sent"] == 4040 and ops1["all_reduce"]["bytes_sent"] == 4040
    assert ops0["broadcast"]["bytes_sent"] == 20 and ops1["broadcast"]["bytes_received"] == 20
    assert ops1["send"]["bytes_sent"] == 4 and ops0["recv"]["bytes_received"] == 4
    assert ops0["all_gather"]["bytes_received"] == 4
    assert r0["stats"]["comm_seconds"] > 0
    # the hang-report ring buffer saw every op, in order, each finished (runtime/hang.py)
    log0, log1 = r0["oplog"], r1["oplog"]
    assert log0["running"] == [] and log1["running"] == []
    assert [(o["op"], o["seq"]) for o in log0["records"]] == [
        ("all_reduce", 1), ("all_reduce", 2), ("broadcast", 1), ("all_gather", 1),
        ("recv", 1), ("barrier", 1)]
    assert log0["last_finished"]["all_reduce"] == log1["last_finished"]["all_reduce"] == 2
    send = [o for o in log1["records"] if o["op"] == "send"][0]
    recv = [o for o in log0["records"] if o["op"] == "recv"][0]
    assert send["peer"] == 0 and send["bytes"] == 4 and recv["peer"] is None


def test_dead_peer_raises_within_timeout(tmp_path):
    out = tmp_path / "dies"
    res = distml("launch", "-n", "2", "--timeout", "10", str(HERE / "transport_world.py"),
                 "peer_dies", str(out), "5", timeout=90)
    assert res.returncode == 3                       # the first failure's exit code
    r0 = json.loads(Path(f"{out}.rank0.json").read_text())
    assert r0["error"] is not None and "all_reduce failed" in r0["error"]
    assert r0["seconds"] < 5 + 5                      # within the transport timeout (+ slack)


def test_one_rank_sends_and_counts_nothing():
    """A world of one (no process group): every collective is local and counts no bytes
    (issue 14, point 7; all_reduce used to count its tensor twice)."""
    import torch

    from distml.comm.transport import Transport
    t = Transport(0, 1)
    x = torch.arange(4.0)
    assert t.all_reduce(x.clone(), op="sum").equal(x)
    assert t.all_reduce(x.clone(), async_op=True).wait().equal(x)
    assert t.broadcast(x.clone()).equal(x)
    assert t.broadcast(x.clone(), async_op=True).wait().equal(x)
    assert t.all_gather(x)[0].equal(x)
    t.barrier()
    assert t.stats.bytes_sent == t.stats.bytes_received == 0
    assert t.stats.messages == 0
