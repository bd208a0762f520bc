"""Pace strategies of the parameter server under stragglers: time to a test accuracy.

Fashion-MNIST, an MLP (784-128-10), 3 workers + 1 server process, plain SGD (lr 0.1) on
the server (gradient pushes, batch 64 per worker; asynchronous paces apply each push
with weight 1/3, so all paces share one learning rate). Strategies: BSP, SSP (s = 2, 4), ASP,
and backup workers (BSP with a quorum of 2 of 3). Scenarios (``[faults]``, see
``src/distml/runtime/faults.py``):

1. *persistent* — worker 2 is always 3× slower;
2. *transient* — every step of every worker is 3× slower with probability 1/3;
3. *calm* — no injected delay.

On our 2-core machines 4 processes contend for the CPU, so every step's compute is held
at ``compute_s`` (20 ms) with a sleep (``faults.compute_s``): what is measured is the
pace, not CPU contention. The slow steps scale that fixed time. Each configuration runs
``--repeats`` times (fresh processes each time, strategies interleaved within a repeat);
``time_to_target`` is rank 0's wall time at the first evaluation (every ``eval_every``
steps of rank 0) that reaches ``--target``; medians are reported.

Also measured (``distml launch -n 2`` of this file in child mode): the server's
throughput — pushes/s and bytes/s of a 1M-parameter (4 MB) float32 model pushed by one
worker — against the raw transport bandwidth (blocking send/recv of the same 4 MB
tensor between the same two processes), in the same run.

    python bench/stragglers.py --repeats 3      # the documented run (docs/benchmarks.md)
    python bench/stragglers.py --quick          # smoke check: same code path, lower target

Ends by printing one JSON line (docs/design.md §5) with ``backup_vs_bsp_persistent``,
``asp_vs_bsp_persistent``, ``ssp_vs_bsp_persistent``, ``ssp_vs_bsp_transient``,
``ssp_vs_bsp_calm`` (ratios of median times to target; SSP means s = 4) and
``ps_vs_raw_bandwidth``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STRATEGIES = {
    "bsp": {"pace": "bsp"},
    "ssp2": {"pace": {"name": "ssp", "staleness": 2}},
    "ssp4": {"pace": {"name": "ssp", "staleness": 4}},
    "asp": {"pace": "asp"},
    "backup": {"pace": "bsp", "quorum": 2},
}
SCENARIOS = {
    "persistent": ({"straggler": {"ranks": [2], "slowdown": 3.0}}, list(STRATEGIES)),
    "transient": ({"delay": {"name": "bernoulli", "p": 1 / 3, "slowdown": 3.0}},
                  ["bsp", "ssp2", "ssp4"]),
    "calm": ({}, ["bsp", "ssp4"]),
}


def config(strategy: str, faults: dict, args, seed: int) -> dict:
    return {
        "name": f"stragglers-{strategy}", "seed": seed, "workers": 3,
        "data": {"source": {"name": "fashion_mnist"},
                 "partition": {"name": "shuffle_split", "reshuffle": "global"}, "batch_size": 64},
        "model": {"name": "mlp", "hidden": [128]},
        "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.0},
        "algorithm": {"name": "ps", "servers": 1, **STRATEGIES[strategy]},
        "comm": {"timeout_s": 120},
        "train": {"epochs": 5, "max_steps": args.max_steps, "eval_every": args.eval_every,
                  "target_accuracy": args.target, "stop_at_target": True, "progress": False,
                  "log_every": 50},
        "faults": {"compute_s": args.compute_s, **faults},
    }


def one_run(cfg: dict) -> dict:
    import distml
    with tempfile.TemporaryDirectory() as tmp:
        s = distml.run(cfg, out=Path(tmp) / "run")
    return {"time_to_target": s["time_to_target"], "wall_seconds": s["wall_seconds"],
            "steps": s["steps"], "test_accuracy": s["test_accuracy"],
            "staleness_max": s["ps"]["staleness_max"],
            "dropped": s["ps"]["pushes_dropped"][0], "wait_seconds": s["wait_seconds"]}


# ---- server throughput (child mode, under `distml launch -n 2`) ---------------------------
def throughput_child(out: str, n: int) -> None:
    import torch

    import distml
    from distml.comm.pace import make_pace
    from distml.comm.ps import PSClient, ServerLoop

    t = distml.init(timeout_s=60)
    numel = 1 << 20
    x = torch.randn(numel)
    res = {}
    # raw transport: the same tensor, blocking send/recv, the same two processes
    t.barrier()
    t0 = time.perf_counter()
    for _ in range(n):
        if t.rank == 0:
            t.send(x, 1)
        else:
            t.recv(x, 0)
    t.barrier()
    res["raw_bytes_per_s"] = n * x.numel() * 4 / (time.perf_counter() - t0)

    class Add:
        def __call__(self, params, total, count, aux):
            params.add_(total)

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    t.barrier()
    t0 = time.perf_counter()
    if t.rank == 1:
        server = ServerLoop(t, 0, torch.zeros(numel), [0], make_pace("asp"), Add())
        res["server"] = server.run()
    else:
        client = PSClient(t, [1], [(0, numel)])
        bufs, handles = [x.clone(), x.clone()], [None, None]
        for i in range(n):
            if handles[i % 2] is not None:
                handles[i % 2].wait()
            handles[i % 2] = client.push(bufs[i % 2], i)
        for h in handles:
            if h is not None:
                h.wait()
        client.done(torch.empty(numel))       # answered after every push was applied
        elapsed = time.perf_counter() - t0
        res.update(pushes_per_s=n / elapsed, ps_bytes_per_s=n * numel * 4 / elapsed)
    t.barrier()
    Path(f"{out}.rank{t.rank}.json").write_text(json.dumps(res))
    t.close()


def throughput(n: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "tp")
        subprocess.run([sys.executable, "-m", "distml", "launch", "-n", "2", __file__,
                        "--throughput-child", prefix, "--pushes", str(n)], check=True, timeout=300)
        r0 = json.loads(Path(f"{prefix}.rank0.json").read_text())
    return {"pushes_per_s": r0["pushes_per_s"], "ps_bytes_per_s": r0["ps_bytes_per_s"],
            "raw_bytes_per_s": r0["raw_bytes_per_s"],
            "ps_vs_raw_bandwidth": r0["ps_bytes_per_s"] / r0["raw_bytes_per_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: target 0.75, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--target", type=float, default=0.85)
    ap.add_argument("--compute-s", type=float, default=0.02)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--max-steps", type=int, default=3000)
    ap.add_argument("--pushes", type=int, default=50)
    ap.add_argument("--throughput-child", metavar="PREFIX", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.throughput_child:
        throughput_child(args.throughput_child, args.pushes)
        return
    if args.quick:
        args.repeats, args.target, args.pushes = 1, 0.75, 20
    times: dict[tuple[str, str], list[dict]] = {}
    for rep in range(args.repeats):
        for scenario, (faults, strategies) in SCENARIOS.items():
            for strategy in strategies:
                r = one_run(config(strategy, faults, args, seed=rep))
                times.setdefault((scenario, strategy), []).append(r)
                print(f"repeat {rep} {scenario:10s} {strategy:6s} "
                      + " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in r.items()), file=sys.stderr, flush=True)

    def median(scenario: str, strategy: str, key: str = "time_to_target") -> float | None:
        vals = [r[key] for r in times[(scenario, strategy)] if r[key] is not None]
        return statistics.median(vals) if vals else None

    def ratio(scenario: str, strategy: str) -> float | None:
        a, b = median(scenario, strategy), median(scenario, "bsp")
        return round(a / b, 3) if a is not None and b else None

    table = {f"{sc}/{st}": {"time_to_target": median(sc, st), "wall_seconds": median(sc, st, "wall_seconds"),
                            "reached": sum(r["time_to_target"] is not None for r in times[(sc, st)]),
                            "staleness_max": max(r["staleness_max"] for r in times[(sc, st)]),
                            "dropped": median(sc, st, "dropped"), "steps": median(sc, st, "steps")}
             for sc, st in times}
    print(json.dumps(table, indent=1), file=sys.stderr)
    tp = throughput(args.pushes)
    print(json.dumps({
        "bench": "stragglers", "target": args.target, "repeats": args.repeats,
        "compute_s": args.compute_s,
        "backup_vs_bsp_persistent": ratio("persistent", "backup"),
        "asp_vs_bsp_persistent": ratio("persistent", "asp"),
        "ssp_vs_bsp_persistent": ratio("persistent", "ssp4"),
        "ssp2_vs_bsp_persistent": ratio("persistent", "ssp2"),
        "ssp_vs_bsp_transient": ratio("transient", "ssp4"),
        "ssp2_vs_bsp_transient": ratio("transient", "ssp2"),
        "ssp_vs_bsp_calm": ratio("calm", "ssp4"),
        "bsp_seconds": {sc: median(sc, "bsp") for sc in SCENARIOS},
        "pushes_per_s": round(tp["pushes_per_s"], 1),
        "ps_bytes_per_s": round(tp["ps_bytes_per_s"]),
        "raw_bytes_per_s": round(tp["raw_bytes_per_s"]),
        "ps_vs_raw_bandwidth": round(tp["ps_vs_raw_bandwidth"], 3),
    }))


if __name__ == "__main__":
    main()
