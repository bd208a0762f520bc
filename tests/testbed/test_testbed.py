"""The slow-network test bed: the rate limit is real, and nothing outlives the test bed."""

import json
import subprocess
import sys
import time

import pytest

from procs import REPO
from distml.runtime.testbed import can_make_namespaces, hosts, namespaces

pytestmark = [pytest.mark.netns, pytest.mark.timeout(120)]

SERVER = """
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], 29600)); s.listen(1); print("ready", flush=True)
c, _ = s.accept(); n = 0; t0 = None
while True:
    b = c.recv(1 << 16)
    if not b:
        break
    if t0 is None:
        t0 = time.perf_counter()
    n += len(b)
print(n, time.perf_counter() - t0, flush=True)
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 29600), timeout=30)
c.sendall(b"x" * int(sys.argv[2])); c.close()
"""


def _throughput(hs, nbytes: int) -> float:
    """Bytes per second from host 0 to host 1 over one TCP stream."""
    (ns0, _, _), (ns1, addr1, _) = hs
    server = subprocess.Popen(["ip", "netns", "exec", ns1, sys.executable, "-c", SERVER, addr1],
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert server.stdout.readline().strip() == "ready"
        subprocess.run(["ip", "netns", "exec", ns0, sys.executable, "-c", CLIENT, addr1, str(nbytes)],
                       check=True, timeout=60)
        got, seconds = server.stdout.readline().split()
        assert int(got) == nbytes
        return nbytes / float(seconds)
    finally:
        server.kill()
        server.wait(10)


@pytest.fixture(autouse=True)
def _root_only():
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)


def test_rate_limit_is_real_and_everything_is_deleted():
    rate_bits = 40e6
    with hosts(2, rate="40mbit", tag="tbt1") as hs:
        assert namespaces("tbt1") == ["dmlh0tbt1", "dmlh1tbt1", "dmlbrtbt1"]
        qdisc = subprocess.run(["ip", "netns", "exec", hs[0].ns, "tc", "qdisc", "show", "dev", "eth0"],
                               capture_output=True, text=True).stdout
        assert "tbf" in qdisc and "40Mbit" in qdisc
        measured = _throughput(hs, 6_000_000) * 8
    # TCP payload over a 40 Mbit/s token bucket: headers take ~5 % (0.95 measured on an idle
    # machine); the margin below is for a loaded one
    assert 0.6 * rate_bits < measured < 1.05 * rate_bits, measured
    assert namespaces("tbt1") == []
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert "tbt1" not in links


def test_unlimited_links_are_much_faster_than_the_limit():
    with hosts(2, tag="tbt2") as hs:
        measured = _throughput(hs, 20_000_000) * 8
    assert measured > 200e6
    assert namespaces("tbt2") == []


def test_script_creates_and_deletes_the_test_bed():
    script = str(REPO / "scripts" / "testbed.sh")
    up = subprocess.run([script, "up", "--hosts", "2", "--rate", "100mbit", "--tag", "tbt3"],
                        capture_output=True, text=True, timeout=60)
    try:
        assert up.returncode == 0, up.stderr
        info = json.loads(up.stdout)
        assert [h["ns"] for h in info["hosts"]] == ["dmlh0tbt3", "dmlh1tbt3"]
        assert namespaces("tbt3") == ["dmlh0tbt3", "dmlh1tbt3", "dmlbrtbt3"]
        # a process left running inside is killed by `down`
        sleeper = subprocess.Popen(["ip", "netns", "exec", "dmlh0tbt3", "sleep", "60"],
                                   start_new_session=True)
        time.sleep(0.3)
    finally:
        down = subprocess.run([script, "down", "--tag", "tbt3"], capture_output=True, text=True,
                              timeout=60)
    assert down.returncode == 0 and json.loads(down.stdout)["deleted"]
    assert sleeper.wait(10) != 0
    assert namespaces("tbt3") == []
    bad = subprocess.run([script, "up", "--rate", "fast"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "rate must look like 100mbit" in bad.stderr


def test_sigterm_runs_the_cleanup_of_the_test_bed(tmp_path):
    """A bench stopped with SIGTERM still kills its ranks and deletes its namespaces:
    inside ``terminate_as_exit`` the signal raises SystemExit, so ``finally`` runs."""
    marker = tmp_path / "cleaned"
    script = (f"import os, signal\nfrom distml.runtime.testbed import terminate_as_exit\n"
              f"try:\n    with terminate_as_exit():\n        os.kill(os.getpid(), signal.SIGTERM)\n"
              f"        import time; time.sleep(30)\nfinally:\n    open({str(marker)!r}, 'w').close()\n"
              )
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                         timeout=60, env={"PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"})
    assert res.returncode == 128 + 15, res.stderr[-2000:]
    assert marker.exists()
