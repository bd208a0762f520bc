"""Parameter-server throughput against the raw bandwidth of the same transport.

A 1M-parameter (4 MiB float32) shard on one server, pushed by 1 and by 4 workers (each
keeps two pushes in flight); the server applies every push (ASP, an in-place add). Raw
bandwidth: the same workers send the same tensor with plain blocking ``send``/``recv`` to
the same server process, in the same invocation, interleaved with the PS runs (per
repeat: raw, then PS), so machine load hits both alike. The ratio is total pushed bytes/s
over raw bytes/s, paired per repeat (``ratio_ci``).

    python bench/ps_throughput.py            # the documented run (bench/results/ps_throughput.json)
    python bench/ps_throughput.py --quick    # smoke check: fewer messages, same code path

Ends with one JSON line: ``ps_vs_raw_bandwidth`` (1 worker; goal ≥ 0.7 at the
interval's low end), ``ps_vs_raw_bandwidth_4w`` (4 workers), their intervals, and the
bytes/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, ratio_ci, table  # noqa: E402

PROTOCOL = {
    "numel": 1 << 20,                # 1M float32 parameters, 4 MiB per message
    "workers": [1, 4],
    "messages_per_worker": 60,       # per repeat, raw and PS alike
    "in_flight": 2,                  # pushes a worker keeps in flight
    "repeats": 5,
    "pace": "asp",
    "threads": 1,                    # torch threads per process, as distml runs its servers
    "goal": "ps_vs_raw_bandwidth >= 0.7 at the 95% interval's low end, 1 and 4 workers",
    "quick": {"messages_per_worker": 15, "repeats": 3},
}


class _Add:
    """The cheapest update rule: what is measured is the server's receive path."""

    def __call__(self, params, total, count, aux):
        params.add_(total)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def child(out: str, messages: int, repeats: int) -> None:
    """One rank of ``distml launch -n W+1``: ranks 0..W-1 are workers, rank W the server."""
    import torch

    import distml
    from distml.comm.pace import make_pace
    from distml.comm.ps import PSClient, ServerLoop

    torch.set_num_threads(PROTOCOL["threads"])   # the PS default (train.threads_per_worker)
    t = distml.init(timeout_s=120)
    server, workers = t.world_size - 1, list(range(t.world_size - 1))
    numel = PROTOCOL["numel"]
    x = torch.randn(numel)
    nbytes = numel * 4 * messages * len(workers)
    res = {"raw_bytes_per_s": [], "ps_bytes_per_s": []}
    for _ in range(repeats):
        t.barrier()          # raw: plain blocking send/recv of the same bytes
        t0 = time.perf_counter()
        if t.rank == server:
            for _ in range(messages * len(workers)):
                t.recv(x, None)
        else:
            for _ in range(messages):
                t.send(x, server)
        t.barrier()
        res["raw_bytes_per_s"].append(nbytes / (time.perf_counter() - t0))

        t.barrier()          # PS: the same bytes as pushes, each applied by the server
        t0 = time.perf_counter()
        if t.rank == server:
            ServerLoop(t, 0, torch.zeros(numel), workers, make_pace(PROTOCOL["pace"]), _Add()).run()
        else:
            client = PSClient(t, [server], [(0, numel)])
            depth = PROTOCOL["in_flight"]
            bufs, handles = [x.clone() for _ in range(depth)], [None] * depth
            for i in range(messages):
                if handles[i % depth] is not None:
                    handles[i % depth].wait()
                handles[i % depth] = client.push(bufs[i % depth], i)
            for h in handles:
                if h is not None:
                    h.wait()
            client.done(torch.empty(numel) if t.rank == 0 else None)   # after every push applied
        t.barrier()
        res["ps_bytes_per_s"].append(nbytes / (time.perf_counter() - t0))
    if t.rank == 0:
        Path(out).write_text(json.dumps(res))
    t.close()


def measure(workers: int, messages: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "tp.json")
        subprocess.run([sys.executable, "-m", "distml", "launch", "-n", str(workers + 1), __file__,
                        "--child", out, "--messages", str(messages), "--repeats", str(repeats)],
                       check=True, timeout=600)
        return json.loads(Path(out).read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: fewer messages and repeats")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--messages", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.messages, args.repeats)
        return 0
    p = dict(PROTOCOL, **PROTOCOL["quick"]) if args.quick else PROTOCOL
    load_before = os.getloadavg()
    line, rows, runs = {"bench": "ps_throughput"}, [], {}
    for w in PROTOCOL["workers"]:
        r = measure(w, p["messages_per_worker"], p["repeats"])
        runs[w] = r
        m, lo, hi = ratio_ci(r["ps_bytes_per_s"], r["raw_bytes_per_s"])
        key = "ps_vs_raw_bandwidth" + ("" if w == 1 else f"_{w}w")
        line[key], line[key + "_ci"] = round(m, 3), [round(lo, 3), round(hi, 3)]
        raw = sum(r["raw_bytes_per_s"]) / len(r["raw_bytes_per_s"])
        ps = sum(r["ps_bytes_per_s"]) / len(r["ps_bytes_per_s"])
        rows.append([w, f"{raw / 1e6:.0f}", f"{ps / 1e6:.0f}", f"{m:.3f} [{lo:.3f}, {hi:.3f}]",
                     "met" if lo >= 0.7 else "missed"])
        print(f"{w} worker(s): raw {raw / 1e6:.0f} MB/s, PS {ps / 1e6:.0f} MB/s, "
              f"ratio {m:.3f} [{lo:.3f}, {hi:.3f}]", file=sys.stderr, flush=True)
    met = all(r[-1] == "met" for r in rows)
    line.update(repeats=p["repeats"], goal_met=met,
                headline=f"PS {line['ps_vs_raw_bandwidth']}× [{line['ps_vs_raw_bandwidth_ci'][0]}, "
                         f"{line['ps_vs_raw_bandwidth_ci'][1]}] of raw bandwidth with 1 worker, "
                         f"{line['ps_vs_raw_bandwidth_4w']}× with 4 (goal 0.7: "
                         f"{'met' if met else 'missed'})")
    details = {"runs": {str(k): v for k, v in runs.items()},
               "loadavg": {"before": load_before, "after": os.getloadavg()},
               "tables": [table("Parameter-server throughput vs raw send/recv (4 MiB messages)",
                                ["workers", "raw MB/s", "PS MB/s", "PS / raw [95% CI]", "goal 0.7"],
                                rows)]}
    return finish(line, PROTOCOL, quick=args.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
