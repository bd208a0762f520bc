"""Soak test of the parameter server: 4 workers, many small pushes, for minutes on end.

One server process (``comm/ps`` ServerLoop, SSP pace with staleness 4) and 4 worker
processes (``PSClient``), started with ``distml launch -n 5`` (this file in child mode).
Each worker pushes a small float64 vector as fast as it can (two buffers in flight) and
pulls every ``--pull-every`` pushes, until the common deadline. The server's update rule
adds each push to the parameters, and push ``i`` of worker ``w`` carries ``1`` in slot
``w`` and ``i`` in slot ``W + w``, so at the end the parameters themselves count what
was applied: slot ``w`` must equal worker ``w``'s pushes and slot ``W + w`` the sum of
their indices. A lost push lowers both; a push applied twice raises both.

Checked at the end (``ok`` in the JSON line):

- exactly once: for every worker, its own count == the server's clock for it == slot
  ``w`` of the parameters, the index sum matches, and the server's ``pushes_applied``
  is the total with nothing dropped;
- memory: the server's resident set grows by at most ``--rss-bound-mb`` from the end of
  the warm-up (the first sample after 10 % of the run) to the end; workers likewise;
- throughput steady: the server's CPU time per push in the last third of the progress
  windows (median) is at most ``1 / --steady-ratio`` times the first third's: a leak or a
  growing queue makes every push cost more. The push rate itself (reported: last third
  over first third, the slowest window over the median) follows whatever else runs on
  the machine, and so, less, does the CPU per push (5 processes on 2 cores spend most of
  their time in the kernel, switching and on loopback TCP): the load averages are
  reported beside them, and the bound is lenient (2x with the default ratio 0.5).

The server prints progress every ``--progress-s`` seconds. Not run in CI::

    nice -n 10 python bench/ps_soak.py               # 10 minutes (docs/faults.md)
    python bench/ps_soak.py --quick                  # about 30 s, same code path
    python bench/ps_soak.py --minutes 3

Ends with one JSON line (docs/design.md §5): ``{"bench": "ps_soak", ..., "headline": ...}``
and writes ``bench/results/ps_soak.json`` (``bench/common.py``). It is one long run, a
check (exactly once, bounded memory, steady cost) rather than an estimate: no seeds.
``PROTOCOL`` holds the defaults of the documented run; the options override them and the
command recorded beside the result says which.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish  # noqa: E402

WORKERS = 4


def rss_mb() -> float:
    """This process's resident set size (VmRSS), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class _CountingAdd:
    """The server's update rule: add the push, and sample progress every ``every`` seconds."""

    def __init__(self, every: float, started: float):
        self.every, self.started = every, started
        self.server = None            # set once the ServerLoop exists
        self.samples: list[dict] = []
        self._next = started

    def __call__(self, params, total, count, aux):
        params.add_(total)
        now = time.monotonic()
        if now >= self._next and self.server is not None:
            self._next = now + self.every
            s = {"t": now - self.started, "applied": self.server.applied + count,
                 "pulls": self.server.pulls, "rss_mb": rss_mb(), "cpu_s": time.process_time(),
                 "load": os.getloadavg()[0]}
            if self.samples:
                prev = self.samples[-1]
                n = s["applied"] - prev["applied"]
                s["pushes_per_s"] = n / (s["t"] - prev["t"])
                s["cpu_us_per_push"] = 1e6 * (s["cpu_s"] - prev["cpu_s"]) / max(n, 1)
            self.samples.append(s)
            rate = (f"{s['pushes_per_s']:,.0f}/s, {s['cpu_us_per_push']:.0f} us CPU each"
                    if "pushes_per_s" in s else "-")
            print(f"ps_soak [{s['t']:6.0f} s] pushes {s['applied']:>10,} ({rate}), pulls "
                  f"{s['pulls']:,}, server RSS {s['rss_mb']:.1f} MB, load {s['load']:.1f}",
                  file=sys.stderr, flush=True)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


