"""``distml simulate``: project a measured run to cluster scale with an α–β cost model.

The run gives what does not change with scale: compute seconds per step (per worker),
and, per collective kind, the bytes each worker hands to the transport per step and how
many calls it makes (one-off messages such as the initial broadcast of the model are left
out). The user gives the target network (link bandwidth B, per-message latency α). For N
workers and an M-byte message (Hockney's α–β model; Thakur et al. 2005 for the
collectives), per call:

- ring all-reduce:   2(N−1)/N · M/B + 2(N−1)·α
- tree all-reduce:   2·⌈log2 N⌉ · (M/B + α)            (reduce then broadcast)
- ring all-gather:   (N−1)·M/B + (N−1)·α                (codecs that cannot be summed;
                                                         M = one worker's payload)
- reduce-scatter:    (N−1)/N · M/B + (N−1)·α
- broadcast (tree):  ⌈log2 N⌉ · (M/B + α)
- parameter server with S servers: every worker pushes and pulls M; each server link
  carries N·M/S each way: 2·max(M, N·M/S)/B + 2α
- gossip on a graph of degree d: d·M/B + d·α            (exchange with each neighbour)
- anything else (point to point): M/B + α

Three corrections make the projection match a real TCP network; bench/cost_model.py
checks them on rate-limited hosts (docs/benchmarks.md, docs/choosing.md):

- **Goodput, not link rate.** B is the link's rate; TCP moves B_eff = η·B of payload.
  For a 1500-byte MTU, η = (MTU − 52) / (MTU + 14 + 66/2) = 1448/1547 = 0.936. Each
  1448-byte segment travels as a 1514-byte Ethernet frame (14 Ethernet + 20 IPv4 +
  32 TCP-with-timestamps header bytes). In a collective every host also receives, so
  its egress also carries one 66-byte ACK per two segments it receives (delayed ACKs).
- **Software latency.** α = α_net + α_sw. α_net is the user's ``--latency``. α_sw is what
  one message hop costs in software (gloo, the Python transport, scheduling). It is
  calibrated from the profile run, whose network is fast enough to count as free:
  α_sw = (comm seconds per step in the profile) / (message hops per step at the
  profile's N), where a ring all-reduce call is 2(N−1) hops. The bytes the profile moved
  in that time are folded into α_sw, so it is an upper bound. It describes the machine
  that ran the profile: ``distml simulate`` leaves it out unless given
  ``--software-latency calibrated`` (the default, 0, projects to other hosts).
- **gloo's 2-worker all-gather** takes 1.5·M/B instead of M/B (:func:`gloo_allgather`:
  its receive announcements queue in-band behind the peer's data on the one TCP
  connection two workers share).

Two methods do not talk in collectives, and their traffic changes shape with N; their
profile's point-to-point bytes are re-shaped by their topology (:data:`TOPOLOGIES`):

- ``ps``: a worker's pushed bytes per step M, through ``parameter_server`` with the run's
  S servers (or ``servers=``), as BSP moves them: pushes in, then pulls out;
- ``gossip``: M = bytes per step / the graph's out-degree at the profile's N; at N
  workers each round sends to d(N) neighbours (ring 2, 4 × 4 torus 4, one-peer
  exponential 1), and its message count scales the same way.

Their collectives (gossip's all-reduce of the consensus distance at logging steps) are
replayed as for the other methods: a ring all-reduce's 2(N−1) hops grow with N.

A transport latency (``[comm] latency_ms``: a sleep before every call, not per hop) adds
``calls per step × latency`` (``call_latency=``).

**Shared cores** (``cores=``, ``ranks_per_host=``). The profile's compute per step is
what a rank took with the profile's processes on the profile's machine. Where R ranks of
the target share one host's C cores (the test bed: every "host" a namespace of one
machine; or several ranks per node), they compute at the same time and each gets C/R of
a core: compute per step scales by ``max(1, R/C) / max(1, R₀/C)`` (:func:`oversubscription`),
R₀ the profile's processes (its workers and servers, all on one machine). Only machine
facts enter: the cores and how many ranks share them; nothing is fitted. It assumes every
rank computes at once (gossip, BSP after a barrier): an upper bound where ranks spend
much of a step blocked in communication (bench/scale.py and bench/cost_model.py measured
1.1–1.6× instead of 2–3× for PowerSGD and top-k at 4–6 ranks on 2 cores).

step time = compute + Σ over the collectives of the step (no overlap: an upper bound);
throughput = N / step time worker-steps (batches) per second; scaling efficiency =
compute / step time (1.0 when communication is free).
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


def gloo_allgather(n: int, m: float, bw: float, alpha: float) -> float:
    """gloo's all-gather: the ring, except between 2 workers, where it takes 1.5·M/B.

    gloo cuts each worker's M into two chunks and sends a chunk only once the peer has
    announced the matching receive; the announcement travels in-band, in the same TCP
    stream as the peer's own data. With 2 workers both directions share one connection:
    the later rank finds the earlier one's announcements waiting, sends its first chunk
    at once and only then announces its own receives, so they queue behind its data.
    The earlier rank can start its first chunk after M/2B and its second after M/B:
    the exchange ends at 1.5·M/B, not M/B. With 3 or more workers, data goes to the
    right neighbour and announcements to the left one, on different connections.
    Source: gloo's ``gloo/allgather.cc`` and ``gloo/transport/tcp/pair.cc``; measured
    1.46–1.55·M/B on the test bed (docs/benchmarks.md, cost model).
    """
    if n == 2:
        return 1.5 * m / bw + alpha
    return ring_allgather(n, m, bw, alpha)


def parameter_server(n: int, m: float, bw: float, alpha: float, servers: int) -> float:
    return 2 * max(m, n * m / servers) / bw + 2 * alpha


def gossip(n: int, m: float, bw: float, alpha: float, degree: int = 2) -> float:
    d = min(degree, n - 1)
    return 0.0 if n == 1 else d * m / bw + d * alpha


def wire_efficiency(mtu: int = 1500, duplex: bool = True) -> float:
    """Payload bytes per link byte of a bulk TCP/IPv4 transfer over Ethernet.

    A segment carries ``mtu − 52`` payload bytes (20 IPv4 + 32 TCP header bytes with the
    timestamp option Linux uses) in an ``mtu + 14``-byte frame. With ``duplex`` the host
    also receives a stream and sends one 66-byte ACK per two segments of it on the same
    egress (delayed ACKs, RFC 1122), as every host does in a collective.

    Raises:
        ValueError: an MTU under 576.
    """
    if mtu < 576:
        raise ValueError(f"mtu must be >= 576, got {mtu}")
    return (mtu - 52) / (mtu + 14 + (33 if duplex else 0))


def reduce_scatter(n: int, m: float, bw: float, alpha: float) -> float:
    return 0.0 if n == 1 else (n - 1) / n * m / bw + (n - 1) * alpha


def tree_broadcast(n: int, m: float, bw: float, alpha: float) -> float:
    return 0.0 if n == 1 else math.ceil(math.log2(n)) * (m / bw + alpha)


def point_to_point(n: int, m: float, bw: float, alpha: float) -> float:
    return m / bw + alpha


#: the formula of each collective kind the transport counts; any other kind is point to point
COLLECTIVES = {"all_reduce": ring_allreduce, "all_gather": ring_allgather,
               "reduce_scatter": reduce_scatter, "broadcast": tree_broadcast}
#: the same on gloo, our CPU backend (its 2-worker all-gather, see gloo_allgather)
GLOO_COLLECTIVES = {**COLLECTIVES, "all_gather": gloo_allgather}


def comm_seconds(ops: dict[str, dict[str, float]], n: int, bw: float, alpha: float,
                 gloo: bool = True) -> float:
    """Communication seconds per step: Σ over collective kinds of bytes and latency terms.

    Every formula is linear in M and in α apart, so a kind called c times a step with b
    bytes in all costs ``f(n, b, bw, 0) + c·f(n, 0, bw, α)``.

    Args:
        ops: per kind, ``{"bytes": per worker per step, "calls": per step}`` (a profile's ``ops``).
        n: workers; bw: payload bytes per second (goodput); alpha: seconds per message hop.
        gloo: use gloo's algorithms (:data:`GLOO_COLLECTIVES`), else the textbook ones.
    """
    table = GLOO_COLLECTIVES if gloo else COLLECTIVES
    total = 0.0
    for op, o in ops.items():
        f = table.get(op, point_to_point)
        total += f(n, o["bytes"], bw, 0.0) + o["calls"] * f(n, 0.0, bw, alpha)
    return total


def software_alpha(prof: dict[str, Any]) -> float:
    """α_sw: the profile's communication seconds per message hop (its network counted free)."""
    n = prof["workers"]
    hops = sum(o["calls"] * COLLECTIVES.get(op, point_to_point)(n, 0.0, 1.0, 1.0)
               for op, o in prof["ops"].items())
    return prof["comm_per_step"] / hops if hops else 0.0


def _p2p(ops: dict[str, dict[str, float]]) -> tuple[float, float]:
    """Bytes sent and calls per step of the point-to-point kinds (send, recv, isend, ...)."""
    kinds = [o for op, o in ops.items() if op not in COLLECTIVES]
    return sum(o["bytes"] for o in kinds), sum(o["calls"] for o in kinds)


def _ps_comm(prof: dict[str, Any], n: int, bw: float,
             servers: int | None = None) -> tuple[float, float]:
    """A worker's push M through S servers (BSP); its calls grow with S (one per shard)."""
    pushed = _p2p(prof["ops"])[0]
    profiled = prof["topology"].get("servers", 1)
    s = servers or profiled
    return parameter_server(n, pushed, bw, 0.0, s), s / profiled


def out_degree(graph_spec, n: int) -> float:
    """Neighbours a worker sends to per round on ``graph_spec`` with ``n`` workers
    (the most over ranks, averaged over the graph's period)."""
    from distml.comm.topology import build_graph
    g = build_graph(graph_spec, n)
    rounds = range(g.period())
    return sum(max(len(g.sends_to(r, k)) for r in range(n)) for k in rounds) / len(rounds)


def _gossip_comm(prof: dict[str, Any], n: int, bw: float,
                 servers: int | None = None) -> tuple[float, float]:
    """Each round, the model to each of d(N) neighbours: bytes and calls scale by d(N)/d(N₀)."""
    graph = prof["topology"].get("graph", "ring")
    scale = out_degree(graph, n) / out_degree(graph, prof["workers"])
    return gossip(n, _p2p(prof["ops"])[0] * scale, bw, 0.0, degree=1), scale


#: algorithm → (seconds its bytes take per step at n workers, factor on its calls), from
#: the profile's point-to-point traffic; the others replay their collectives (:func:`comm_seconds`)
TOPOLOGIES = {"ps": _ps_comm, "gossip": _gossip_comm}


def processes(prof: dict[str, Any], n: int | None = None, servers: int | None = None) -> int:
    """Ranks of the profiled method at ``n`` workers (the profile's own by default): its
    workers plus, for the parameter server, its servers."""
    n = prof["workers"] if n is None else n
    if prof["algorithm"] != "ps":
        return n
    return n + (servers or (prof.get("topology") or {}).get("servers", 1))


def oversubscription(ranks: int, cores: int) -> float:
    """How many times slower a rank computes when ``ranks`` busy processes share ``cores``
    cores: ``max(1, ranks / cores)`` (each gets ``cores / ranks`` of a core).

    Raises:
        ValueError: ``ranks`` or ``cores`` under 1.
    """
    if ranks < 1 or cores < 1:
        raise ValueError(f"ranks and cores must be >= 1, got {ranks} and {cores}")
    return max(1.0, ranks / cores)


def compute_per_step(prof: dict[str, Any], n: int, cores: int | None = None,
                     ranks_per_host: int | None = None, servers: int | None = None) -> float:
    """The profile's compute per step at ``n`` workers with ``ranks_per_host`` ranks (default:
    all of them, as on one machine) sharing ``cores`` cores; the profile's as it is when
    ``cores`` is None (a host per rank with cores to spare)."""
    c = prof["compute_per_step"]
    if cores is None:
        return c
    here = processes(prof, n, servers) if ranks_per_host is None else ranks_per_host
    return c * oversubscription(here, cores) / oversubscription(processes(prof), cores)


def predict_step(prof: dict[str, Any], n: int, bandwidth: float, latency: float = 0.0,
                 efficiency: float | None = None, alpha_sw: float | None = None,
                 gloo: bool = True, call_latency: float = 0.0,
                 servers: int | None = None, cores: int | None = None,
                 ranks_per_host: int | None = None) -> float:
    """Predicted seconds per step of the profiled run's method on ``n`` workers.

    Args:
        prof: from :func:`profile`.
        n: workers.
        bandwidth: the link rate in bytes per second.
        latency: α_net, the network's one-way latency per message (seconds).
        efficiency: goodput per link byte; :func:`wire_efficiency` by default.
        alpha_sw: software seconds per hop; :func:`software_alpha` of the profile by default.
        gloo: gloo's collectives (the default) or the textbook ones.
        call_latency: seconds the transport sleeps before every call (``[comm] latency_ms``).
        servers: the parameter server's server count (default: the profiled run's).
        cores, ranks_per_host: the cores of a target host and the ranks sharing them
            (:func:`compute_per_step`); None: the profile's compute as it is.
    """
    return (compute_per_step(prof, n, cores, ranks_per_host, servers)
            + predict_comm(prof, n, bandwidth, latency, efficiency, alpha_sw, gloo, call_latency, servers))


def predict_comm(prof: dict[str, Any], n: int, bandwidth: float, latency: float = 0.0,
                 efficiency: float | None = None, alpha_sw: float | None = None,
                 gloo: bool = True, call_latency: float = 0.0,
                 servers: int | None = None) -> float:
    """:func:`predict_step` without the compute: communication seconds per step."""
    eff = wire_efficiency() if efficiency is None else efficiency
    a_sw = software_alpha(prof) if alpha_sw is None else alpha_sw
    bw, alpha = eff * bandwidth, latency + a_sw
    shaped = TOPOLOGIES.get(prof["algorithm"])
    calls = prof.get("calls_per_step") or sum(o["calls"] for o in prof["ops"].values())
    if shaped is not None and prof.get("topology") is not None:
        seconds, scale = shaped(prof, n, bw, servers)
        comm = seconds + _p2p(prof["ops"])[1] * scale * alpha    # a p2p call is one hop
        # its collectives too (gossip's periodic all-reduce of the consensus distance): their
        # hops grow with N, 2(N−1) a ring all-reduce
        collectives = {op: o for op, o in prof["ops"].items() if op in COLLECTIVES}
        comm += comm_seconds(collectives, n, bw, alpha, gloo=gloo)
        calls *= scale
    else:
        comm = comm_seconds(prof["ops"], n, bw, alpha, gloo=gloo)
    return comm + calls * call_latency


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
        from distml.runtime.checkpoint import load_tensors
        state = load_tensors(model_path, model_path)     # never unpickles arbitrary objects
        model_bytes = sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point())
    per_rank = s.get("per_rank", [])
    gathered = any(pr.get("ops", {}).get("all_gather", {}).get("bytes_sent", 0) > 0 for pr in per_rank)
    ops = per_step_ops(per_rank, steps)
    per_step = sum(o["bytes"] for o in ops.values()) if ops else s["bytes_sent"] / workers / steps
    return {
        "run": str(run_dir), "algorithm": s["algorithm"], "workers": workers,
        "topology": _topology(Path(run_dir), s["algorithm"]),
        # every transport call a step makes, payload-less ones too (each pays [comm] latency_ms)
        "calls_per_step": sum(o.get("calls", 0) for pr in per_rank for o in pr.get("ops", {}).values()
                              if o.get("calls", 0) > 1) / steps / max(len(per_rank), 1),
        "compute_per_step": s["compute_seconds"] / steps,
        "comm_per_step": (s["comm_seconds"] + s.get("wait_seconds", 0.0)) / steps,
        "bytes_per_step": per_step, "ops": ops or {"all_reduce": {"bytes": per_step, "calls": 1.0}},
        "model_bytes": model_bytes, "gathered": gathered,
        "measured_step": s["wall_seconds"] / steps if s.get("wall_seconds") else None,
    }


