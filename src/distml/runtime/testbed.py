"""A slow-network test bed: hosts in network namespaces, joined by a bridge, rate-limited.

docs/design.md §6: as root, network namespaces joined by veth pairs and a bridge work; the
bridge lives in its own namespace, never in the root one; addresses exist only inside
the namespaces; bandwidth is limited with ``tc ... tbf`` on each host's interface
(netem is not in this kernel, so delay comes from the transport's ``latency_ms``).
Everything is deleted at the end, after the processes inside are gone.

Python: ``with hosts(2, rate="100mbit") as hs: ...`` yields ``Host(ns, addr, iface)``;
``set_link(tag, i, up=False)`` unplugs host ``i`` (a partition) until it is plugged back.
``both_ways=True`` caps each host's ingress too (its bridge port's egress), as a switch
port does: a server that many hosts send to then receives at the link rate, not at the
sum of their rates. :func:`run_ranks` starts one ``distml run`` rank per host (env://
rendezvous, no torchrun agent: half the processes) and cleans up however it ends;
``python -m distml.runtime.testbed cells FILE`` is such a rank that trains a list of
configs one after another in one world (a run costs its training, not a process start).
Shell (``scripts/testbed.sh`` wraps these)::

    python -m distml.runtime.testbed up --hosts 2 --rate 100mbit --tag tb1   # prints JSON
    python -m distml.runtime.testbed down --tag tb1
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple, Sequence


class Host(NamedTuple):
    ns: str          # the namespace: run commands with `ip netns exec NS ...`
    addr: str        # its IPv4 address on the bridge
    iface: str       # its interface (GLOO_SOCKET_IFNAME)


def can_make_namespaces() -> str | None:
    """None if namespaces can be made here, else the reason they cannot."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "iproute2 (`ip`) is not installed"
    probe = f"dmlprobe{uuid.uuid4().hex[:6]}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return f"cannot create a network namespace: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _check_rate(rate: str) -> str:
    if not re.fullmatch(r"\d+(\.\d+)?(bit|kbit|mbit|gbit)", rate):
        raise ValueError(f"rate must look like 100mbit (a number and bit|kbit|mbit|gbit), got {rate!r}")
    return rate


def limit(ns: str, iface: str, rate: str) -> None:
    """Cap ``iface``'s egress in ``ns`` at ``rate`` with a token bucket (tc tbf)."""
    subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "replace", "dev", iface, "root",
                    "tbf", "rate", _check_rate(rate), "burst", "32kbit", "latency", "50ms"],
                   check=True, capture_output=True, text=True)


def set_link(tag: str, host: int, up: bool) -> None:
    """Plug (``up``) or unplug host ``host``'s cable at the bridge of test bed ``tag``.

    Unplugged, the host's packets are dropped without a reset or an error on either side:
    a network partition, as when a switch port or a cable fails.
    """
    _ip("-n", f"dmlbr{tag}", "link", "set", f"b{host}{tag}", "up" if up else "down")


def namespaces(tag: str) -> list[str]:
    """The namespaces of the test bed ``tag`` that exist now (bridge last)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    mine = [n for n in names if re.fullmatch(rf"dmlh\d+{re.escape(tag)}", n)]
    return sorted(mine) + [n for n in names if n == f"dmlbr{tag}"]


def create(n: int, tag: str | None = None, subnet: str | None = None,
           rate: str | None = None, both_ways: bool = False) -> tuple[str, list[Host]]:
    """Create ``n`` hosts (and their bridge); returns ``(tag, hosts)``. On failure,
    what was made is deleted before the error propagates.

    Args:
        n: number of hosts (1..200).
        tag: a short name for the test bed (letters/digits, ≤ 8); random by default.
        subnet: the first three octets, e.g. "10.77.3"; derived from the tag by default.
        rate: per-host egress limit, e.g. "100mbit"; None leaves the links unlimited.
        both_ways: also cap each host's ingress at ``rate`` (the bridge port's egress).
    """
    if not 1 <= n <= 200:
        raise ValueError(f"n must be in [1, 200], got {n}")
    tag = tag or uuid.uuid4().hex[:6]
    if not re.fullmatch(r"[a-z0-9]{1,8}", tag):
        raise ValueError(f"tag must be 1-8 lowercase letters or digits, got {tag!r}")
    if rate is not None:
        _check_rate(rate)
    subnet = subnet or f"10.77.{int(uuid.uuid5(uuid.NAMESPACE_DNS, tag).hex[:4], 16) % 250 + 1}"
    bridge = f"dmlbr{tag}"
    out: list[Host] = []
    try:
        _ip("netns", "add", bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        _ip("-n", bridge, "link", "set", "lo", "up")
        for i in range(n):
            ns = f"dmlh{i}{tag}"
            _ip("netns", "add", ns)
            host_end, br_end = f"h{i}{tag}", f"b{i}{tag}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", br_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", br_end, "netns", bridge)
            _ip("-n", ns, "link", "set", host_end, "name", "eth0")
            addr = f"{subnet}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "set", br_end, "master", "br0")
            _ip("-n", bridge, "link", "set", br_end, "up")
            if rate is not None:
                limit(ns, "eth0", rate)
                if both_ways:
                    limit(bridge, br_end, rate)
            out.append(Host(ns, addr, "eth0"))
    except BaseException:
        destroy(tag)
        raise
    return tag, out


def destroy(tag: str) -> list[str]:
    """Kill what runs in the test bed's namespaces, then delete them; returns their names."""
    gone = namespaces(tag)
    for ns in gone:
        # processes still inside would keep the namespace's interfaces alive
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for pid in pids:
            try:
                os.kill(int(pid), 9)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    return gone


