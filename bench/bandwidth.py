"""Time to accuracy on a slow network: fp32 sync SGD vs communication-efficient training.

Two hosts in network namespaces (``distml.runtime.testbed``), each host's egress capped
at 100 Mbit/s with tc tbf; one worker per host, started by torchrun with c10d rendezvous
(as on a cluster). Fashion-MNIST, the MLP 784-512-512-10, SGD with Nesterov momentum,
lr 0.05 decayed by a cosine over the run, batch 64 per worker (bench/compression.py's
recipe). The protocol (``PROTOCOL``) is fixed before the run. Per seed, fp32 sync SGD
trains the whole run first; its final test accuracy − 0.5 points is that seed's
**target**, and fp32's time to target is the wall time of its first evaluation at or
above it. Every candidate then trains with the same seed until it reaches that target
(``stop_at_target``; evaluation every ``eval_every`` steps, a multiple of local SGD's
period, so local SGD is scored on the freshly averaged model; evaluation time is
excluded from the clock, docs/design.md §5). Configurations run interleaved within a
seed. Needs root (namespaces); deletes everything it creates.

    python bench/bandwidth.py                  # the documented run (docs/benchmarks.md)
    python bench/bandwidth.py --quick          # smoke check: 1 seed, 0.3 epoch, same code path

Ends with one JSON line (docs/design.md §5)::

    {"bench": "bandwidth", "speedup": ..., "speedup_ci": [lo, hi], "best": "...",
     "time_to_target": {...}, "headline": "..."}

``speedup`` = fp32's time to target ÷ the best configuration's (the one with the lowest
mean time among those that reached the target on every seed), the geometric mean of the
per-seed ratios with its 95% interval (``ratio_ci``). The goal (≥ 20×) counts as met
only when the interval's lower end is ≥ 20.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import finish, interval, ratio_ci, table  # noqa: E402
from compression import METHODS, config_text  # noqa: E402  (one place for the method table)

from distml.runtime.testbed import can_make_namespaces, hosts  # noqa: E402

PROTOCOL = {
    "rate": "100mbit",
    "model": "mlp (784-512-512-10)",
    "optimizer": "sgd lr 0.05, Nesterov momentum 0.9, cosine to 0 over the run (bench/compression.py)",
    "batch_size": 64,
    "epochs": 2.0,
    "seeds": [0, 1, 2],
    "eval_every": 48,                  # a multiple of H = 16: local SGD scored after averaging
    "target": "per seed: fp32's final test accuracy - 0.005",
    "candidates": ["local_h16_sign_ef", "local_h16_powersgd_r2", "powersgd_r2",
                   "local_sgd_h16_pipeline"],
    "tuning": "none: every configuration with the same optimizer (a grid of one)",
    "goal": "speedup >= 20: the 95% interval's lower end >= 20",
}
QUICK = {"epochs": 0.3, "seeds": [0], "eval_every": 16}


def run_on_testbed(hs, cfg: Path, out: Path, timeout: float) -> dict:
    """One torchrun job across the hosts; returns rank 0's summary."""
    port = random.randint(29600, 29900)
    master = hs[0].addr
    procs = []
    try:
        for node, h in enumerate(hs):
            env = dict(os.environ, GLOO_SOCKET_IFNAME=h.iface, PYTHONUNBUFFERED="1",
                       OMP_NUM_THREADS="1")
            cmd = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "torch.distributed.run",
                   "--nnodes", str(len(hs)), "--nproc-per-node", "1", "--node-rank", str(node),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master}:{port}",
                   "--rdzv-id", f"bw{port}", "--max-restarts", "0",
                   # every namespace shares the hostname: say who hosts the store
                   "--rdzv-conf", f"is_host={1 if node == 0 else 0}", "--local-addr", h.addr,
                   "-m", "distml", "run", str(cfg), "--out", str(out / f"host{node}")]
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True, cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            time.sleep(0.5)
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait(10)
    if any(p.returncode != 0 for p in procs):
        raise SystemExit("a run failed:\n" + "\n=====\n".join(log[-2000:] for log in logs))
    return json.loads((out / "host0" / "summary.json").read_text())


def first_reaching(run_dir: Path, target: float) -> float | None:
    """Wall time (evaluations excluded) of the first evaluation at or above ``target``."""
    for line in (run_dir / "eval.jsonl").read_text().splitlines():
        row = json.loads(line) if line.strip() else {}
        if (row.get("test_accuracy") or 0) >= target:
            return row["wall_seconds"]
    return None


