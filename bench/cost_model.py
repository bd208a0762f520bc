"""Validate ``distml simulate``'s cost model against step times measured on a slow network.

The model (``distml.runtime.simulate``; formulas in docs/benchmarks.md and the module's
docstring) is calibrated from one **profile run** per method: 2 workers on namespace
hosts whose links are *not* rate-limited (as a user profiles on the machine at hand).
From it come compute seconds per step, bytes and calls per step per collective kind, and
the software latency per message hop. The model then **predicts** the step time of the
same method on other configurations, which are run and measured: hosts in network
namespaces (``distml.runtime.testbed``), each host's egress capped with tc tbf at every
``--rates`` value, ``--workers`` workers (one per host, under torchrun as on a cluster).

Workload: Fashion-MNIST, the MLP 784-512-512-10 (2.68 MB of fp32 gradients), momentum
SGD, batch 64 per worker. Every step's compute is held at ``--compute-s`` with a sleep
(``[faults] compute_s``): 3 processes on 2 cores would otherwise measure CPU contention,
not the network. Methods: ``sync_sgd`` (fp32 ring all-reduce) and ``sync_sgd`` with the
``qsgd`` 4-bit codec (not summable: two all-gathers per step, 8× fewer bytes).

**Measured step time** = on rank 0, the median over logging intervals (``log_every``
steps each; the first interval is warm-up and dropped) of Δ wall seconds / Δ steps from
``events-rank0.jsonl``. Wall seconds exclude evaluation (docs/design.md §5); the run evaluates
only at its end. With ``--repeats R`` every configuration (profiles included) runs R
times, interleaved; the figure is the median of the R measurements, and the prediction
the median of the R profiles' predictions. Relative error = |predicted − measured| /
measured. Needs root (namespaces); deletes everything it creates.

    python bench/cost_model.py --repeats 3     # the documented run (~15 min)
    python bench/cost_model.py --quick         # smoke check: 200mbit, 3 workers, same path

Ends with one JSON line (docs/design.md §5)::

    {"bench": "cost_model", "max_relative_error": ..., "errors": {...}, ...}
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from bandwidth import run_on_testbed  # noqa: E402  (torchrun across namespace hosts)
from compression import toml_value  # noqa: E402

from distml.runtime import simulate  # noqa: E402
from distml.runtime.testbed import can_make_namespaces, hosts, limit  # noqa: E402

#: method → (algorithm table, comm table)
METHODS = {
    "sync_sgd": ({"name": "sync_sgd"}, {}),
    "qsgd_4bit": ({"name": "sync_sgd"}, {"codec": {"name": "qsgd", "bits": 4}}),
    "powersgd_r2": ({"name": "sync_sgd"}, {"codec": {"name": "powersgd", "rank": 2}}),
}
#: model variants reported next to the full model, each adding one correction to the last
VARIANTS = {"plain": {"efficiency": 1.0, "alpha_sw": 0.0, "gloo": False},   # textbook α–β, α = 0
            "goodput": {"alpha_sw": 0.0, "gloo": False},                    # + TCP goodput η
            "alpha_sw": {"gloo": False},                                     # + software latency
            "full": {}}                                                      # + gloo's 2-worker all-gather


def config_text(method: str, workers: int, steps: int, log_every: int, compute_s: float,
                seed: int) -> str:
    algorithm, comm = METHODS[method]
    lines = ['name = "cost-model"', f"seed = {seed}", f"workers = {workers}", "[data]",
             'source = { name = "fashion_mnist" }', "batch_size = 64", "[model]", 'name = "mlp"',
             "[optim]", 'name = "sgd"', "lr = 0.05", "momentum = 0.9", "[algorithm]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in algorithm.items()]
    lines += ["[comm]", "timeout_s = 300"] + [f"{k} = {toml_value(v)}" for k, v in comm.items()]
    lines += ["[train]", "epochs = 1", f"max_steps = {steps}", f"eval_every = {steps}",
              f"log_every = {log_every}", "progress = false", "[faults]", f"compute_s = {compute_s}"]
    return "\n".join(lines) + "\n"


def measured_step(run_dir: Path) -> float:
    """Median seconds per step over rank 0's logging intervals, the first one dropped."""
    events = [json.loads(line) for line in (run_dir / "events-rank0.jsonl").read_text().splitlines()
              if line.strip()]
    events = [e for e in events if "compute_seconds" in e]
    per = [(b["wall_seconds"] - a["wall_seconds"]) / (b["step"] - a["step"])
           for a, b in zip(events[1:], events[2:])]
    if not per:
        raise SystemExit(f"{run_dir}: too few logged intervals; raise --steps")
    return statistics.median(per)


def unlimit(hs) -> None:
    """Remove the rate limit of every host (back to the default qdisc)."""
    for h in hs:
        subprocess.run(["ip", "netns", "exec", h.ns, "tc", "qdisc", "del", "dev", h.iface, "root"],
                       capture_output=True)


