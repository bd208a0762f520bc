"""distml never unpickles its own files, its parameter-server / gossip wire carries tensors
only, and a local run listens on 127.0.0.1 only.

tests/runtime/test_run_lifecycle.py::test_local_run_listens_only_on_loopback checks the
sockets of ``distml run``; the test here checks ``distml launch`` (a user's own script).
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import pickle
import sys
import time
from pathlib import Path

import pytest
import torch

from distml.cli import main
from distml.config import parse_config
from distml.runtime.checkpoint import Checkpoints
from procs import REPO, distml, session

pytestmark = pytest.mark.timeout(60)

CONFIG = {"name": "sec", "workers": 1, "data": {"source": {"name": "sklearn", "dataset": "iris"},
                                                 "batch_size": 8},
          "model": {"name": "softmax"}, "optim": {"name": "sgd", "lr": 0.1},
          "train": {"max_steps": 6, "checkpoint_every": 2, "progress": False}}
REFUSED = "holds objects other than tensors and plain containers; refusing to unpickle it"


class Payload:
    """Unpickling this runs ``touch MARKER`` (what a tampered checkpoint could do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious_state(marker: Path) -> dict:
    return {"model": {"lin.weight": torch.zeros(3, 4)}, "optimizer": Payload(marker), "step": 2}


def test_the_payload_is_live(tmp_path):
    """Without weights_only the payload runs: the refusals below are not vacuous."""
    torch.save(malicious_state(tmp_path / "ran"), tmp_path / "x.pt")
    torch.load(tmp_path / "x.pt", weights_only=False)
    assert (tmp_path / "ran").exists()


def run_dir(tmp_path: Path) -> Path:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(parse_config(CONFIG).to_dict()))
    return out


@pytest.mark.multiprocess
@pytest.mark.timeout(90)
def test_malicious_checkpoint_is_refused_on_resume(tmp_path):
    out, marker = run_dir(tmp_path), tmp_path / "pwned"
    ck = Checkpoints(out / "checkpoints", 0)
    ck.write(2, malicious_state(marker))    # distml's own writer: the checksum matches, the content is bad
    ck.commit(2, 1)
    res = distml("run", "--resume", "--out", str(out), timeout=80)
    assert res.returncode == 2, res.stderr[-3000:]
    first = res.stderr.splitlines()[0]
    assert first.startswith("distml: error: rank 0: ") and REFUSED in first, res.stderr
    assert not marker.exists(), "the checkpoint's payload ran"


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


@pytest.mark.parametrize("fmt", ["torch.save", "raw pickle"])
def test_malicious_model_is_refused_by_evaluate(tmp_path, fmt):
    out, marker = run_dir(tmp_path), tmp_path / "pwned"
    state = malicious_state(marker)
    if fmt == "torch.save":
        torch.save(state, out / "model.pt")
    else:
        (out / "model.pt").write_bytes(pickle.dumps(state))
    rc, err = cli("evaluate", str(out))
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1 and REFUSED in lines[0], err
    assert not marker.exists(), "model.pt's payload ran"


# ---- the wire -------------------------------------------------------------------------------
WIRE = ["comm/ps", "algorithms/ps.py", "algorithms/gossip.py", "algorithms/admm_async.py"]


def test_ps_and_gossip_wire_carries_tensors_only():
    """docs/design.md §4: no pickle on the wire. No module of the parameter server or gossip imports
    a serializer or calls torch's ``*_object*`` collectives (which pickle)."""
    src = REPO / "src" / "distml"
    files = [f for w in WIRE for f in ((src / w).rglob("*.py") if (src / w).is_dir() else [src / w])
             if f.exists()]
    assert len(files) >= 3, files
    bad = []
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [a.name for a in node.names]
            if any(n.split(".")[0] in ("pickle", "cPickle", "dill", "marshal", "shelve") for n in names):
                bad.append(f"{f.name}:{node.lineno} imports {names}")
            if isinstance(node, ast.Attribute) and "_object" in node.attr:
                bad.append(f"{f.name}:{node.lineno} uses {node.attr}")
    assert not bad, bad


TORCH_OBJECT_COLLECTIVES = {"all_gather_object", "gather_object", "broadcast_object_list",
                            "scatter_object_list", "send_object_list", "recv_object_list"}


def test_no_rank_unpickles_what_a_peer_sent():
    """Metadata between ranks (final totals, the resume step) travels as JSON in a byte
    tensor (``Transport.all_gather_json``), never through torch's pickling collectives."""
    uses = [f"{f.relative_to(REPO)}:{node.lineno}"
            for f in (REPO / "src" / "distml").rglob("*.py")
            for node in ast.walk(ast.parse(f.read_text()))
            if isinstance(node, ast.Attribute) and node.attr in TORCH_OBJECT_COLLECTIVES]
    assert not uses, uses


# ---- listeners of `distml launch` --------------------------------------------------------------
SCRIPT = """
import os, sys, time
from pathlib import Path
import distml
t = distml.init(timeout_s=30)
t.barrier()
folder = Path(sys.argv[1])
(folder / f"ready{t.rank}").write_text(str(os.getpid()))
deadline = time.monotonic() + 50
while not (folder / "go").exists() and time.monotonic() < deadline:
    time.sleep(0.05)
t.barrier()
t.close()
"""
LOOPBACK = ("0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F")


def listening(pgid: int) -> list[str]:
    """``addr:port`` (hex, as /proc/net/tcp writes them) of every socket the group listens on."""
    inodes = set()
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.getpgid(int(d)) != pgid:
                continue
            for fd in os.listdir(f"/proc/{d}/fd"):
                target = os.readlink(f"/proc/{d}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except (ProcessLookupError, FileNotFoundError, PermissionError):
            continue
    return [parts[1] for table in ("/proc/net/tcp", "/proc/net/tcp6")
            for parts in (line.split() for line in Path(table).read_text().splitlines()[1:])
            if parts[3] == "0A" and parts[9] in inodes]          # 0A = LISTEN


@pytest.mark.multiprocess
@pytest.mark.timeout(90)
def test_distml_launch_listens_only_on_loopback(tmp_path):
    (tmp_path / "s.py").write_text(SCRIPT)
    cmd = [sys.executable, "-m", "distml", "launch", "-n", "2", str(tmp_path / "s.py"), str(tmp_path)]
    with session(cmd) as p:
        deadline = time.monotonic() + 60
        while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
            assert p.poll() is None and time.monotonic() < deadline, p.stderr.read()[-3000:]
            time.sleep(0.1)
        addrs = listening(p.pid)
        (tmp_path / "go").write_text("")
        _, err = p.communicate(timeout=30)
        assert p.returncode == 0, err[-3000:]
    assert addrs, "found no listening socket at all (the check would be vacuous)"
    bad = [a for a in addrs if a.split(":")[0] not in LOOPBACK]
    assert not bad, f"listening beyond loopback: {bad}"