def _topology(run_dir: Path, algorithm: str) -> dict[str, Any] | None:
    """The parameters that shape a :data:`TOPOLOGIES` method's traffic, from the run's
    ``config.json`` (servers of ``ps``, graph of ``gossip``); None for the others."""
    path = run_dir / "config.json"
    if algorithm not in TOPOLOGIES or not path.exists():
        return None
    spec = json.loads(path.read_text()).get("algorithm", {})
    return {"servers": int(spec.get("servers", 1)), "graph": spec.get("graph", "ring")}


def per_step_ops(per_rank: list[dict[str, Any]], steps: int) -> dict[str, dict[str, float]]:
    """Per collective kind: bytes a worker sends and calls it makes per step (mean over ranks).

    A kind called once in a run of several steps (rank 0's initial broadcast of the model)
    is setup, not per-step traffic, and is left out; so are zero-byte kinds (barriers).
    """
    out: dict[str, dict[str, float]] = {}
    ranks = [pr for pr in per_rank if pr.get("ops")]
    for pr in ranks:
        for op, o in pr["ops"].items():
            if steps > 1 and o.get("calls", 0) <= 1:
                continue
            acc = out.setdefault(op, {"bytes": 0.0, "calls": 0.0})
            acc["bytes"] += o.get("bytes_sent", 0) / steps / len(ranks)
            acc["calls"] += o.get("calls", 0) / steps / len(ranks)
    return {op: o for op, o in out.items() if o["bytes"] > 0}