def set_rate(hs: Sequence[Host], rate: str | None, both_ways: bool = False) -> None:
    """Change every host's limit to ``rate`` (None: unlimited, both ways) on its test bed."""
    for i, h in enumerate(hs):
        tag = h.ns[len(f"dmlh{i}"):]          # hosts are named dmlh{i}{tag} by create()
        ports = [(h.ns, h.iface)] + ([(f"dmlbr{tag}", f"b{i}{tag}")] if both_ways or rate is None else [])
        for ns, iface in ports:
            if rate is None:
                subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", iface, "root"],
                               capture_output=True)
            else:
                limit(ns, iface, rate)


def run_ranks(hs: Sequence[Host], argv: Sequence[str], timeout: float,
              env: dict[str, str] | None = None) -> list[str]:
    """Run ``python ARGV`` as rank i on host i (e.g. ``-m distml run CFG --out DIR``); returns
    every rank's output.

    The ranks meet by env:// (rank 0's host serves the store, ``MASTER_ADDR`` is its
    address), gloo sends on the host's interface, one thread per rank; no torchrun agent,
    so a 16-host run is 16 processes. Every process (its whole session) is killed when
    the run ends, fails or times out.

    Raises:
        RuntimeError: a rank failed or the run timed out (with the end of the failed logs).
    """
    port = 29600 + int(uuid.uuid4().int % 300)
    procs: list[subprocess.Popen] = []
    logs: list[str] = []
    try:
        for rank, h in enumerate(hs):
            rank_env = dict(os.environ if env is None else env, RANK=str(rank), LOCAL_RANK="0",
                            WORLD_SIZE=str(len(hs)), LOCAL_WORLD_SIZE="1", MASTER_ADDR=hs[0].addr,
                            MASTER_PORT=str(port), GLOO_SOCKET_IFNAME=h.iface,
                            OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
            procs.append(subprocess.Popen(["ip", "netns", "exec", h.ns, sys.executable, *argv],
                                          env=rank_env, start_new_session=True, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
        deadline = time.monotonic() + timeout
        for p in procs:
            try:
                logs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic()))[0])
            except subprocess.TimeoutExpired:
                raise RuntimeError(f"{len(hs)} ranks of {' '.join(argv)}: timed out after {timeout:g} s") from None
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait(10)
    failed = [r for r, p in enumerate(procs) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"ranks {failed} of {' '.join(argv)} failed:\n" +
                           "\n=====\n".join(logs[r][-1500:] for r in failed[:3]))
    return logs


@contextmanager
def hosts(n: int, subnet: str | None = None, rate: str | None = None, tag: str | None = None,
          both_ways: bool = False):
    """Create ``n`` hosts for the ``with`` block; yields a list of :class:`Host`."""
    tag, made = create(n, tag=tag, subnet=subnet, rate=rate, both_ways=both_ways)
    try:
        with terminate_as_exit():
            yield made
    finally:
        destroy(tag)


