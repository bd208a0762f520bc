"""The test bed's pieces for many-host runs: links capped both ways, rates changed in
place, one rank per host started by env:// and cleaned up however it ends."""

import subprocess

import pytest

from distml.runtime.testbed import can_make_namespaces, hosts, namespaces, run_ranks, set_rate

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]


@pytest.fixture(autouse=True)
def _root_only():
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)


def _qdisc(ns: str, iface: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", iface],
                          capture_output=True, text=True).stdout


def test_both_ways_caps_the_bridge_port_and_set_rate_changes_or_lifts_it():
    with hosts(2, rate="40mbit", tag="tbs1", both_ways=True) as hs:
        assert "40Mbit" in _qdisc(hs[1].ns, "eth0") and "40Mbit" in _qdisc("dmlbrtbs1", "b1tbs1")
        set_rate(hs, "80mbit", both_ways=True)
        assert "80Mbit" in _qdisc(hs[0].ns, "eth0") and "80Mbit" in _qdisc("dmlbrtbs1", "b0tbs1")
        set_rate(hs, None)
        assert "tbf" not in _qdisc(hs[0].ns, "eth0") + _qdisc("dmlbrtbs1", "b0tbs1")
    assert namespaces("tbs1") == []


def test_run_ranks_gives_each_host_its_rank_and_ends_every_process():
    probe = ("import os, socket; print(os.environ['RANK'], os.environ['WORLD_SIZE'], "
             "os.environ['MASTER_ADDR'], os.environ['GLOO_SOCKET_IFNAME'])")
    with hosts(3, tag="tbs2") as hs:
        logs = run_ranks(hs, ["-c", probe], timeout=30)
        assert [line.split() for line in logs] == [[str(r), "3", hs[0].addr, "eth0"] for r in range(3)]
        with pytest.raises(RuntimeError, match=r"ranks \[1\] .* failed"):
            run_ranks(hs, ["-c", "import os, sys, time; r = os.environ['RANK']; "
                                 "sys.exit(3) if r == '1' else time.sleep(0.2)"], timeout=30)
        with pytest.raises(RuntimeError, match="timed out"):
            run_ranks(hs[:2], ["-c", "import time; time.sleep(60)"], timeout=2)
        for h in hs:         # nothing outlived the runs
            assert subprocess.run(["ip", "netns", "pids", h.ns], capture_output=True,
                                  text=True).stdout.strip() == ""