def run(hs, method: str, n: int, args, tmp: Path, tag: str, seed: int) -> Path:
    """One torchrun job of ``method`` on the first ``n`` hosts; returns rank 0's run folder."""
    cfg = tmp / f"{tag}.toml"
    cfg.write_text(config_text(method, n, args.steps, args.log_every, args.compute_s, seed))
    out = tmp / tag
    for attempt in (1, 2):          # a rendezvous port taken by a dying run: retry once
        try:
            run_on_testbed(hs[:n], cfg, out, timeout=1800)
            return out / "host0"
        except SystemExit as e:
            if attempt == 2:
                raise
            print(f"  {tag}: failed, retrying once ({str(e).splitlines()[0]})", file=sys.stderr)
            time.sleep(2)
    raise AssertionError("unreachable")


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one rate, 3 workers, fewer steps")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--rates", default=None, help="comma-separated tc rates (default 50mbit,200mbit)")
    ap.add_argument("--workers", default=None, help="comma-separated worker counts (default 2,3)")
    ap.add_argument("--methods", default="sync_sgd,qsgd_4bit")
    ap.add_argument("--steps", type=int, default=None, help="steps per run (default 60; quick 30)")
    ap.add_argument("--log-every", type=int, default=5)
    ap.add_argument("--compute-s", type=float, default=0.05, help="per-step compute, held by a sleep")
    args = ap.parse_args()
    reason = can_make_namespaces()
    if reason:
        raise SystemExit(f"bench/cost_model.py needs network namespaces: {reason}")
    rates = (args.rates or ("200mbit" if args.quick else "50mbit,200mbit")).split(",")
    workers = [int(w) for w in (args.workers or ("3" if args.quick else "2,3")).split(",")]
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    args.steps = args.steps or (30 if args.quick else 60)
    t_start = time.perf_counter()
    profiles: dict[str, list[dict]] = {m: [] for m in methods}
    measured: dict[tuple, list[float]] = {}
    loads = [load()]
    print(f"cost model: rates {rates}, workers {workers}, methods {methods}, {args.steps} steps, "
          f"compute {args.compute_s * 1e3:.0f} ms, {args.repeats} repeat(s); load {loads[0]}",
          file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="distml-cm-") as tmp_s, \
            hosts(max(workers + [2])) as hs:
        tmp = Path(tmp_s)
        for rep in range(args.repeats):
            unlimit(hs)
            for m in methods:
                prof = simulate.profile(run(hs, m, 2, args, tmp, f"profile-{m}-{rep}", rep))
                prof["alpha_sw"] = simulate.software_alpha(prof)
                profiles[m].append(prof)
                print(f"  [{rep}] profile {m:10s} compute {prof['compute_per_step'] * 1e3:6.1f} ms/step, "
                      f"comm {prof['comm_per_step'] * 1e3:5.1f} ms/step, "
                      f"{prof['bytes_per_step'] / 1e3:8.1f} kB/step, ops {prof['ops']}, "
                      f"α_sw {prof['alpha_sw'] * 1e3:.2f} ms  (load {load()})", file=sys.stderr, flush=True)
            for rate in rates:
                for h in hs:
                    limit(h.ns, h.iface, rate)
                for n in workers:
                    for m in methods:
                        d = run(hs, m, n, args, tmp, f"{m}-{rate}-{n}-{rep}", rep)
                        t = measured_step(d)
                        measured.setdefault((m, rate, n), []).append(t)
                        pred = simulate.predict_step(profiles[m][-1], n, simulate.parse_bandwidth(rate))
                        print(f"  [{rep}] {m:10s} {rate:>8s} {n} workers: measured {t * 1e3:7.1f} ms/step, "
                              f"predicted {pred * 1e3:7.1f}  ({(pred - t) / t:+.1%}; load {load()})",
                              file=sys.stderr, flush=True)
            loads.append(load())
    rows = []
    for (m, rate, n), ts in measured.items():
        bw = simulate.parse_bandwidth(rate)
        meas = statistics.median(ts)
        row = {"method": m, "rate": rate, "workers": n, "measured": meas, "measured_all": ts}
        for name, kw in VARIANTS.items():
            pred = statistics.median(simulate.predict_step(p, n, bw, **kw) for p in profiles[m])
            row[name] = pred
            row[f"{name}_error"] = abs(pred - meas) / meas
        rows.append(row)
    print("\n| method | rate | workers | measured ms/step (per repeat) | predicted | error "
          "| plain α–β (error) | + goodput η | + α_sw | + gloo all-gather = predicted |",
          file=sys.stderr)
    print("|---|---|---|---|---|---|---|---|---|---|", file=sys.stderr)
    for r in rows:
        steps = " | ".join(f"{r[v] * 1e3:.1f} ({r[f'{v}_error']:.1%})" for v in VARIANTS)
        print(f"| {r['method']} | {r['rate']} | {r['workers']} | {r['measured'] * 1e3:.1f} "
              f"({', '.join(f'{t * 1e3:.0f}' for t in r['measured_all'])}) | {r['full'] * 1e3:.1f} | "
              f"**{r['full_error']:.1%}** | {steps} |", file=sys.stderr)
    key = lambda r: f"{r['method']}/{r['rate']}/{r['workers']}w"  # noqa: E731
    print(json.dumps({
        "bench": "cost_model", "quick": args.quick, "repeats": args.repeats,
        "max_relative_error": round(max(r["full_error"] for r in rows), 4),
        "max_relative_error_by_variant": {v: round(max(r[f"{v}_error"] for r in rows), 4)
                                          for v in VARIANTS},
        "errors": {key(r): round(r["full_error"], 4) for r in rows},
        "signed_errors": {key(r): round((r["full"] - r["measured"]) / r["measured"], 4) for r in rows},
        "measured_ms": {key(r): round(r["measured"] * 1e3, 1) for r in rows},
        "predicted_ms": {key(r): round(r["full"] * 1e3, 1) for r in rows},
        "efficiency": round(simulate.wire_efficiency(), 4),
        "alpha_sw_ms": {m: round(statistics.median(p["alpha_sw"] for p in ps) * 1e3, 2)
                        for m, ps in profiles.items()},
        "compute_s": args.compute_s, "steps": args.steps, "rates": rates, "workers": workers,
        "load_average": loads, "bench_seconds": round(time.perf_counter() - t_start)}))


if __name__ == "__main__":
    main()