def child(prefix: str, seconds: float, numel: int, pull_every: int, staleness: int,
          progress_s: float) -> None:
    import torch

    import distml
    from distml.comm.pace import make_pace
    from distml.comm.ps import PSClient, ServerLoop

    t = distml.init(timeout_s=120)
    if t.world_size != WORKERS + 1:
        raise SystemExit(f"ps_soak: needs {WORKERS + 1} processes, got {t.world_size}")
    server_rank = WORKERS
    pace = make_pace({"name": "ssp", "staleness": staleness})
    t.barrier()
    started = time.monotonic()
    deadline = started + seconds
    res: dict = {"rank": t.rank}
    if t.rank == server_rank:
        rule = _CountingAdd(progress_s, started)
        server = ServerLoop(t, 0, torch.zeros(numel, dtype=torch.float64), list(range(WORKERS)),
                            pace, rule)
        rule.server = server
        report = server.run()
        p = server.params
        res.update(report=report, clocks={str(w): c for w, c in server.clocks.items()},
                   count_slots=[float(p[w]) for w in range(WORKERS)],
                   index_slots=[float(p[WORKERS + w]) for w in range(WORKERS)],
                   samples=rule.samples, rss_end_mb=rss_mb(), seconds=time.monotonic() - started)
    else:
        w = t.rank
        client = PSClient(t, [server_rank], [(0, numel)])
        bufs = [torch.zeros(numel, dtype=torch.float64) for _ in range(2)]
        out = torch.empty(numel, dtype=torch.float64)
        handles = [None, None]
        i = 0
        rss_samples = []
        next_rss = started
        while time.monotonic() < deadline:
            k = i % 2
            if handles[k] is not None:
                handles[k].wait()              # the buffer may still be on the wire
            bufs[k][w], bufs[k][WORKERS + w] = 1.0, float(i)
            handles[k] = client.push(bufs[k], i)
            i += 1
            if i % pull_every == 0:
                client.pull(out, i).wait()
            if time.monotonic() >= next_rss:
                rss_samples.append((time.monotonic() - started, rss_mb()))
                next_rss += progress_s
        for h in handles:
            if h is not None:
                h.wait()
        client.done()
        res.update(pushes=i, index_sum=i * (i - 1) / 2, rss=rss_samples, rss_end_mb=rss_mb())
    t.barrier()
    Path(f"{prefix}.rank{t.rank}.json").write_text(json.dumps(res))
    t.close()


def _growth(samples: list[tuple[float, float]], seconds: float) -> float:
    """RSS growth (MB) from the first sample after the warm-up (10 % of the run) to the end."""
    after = [mb for at, mb in samples if at >= 0.1 * seconds] or [samples[-1][1]]
    return samples[-1][1] - after[0]


