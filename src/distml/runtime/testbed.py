"""A slow-network test bed: hosts in network namespaces, joined by a bridge, rate-limited.

docs/design.md §6: as root, network namespaces joined by veth pairs and a bridge work; the
bridge lives in its own namespace, never in the root one; addresses exist only inside
the namespaces; bandwidth is limited with ``tc ... tbf`` on each host's interface
(netem is not in this kernel, so delay comes from the transport's ``latency_ms``).
Everything is deleted at the end, after the processes inside are gone.

Python: ``with hosts(2, rate="100mbit") as hs: ...`` yields ``Host(ns, addr, iface)``;
``set_link(tag, i, up=False)`` unplugs host ``i`` (a partition) until it is plugged back.
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
import subprocess
import sys
import uuid
from contextlib import contextmanager
from typing import NamedTuple


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
           rate: str | None = None) -> tuple[str, list[Host]]:
    """Create ``n`` hosts (and their bridge); returns ``(tag, hosts)``. On failure,
    what was made is deleted before the error propagates.

    Args:
        n: number of hosts (1..200).
        tag: a short name for the test bed (letters/digits, ≤ 8); random by default.
        subnet: the first three octets, e.g. "10.77.3"; derived from the tag by default.
        rate: per-host egress limit, e.g. "100mbit"; None leaves the links unlimited.
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


@contextmanager
def hosts(n: int, subnet: str | None = None, rate: str | None = None, tag: str | None = None):
    """Create ``n`` hosts for the ``with`` block; yields a list of :class:`Host`."""
    tag, made = create(n, tag=tag, subnet=subnet, rate=rate)
    try:
        yield made
    finally:
        destroy(tag)


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
    args = ap.parse_args(argv)
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
