"""Test hosts in network namespaces (DESIGN.md §6): veth pairs joined by a bridge.

The bridge lives in its own namespace, never in the root one; addresses exist only
inside the namespaces; everything is deleted at the end, after the processes in the
namespaces are gone.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from contextlib import contextmanager


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


@contextmanager
def hosts(n: int, subnet: str | None = None):
    """Create ``n`` hosts; yields a list of ``(namespace, address, interface)``.

    Args:
        subnet: the first three octets, e.g. "10.77.3"; random in 10.77.0.0/16 by default.
    """
    tag = uuid.uuid4().hex[:6]
    subnet = subnet or f"10.77.{int(tag, 16) % 250 + 1}"
    bridge_ns = f"dmlbr{tag}"
    made: list[str] = []
    out = []
    try:
        _ip("netns", "add", bridge_ns)
        made.append(bridge_ns)
        _ip("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge_ns, "link", "set", "br0", "up")
        _ip("-n", bridge_ns, "link", "set", "lo", "up")
        for i in range(n):
            ns = f"dmlh{i}{tag}"
            _ip("netns", "add", ns)
            made.append(ns)
            host_end, br_end = f"h{i}{tag}", f"b{i}{tag}"
            _ip("link", "add", host_end, "type", "veth", "peer", "name", br_end)
            _ip("link", "set", host_end, "netns", ns)
            _ip("link", "set", br_end, "netns", bridge_ns)
            _ip("-n", ns, "link", "set", host_end, "name", "eth0")
            addr = f"{subnet}.{i + 1}"
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge_ns, "link", "set", br_end, "master", "br0")
            _ip("-n", bridge_ns, "link", "set", br_end, "up")
            out.append((ns, addr, "eth0"))
        yield out
    finally:
        for ns in reversed(made):
            # processes still inside would keep the namespace's interfaces alive
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