def project(prof: dict[str, Any], workers: list[int], bandwidth: float, latency: float,
            servers: int = 1, degree: int = 2, efficiency: float | None = None,
            alpha_sw: float | None = None, cores: int | None = None,
            ranks_per_host: int | None = None) -> list[dict[str, Any]]:
    """Projected step time, throughput and efficiency per topology and worker count.

    Payload "run" is the run's own traffic: its ring row replays the run's collectives
    (kinds, bytes and calls per step, e.g. two all-gathers for a codec that cannot be
    summed, three all-reduces for PowerSGD); the other topologies move its bytes per step
    as one message. Payload "fp32" (shown when the run compressed) is the model's full size.

    Args:
        prof: from :func:`profile`.
        workers: worker counts to project to.
        bandwidth: link rate, bytes per second; latency: α_net, seconds per message.
        servers, degree: the parameter server's server count and the gossip graph's degree.
        efficiency: goodput per link byte (:func:`wire_efficiency` by default; 1.0 = none).
        alpha_sw: software seconds per message hop (calibrated from the profile by default).
        cores, ranks_per_host: cores of a host and ranks sharing them (:func:`compute_per_step`).
    """
    eff = wire_efficiency() if efficiency is None else efficiency
    a_sw = software_alpha(prof) if alpha_sw is None else alpha_sw
    bw, alpha = eff * bandwidth, latency + a_sw
    payloads = {"run": prof["bytes_per_step"]}
    full = prof["model_bytes"]
    if full and abs(full - prof["bytes_per_step"]) > 0.01 * full:   # the run compressed
        payloads["fp32"] = float(full)
    rows = []
    for n in workers:
        c = compute_per_step(prof, n, cores, ranks_per_host)
        for payload, m in payloads.items():
            topologies = {
                "ring_allreduce": comm_seconds(prof["ops"], n, bw, alpha) if payload == "run"
                else ring_allreduce(n, m, bw, alpha),
                "tree_allreduce": tree_allreduce(n, m, bw, alpha),
                f"ps_{servers}_servers": parameter_server(n, m, bw, alpha, servers),
                f"gossip_degree_{degree}": gossip(n, m, bw, alpha, degree),
            }
            for topo, comm in topologies.items():
                step = c + comm
                rows.append({"workers": n, "payload": payload, "topology": topo,
                             "bytes_per_step": m, "comm_seconds": comm, "step_seconds": step,
                             "steps_per_second": 1.0 / step if step > 0 else None,
                             "worker_steps_per_second": n / step if step > 0 else None,
                             "scaling_efficiency": c / step if step > 0 else None})
    return rows