PROTOCOL = {"workers": 4, "minutes": 10.0, "numel": 512, "pull_every": 4, "staleness": 4,
            "progress_s": 30.0, "rss_bound_mb": 32.0, "steady_ratio": 0.5}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="about 30 s (same code path)")
    ap.add_argument("--minutes", type=float, default=PROTOCOL["minutes"])
    ap.add_argument("--numel", type=int, default=PROTOCOL["numel"], help="values per push (float64)")
    ap.add_argument("--pull-every", type=int, default=PROTOCOL["pull_every"])
    ap.add_argument("--staleness", type=int, default=PROTOCOL["staleness"], help="SSP staleness bound")
    ap.add_argument("--progress-s", type=float, default=PROTOCOL["progress_s"],
                    help="seconds between progress lines")
    ap.add_argument("--rss-bound-mb", type=float, default=PROTOCOL["rss_bound_mb"])
    ap.add_argument("--steady-ratio", type=float, default=PROTOCOL["steady_ratio"])
    ap.add_argument("--child", metavar="PREFIX", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.seconds, args.numel, args.pull_every, args.staleness, args.progress_s)
        return 0
    if args.quick:
        args.minutes, args.progress_s = 0.5, 3.0
    if args.numel < 2 * WORKERS:
        raise SystemExit(f"--numel must be >= {2 * WORKERS}")
    seconds = args.minutes * 60
    print(f"ps_soak: {WORKERS} workers + 1 server, {args.numel} float64 values per push, "
          f"SSP(s={args.staleness}), pull every {args.pull_every} pushes, {seconds:.0f} s",
          file=sys.stderr, flush=True)
    load_start = round(os.getloadavg()[0], 2)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "soak")
        subprocess.run([sys.executable, "-m", "distml", "launch", "-n", str(WORKERS + 1),
                        "--timeout", "120", __file__, "--child", prefix, "--seconds", str(seconds),
                        "--numel", str(args.numel), "--pull-every", str(args.pull_every),
                        "--staleness", str(args.staleness), "--progress-s", str(args.progress_s)],
                       check=True, timeout=seconds + 300)
        ranks = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(WORKERS + 1)]
    server, workers = ranks[WORKERS], ranks[:WORKERS]

    pushes = [w["pushes"] for w in workers]
    report = server["report"]
    lost = duplicated = 0
    for w, n in enumerate(pushes):
        applied = int(server["count_slots"][w])          # slot w: +1 per applied push of w
        lost += max(0, n - applied)
        duplicated += max(0, applied - n)
        if applied == n and server["index_slots"][w] != workers[w]["index_sum"]:
            lost, duplicated = lost + 1, duplicated + 1   # one push lost, another applied twice
    exactly_once = (lost == 0 and duplicated == 0 and report["pushes_applied"] == sum(pushes)
                    and report["pushes_dropped"] == 0
                    and all(server["clocks"][str(w)] == n for w, n in enumerate(pushes)))

    samples = server["samples"]
    windows = [s for s in samples[2:] if "pushes_per_s" in s]    # after the first window
    rates = [s["pushes_per_s"] for s in windows]
    costs = [s["cpu_us_per_push"] for s in windows]

    third = len(windows) // 3

    def trend(xs: list[float]) -> float | None:
        """Median of the last third over the median of the first third."""
        return statistics.median(xs[-third:]) / statistics.median(xs[:third]) if third else None
    rate_trend, cost_trend = trend(rates), trend(costs)
    loads = [round(statistics.median(s["load"] for s in part), 2) for part in
             (windows[:third], windows[-third:])] if third else [None, None]
    dip = min(rates) / statistics.median(rates) if rates else None
    server_growth = _growth([(s["t"], s["rss_mb"]) for s in samples] + [(server["seconds"],
                                                                         server["rss_end_mb"])],
                            server["seconds"])
    worker_growth = max(_growth(w["rss"] + [(seconds, w["rss_end_mb"])], seconds) for w in workers)
    steady = cost_trend is not None and cost_trend <= 1 / args.steady_ratio
    ok = exactly_once and server_growth <= args.rss_bound_mb and worker_growth <= args.rss_bound_mb and steady
    print(f"ps_soak: windows of {args.progress_s:g} s, pushes/s: {[round(r) for r in rates]}, "
          f"server CPU us/push: {[round(c) for c in costs]}", file=sys.stderr)
    line = {
        "bench": "ps_soak", "ok": ok, "minutes": round(server["seconds"] / 60, 2), "workers": WORKERS,
        "numel": args.numel, "pace": f"ssp{args.staleness}", "pull_every": args.pull_every,
        "pushes": sum(pushes), "pulls": report["pulls"],
        "pushes_per_s": round(sum(pushes) / server["seconds"], 1),
        "exactly_once": exactly_once, "lost": lost, "duplicated": duplicated,
        "pushes_applied": report["pushes_applied"], "pushes_dropped": report["pushes_dropped"],
        "steady": steady,
        "cpu_per_push_last_vs_first_third": None if cost_trend is None else round(cost_trend, 3),
        "server_cpu_us_per_push": round(statistics.median(costs), 1) if costs else None,
        "throughput_last_vs_first_third": None if rate_trend is None else round(rate_trend, 3),
        "throughput_min_over_median": None if dip is None else round(dip, 3),
        "load_first_third": loads[0], "load_last_third": loads[1],
        "throughput_windows": len(rates),
        "server_rss_mb": round(server["rss_end_mb"], 1), "server_rss_growth_mb": round(server_growth, 2),
        "worker_rss_growth_mb_max": round(worker_growth, 2), "rss_bound_mb": args.rss_bound_mb,
        "loadavg_start": load_start, "loadavg_end": round(os.getloadavg()[0], 2),
    }
    line["headline"] = (f"{sum(pushes):,} pushes in {server['seconds'] / 60:.1f} min, "
                        + ("exactly once" if exactly_once else f"{lost} lost, {duplicated} duplicated")
                        + f"; server memory +{server_growth:.2f} MB; "
                        + ("all checks passed" if ok else "a check FAILED"))
    protocol = {**PROTOCOL, "minutes": args.minutes, "numel": args.numel,
                "pull_every": args.pull_every, "staleness": args.staleness,
                "progress_s": args.progress_s, "rss_bound_mb": args.rss_bound_mb,
                "steady_ratio": args.steady_ratio}
    return finish(line, protocol, quick=args.quick,
                  details={"rates": rates, "cpu_us_per_push": costs, "loadavg": os.getloadavg()})


if __name__ == "__main__":
    sys.exit(main())
