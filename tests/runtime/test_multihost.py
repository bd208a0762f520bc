"""Two hosts (network namespaces), one rank each, a real torchrun job across them."""

import json
import os
import subprocess
import sys
import time

import pytest

from netns import can_make_namespaces, hosts
from procs import group_alive

pytestmark = [pytest.mark.multiprocess, pytest.mark.netns, pytest.mark.timeout(240)]

CONFIG = """
name = "twohosts"
seed = 0
workers = 2
[data]
source = { name = "sklearn", dataset = "digits" }
batch_size = 32
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 0.1
[train]
epochs = 3
progress = false
[comm]
timeout_s = 60
"""


def test_torchrun_across_two_namespace_hosts(tmp_path):
    reason = can_make_namespaces()
    if reason:
        pytest.skip(reason)
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    procs = []
    with hosts(2) as hs:
        master = hs[0][1]
        try:
            for node, (ns, addr, iface) in enumerate(hs):
                env = dict(os.environ, GLOO_SOCKET_IFNAME=iface, PYTHONUNBUFFERED="1")
                cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "torch.distributed.run",
                       "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(node),
                       "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master}:29511",
                       "--rdzv-id", "distmltest", "--max-restarts", "0",
                       # every namespace shares the machine's hostname: say who hosts the store
                       "--rdzv-conf", f"is_host={1 if node == 0 else 0}", "--local-addr", addr,
                       "-m", "distml", "run", str(cfg), "--out", str(tmp_path / f"host{node}")]
                procs.append(subprocess.Popen(cmd, env=env, start_new_session=True, cwd=tmp_path,
                                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                              text=True))
                time.sleep(0.5)          # the first host hosts the rendezvous store
            outs = [p.communicate(timeout=180)[0] for p in procs]
        finally:
            for p in procs:
                try:
                    os.killpg(p.pid, 9)
                except ProcessLookupError:
                    pass
                p.wait(10)
    for p, out in zip(procs, outs):
        assert p.returncode == 0, "\n=====\n".join(o[-2500:] for o in outs)
        assert not group_alive(p.pid)
    summary = json.loads((tmp_path / "host0" / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["backend"] == "gloo"
    assert summary["test_accuracy"] > 0.85
    assert summary["bytes_sent"] > 0 and summary["per_rank"][1]["bytes_sent"] > 0
    assert (tmp_path / "host1" / "logs" / "rank1.log").exists()
    assert not (tmp_path / "host1" / "summary.json").exists()
