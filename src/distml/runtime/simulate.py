"""``distml simulate``: project a measured run to cluster scale with an α–β cost model.

The run gives what does not change with scale: compute seconds per step (per worker),
the bytes each worker hands to the transport per step, and the model's size. The user
gives the target network (bandwidth B, latency α). Per step, for N workers and an
M-byte message (Hockney's α–β model; Thakur et al. 2005 for the collectives):

- ring all-reduce:   2(N−1)/N · M/B + 2(N−1)·α
- tree all-reduce:   2·⌈log2 N⌉ · (M/B + α)            (reduce then broadcast)
- ring all-gather:   (N−1)/N · N·M/B + (N−1)·α          (codecs that cannot be summed)
- parameter server with S servers: every worker pushes and pulls M; each server link
  carries N·M/S each way: 2·max(M, N·M/S)/B + 2α
- gossip on a graph of degree d: d·M/B + d·α            (exchange with each neighbour)

step time = compute + communication (no overlap: an upper bound); throughput = N /
step time worker-steps (batches) per second; scaling efficiency = compute / step time
(1.0 when communication is free).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from distml.errors import UserError

_UNITS = {"": 1, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_bandwidth(text: str) -> float:
    """``"10Gbit"``, ``"100Mbit"``, ``"1.5GB"`` (bytes) → bytes per second.

    Raises:
        UserError: unparsable or not positive.
    """
    m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]?)(bit|b|B|byte|bytes)?(/s)?\s*", text)
    if not m:
        raise UserError(f"--bandwidth must look like 10Gbit, 100Mbit or 1GB, got {text!r}")
    value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    unit = m.group(3) or "bit"
    bytes_per_s = value / 8 if unit in ("bit", "b") else value
    if bytes_per_s <= 0:
        raise UserError(f"--bandwidth must be > 0, got {text!r}")
    return bytes_per_s


def parse_latency(text: str) -> float:
    """``"20us"``, ``"1ms"``, ``"0.5s"`` → seconds."""
    m = re.fullmatch(r"\s*([0-9.]+)\s*(ns|us|µs|ms|s)?\s*", text)
    if not m:
        raise UserError(f"--latency must look like 20us, 1ms or 0.001s, got {text!r}")
    scale = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, None: 1.0}[m.group(2)]
    return float(m.group(1)) * scale


def ring_allreduce(n: int, m: float, bw: float, alpha: float) -> float:
    return 0.0 if n == 1 else 2 * (n - 1) / n * m / bw + 2 * (n - 1) * alpha


def tree_allreduce(n: int, m: float, bw: float, alpha: float) -> float:
    return 0.0 if n == 1 else 2 * math.ceil(math.log2(n)) * (m / bw + alpha)


def ring_allgather(n: int, m: float, bw: float, alpha: float) -> float:
    return 0.0 if n == 1 else (n - 1) * m / bw + (n - 1) * alpha


def parameter_server(n: int, m: float, bw: float, alpha: float, servers: int) -> float:
    return 2 * max(m, n * m / servers) / bw + 2 * alpha


def gossip(n: int, m: float, bw: float, alpha: float, degree: int = 2) -> float:
    d = min(degree, n - 1)
    return 0.0 if n == 1 else d * m / bw + d * alpha


def profile(run_dir: Path) -> dict[str, Any]:
    """Per-step compute time and bytes of a finished run, and its model size.

    Raises:
        UserError: not a finished run.
    """
    path = Path(run_dir) / "summary.json"
    if not path.exists():
        raise UserError(f"{path} not found: --profile needs a finished distml run")
    s = json.loads(path.read_text())
    steps = max(int(s["steps"]), 1)
    workers = int(s["workers"])
    model_bytes = None
    model_path = Path(run_dir) / "model.pt"
    if model_path.exists():
        import torch
        state = torch.load(model_path, map_location="cpu", weights_only=True)
        model_bytes = sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point())
    per_rank = s.get("per_rank", [])
    gathered = any(pr.get("ops", {}).get("all_gather", {}).get("bytes_sent", 0) > 0 for pr in per_rank)
    return {
        "run": str(run_dir), "algorithm": s["algorithm"], "workers": workers,
        "compute_per_step": s["compute_seconds"] / steps,
        "bytes_per_step": s["bytes_sent"] / workers / steps,
        "model_bytes": model_bytes, "gathered": gathered,
        "measured_step": s["wall_seconds"] / steps if s.get("wall_seconds") else None,
    }


def project(prof: dict[str, Any], workers: list[int], bandwidth: float, latency: float,
            servers: int = 1, degree: int = 2) -> list[dict[str, Any]]:
    """Projected step time, throughput and efficiency per topology and worker count.

    "run codec" uses the run's measured bytes per step; "fp32" the model's full size.
    """
    payloads = {"run": prof["bytes_per_step"]}
    full = prof["model_bytes"]
    if full and abs(full - prof["bytes_per_step"]) > 0.01 * full:   # the run compressed
        payloads["fp32"] = float(full)
    c = prof["compute_per_step"]
    rows = []
    for n in workers:
        for payload, m in payloads.items():
            gathered = prof["gathered"] and payload == "run"
            topologies = {
                "ring_allreduce": ring_allgather(n, m, bandwidth, latency) if gathered
                else ring_allreduce(n, m, bandwidth, latency),
                "tree_allreduce": tree_allreduce(n, m, bandwidth, latency),
                f"ps_{servers}_servers": parameter_server(n, m, bandwidth, latency, servers),
                f"gossip_degree_{degree}": gossip(n, m, bandwidth, latency, degree),
            }
            for topo, comm in topologies.items():
                step = c + comm
                rows.append({"workers": n, "payload": payload, "topology": topo,
                             "bytes_per_step": m, "comm_seconds": comm, "step_seconds": step,
                             "steps_per_second": 1.0 / step if step > 0 else None,
                             "worker_steps_per_second": n / step if step > 0 else None,
                             "scaling_efficiency": c / step if step > 0 else None})
    return rows