@contextmanager
def terminate_as_exit():
    """While the block runs, SIGTERM and SIGHUP raise ``SystemExit`` in the main thread, so
    that ``finally`` blocks (killing ranks, deleting namespaces) run when a bench or test
    is stopped from outside; Python's default would end the process without them. The
    previous handlers come back afterwards; off the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum, _frame):
        raise SystemExit(128 + signum)

    before = {s: signal.signal(s, leave) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


def wire_bytes(iface: str | None = None) -> dict[str, int]:
    """Bytes this namespace's interface sent and received so far (Ethernet frames, as the
    kernel counts them: headers included): ``{"tx_bytes", "rx_bytes"}``."""
    iface = iface or os.environ.get("GLOO_SOCKET_IFNAME", "eth0")
    stats = Path("/sys/class/net") / iface / "statistics"
    return {k: int((stats / k).read_text()) for k in ("tx_bytes", "rx_bytes")}


def train_cells(cells_file: str) -> None:
    """As one rank of a world (env://), train every cell of ``cells_file`` in turn.

    A cell is ``{"config": {...}, "out": DIR}``: the worker's own code path (``build_parts``
    then ``train_joined``, what ``distml run`` does after joining) on a fresh transport
    count (the summary's bytes and per-op counters are the cell's alone) with the cell's
    ``[comm] latency_ms``; each rank writes the bytes its interface moved during the cell
    to ``DIR/wire-rank{r}.json`` (:func:`wire_bytes`), with its peak memory so far. A failing cell writes ``DIR/error-rank{r}.txt`` and ends the
    world at once (its peers may be inside a collective).
    """
    import gc
    import resource
    import traceback

    import torch

    from distml.comm.transport import CommStats
    from distml.config import parse_config
    from distml.runtime.build import build_parts
    from distml.runtime.metrics import write_json_atomic
    from distml.runtime.worker import WorkerJob, train_joined
    from distml.runtime.wrap import init

    cells = json.loads(Path(cells_file).read_text())
    transport = init(backend="gloo", timeout_s=300)
    rank, world = transport.rank, transport.world_size
    torch.set_num_threads(1)
    for cell in cells:
        out = Path(cell["out"])
        try:
            config = parse_config(cell["config"])
            parts = build_parts(config, rank, world, "cpu")
            out.mkdir(parents=True, exist_ok=True)
            if rank == 0:
                write_json_atomic(out / "config.json", config.to_dict())
            transport.barrier()
            transport.stats = CommStats()
            transport.latency_s = config.comm.latency_ms / 1000.0
            before = wire_bytes()
            train_joined(rank, config, parts, transport, WorkerJob(config=cell["config"], out_dir=str(out)),
                         torch.device("cpu"), "gloo")
            after = wire_bytes()
            write_json_atomic(out / f"wire-rank{rank}.json", {
                **{k: after[k] - before[k] for k in after},
                "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
            del parts
            gc.collect()
            transport.latency_s = 0.0
            transport.barrier()
        except BaseException:
            out.mkdir(parents=True, exist_ok=True)
            (out / f"error-rank{rank}.txt").write_text(traceback.format_exc())
            sys.stderr.write(traceback.format_exc())
            sys.stderr.flush()
            os._exit(1)
    transport.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m distml.runtime.testbed",
                                 description="create or delete a rate-limited namespace test bed")
    sub = ap.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="create hosts; prints JSON with their namespaces and addresses")
    up.add_argument("--hosts", type=int, default=2)
    up.add_argument("--rate", default=None, help="per-host egress limit, e.g. 100mbit")
    up.add_argument("--tag", default=None)
    down = sub.add_parser("down", help="kill what runs inside and delete the namespaces")
    down.add_argument("--tag", required=True)
    cells = sub.add_parser("cells", help="as one rank (env://), train the configs of a JSON list in turn")
    cells.add_argument("file")
    args = ap.parse_args(argv)
    if args.cmd == "cells":
        train_cells(args.file)
        return 0
    reason = can_make_namespaces()
    if reason:
        print(f"testbed: {reason}", file=sys.stderr)
        return 2
    try:
        if args.cmd == "up":
            tag, made = create(args.hosts, tag=args.tag, rate=args.rate)
            print(json.dumps({"tag": tag, "rate": args.rate, "hosts": [h._asdict() for h in made]}))
        else:
            print(json.dumps({"deleted": destroy(args.tag)}))
    except (ValueError, subprocess.CalledProcessError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(f"testbed: {e} {detail.strip()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