def config(name: str, seed: int, p: dict, target: float | None) -> str:
    algorithm, comm = METHODS[name]
    text = config_text("mlp", algorithm, comm, seed, p["epochs"])
    stop = f"\ntarget_accuracy = {target}\nstop_at_target = true" if target is not None else ""
    return text.replace("eval_every = 0", f"eval_every = {p['eval_every']}{stop}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 0.3 epoch: a smoke check")
    args = ap.parse_args()
    reason = can_make_namespaces()
    if reason:
        raise SystemExit(f"bench/bandwidth.py needs network namespaces: {reason}")
    p = {**PROTOCOL, **(QUICK if args.quick else {})}
    from distml.algorithms import ALGORITHMS
    names = ["fp32"]
    for c in p["candidates"]:
        algorithm, comm = METHODS[c]
        if comm.get("codec") and "codec" not in ALGORITHMS.parameters(algorithm["name"]):
            raise SystemExit(f"{c}: {algorithm['name']} takes no comm.codec in this version")
        names.append(c)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    load = [os.getloadavg()]
    with tempfile.TemporaryDirectory(prefix="distml-bw-") as tmp, hosts(2, rate=p["rate"]) as hs:
        for seed in p["seeds"]:                   # interleaved: load hits every configuration alike
            target = None
            for name in names:
                cfg = Path(tmp) / f"{name}-{seed}.toml"
                cfg.write_text(config(name, seed, p, target))
                out = Path(tmp) / f"{name}-{seed}"
                t0 = time.perf_counter()
                s = run_on_testbed(hs, cfg, out, timeout=3600)
                if name == "fp32":
                    target = round(s["test_accuracy"] - 0.005, 4)
                    ttt = first_reaching(out / "host0", target)
                else:
                    ttt = s["time_to_target"]
                runs[name].append({"seed": seed, "target": target, "time_to_target": ttt,
                                   "steps": s["steps"], "wall_seconds": s["wall_seconds"],
                                   "test_accuracy": s["test_accuracy"],
                                   "mb_sent": s["bytes_sent"] / 1e6})
                print(f"  seed {seed} {name:24s} time to {target}: {ttt}  steps {s['steps']}  "
                      f"wall {s['wall_seconds']:.1f}s  acc {s['test_accuracy']:.4f}  "
                      f"{s['bytes_sent'] / 1e6:.1f} MB ({time.perf_counter() - t0:.0f}s total)",
                      file=sys.stderr, flush=True)
            load.append(os.getloadavg())

    def times(name):
        return [r["time_to_target"] for r in runs[name]]
    reached = [n for n in names if all(t is not None for t in times(n))]
    best = min((n for n in reached if n != "fp32"), key=lambda n: sum(times(n)), default=None)
    speedup = ratio_ci(times("fp32"), times(best)) if best and "fp32" in reached else None
    rows = []
    for n in names:
        ts = times(n)
        ok = [t for t in ts if t is not None]
        ttt = interval(ok, 2) if ok else None
        ratio = ratio_ci(times("fp32"), ts) if n != "fp32" and len(ok) == len(ts) and "fp32" in reached else None
        rows.append([n, f"{ttt['mean']:.2f} [{ttt['ci95'][0]:.2f}, {ttt['ci95'][1]:.2f}]" if ttt else "—",
                     f"{len(ok)} of {len(ts)}",
                     f"{ratio[0]:.1f} [{ratio[1]:.1f}, {ratio[2]:.1f}]" if ratio else "—",
                     round(sum(r["steps"] for r in runs[n]) / len(runs[n])),
                     round(sum(r["mb_sent"] for r in runs[n]) / len(runs[n]), 1),
                     ", ".join(f"{r['test_accuracy']:.4f}" for r in runs[n])])
    targets = [r["target"] for r in runs["fp32"]]
    met = speedup is not None and speedup[1] >= 20
    line = {"bench": "bandwidth", "rate": p["rate"], "target": targets, "quick": args.quick,
            "speedup": None if speedup is None else round(speedup[0], 2),
            "speedup_ci": None if speedup is None else [round(speedup[1], 2), round(speedup[2], 2)],
            "best": best,
            "time_to_target": {n: interval([t for t in times(n) if t is not None], 2)["mean"]
                               if any(t is not None for t in times(n)) else None for n in names},
            "steps": {n: [r["steps"] for r in runs[n]] for n in names},
            "wall_seconds": {n: [round(r["wall_seconds"], 2) for r in runs[n]] for n in names},
            "mb_sent": {n: round(sum(r["mb_sent"] for r in runs[n]) / len(runs[n]), 2) for n in names}}
    line["headline"] = (f"{best} {speedup[0]:.1f}× [{speedup[1]:.1f}, {speedup[2]:.1f}] faster than "
                        f"fp32 to fp32's final accuracy − 0.5 points at {p['rate']}; goal ≥ 20×: "
                        + ("met" if met else "not met (the interval's lower end is below 20)")
                        if speedup else "no configuration reached the target on every seed")
    details = {"runs": runs, "loadavg": load, "tables": [table(
        f"Time to fp32's final accuracy − 0.5 points at {p['rate']} (seconds, mean [95% CI] over "
        f"{len(p['seeds'])} seeds; evaluation excluded)",
        ["configuration", "time to target (s)", "reached", "speedup vs fp32", "steps (mean)",
         "MB sent (both workers, mean)", "final accuracy per seed"], rows)]}
    return finish(line, p, quick=args.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
