"""Judge ``distml simulate``'s cost model on configurations it was not fitted on (issue 16, point 7).

The model's structure (``distml.runtime.simulate``: TCP goodput η, a software latency
α_sw per message hop calibrated from a profile, gloo's 2-worker all-gather) was fitted on
8 configurations: sync SGD and QSGD 4 bit × 50 and 200 Mbit/s × 2 and 3 workers, compute
held at 50 ms by a sleep (max relative error 7.9 %, the protocol of this file before
issue 16). It is **not re-fitted here**. It is judged on held-out configurations that
differ in every respect the fit did not see: 4 and 6 hosts; PowerSGD rank 2, top-k 1 %,
the parameter server (BSP, 1 server on its own host) and gossip on a ring; a transport
latency (``[comm] latency_ms``, a sleep before every call); real compute (the MLP's own
forward and backward, no sleep); links capped both ways (a switch port).

Per method, a **profile run** (2 workers on unlimited links, no latency, as a user
profiles on the machine at hand) calibrates compute per step, bytes and calls per step
and α_sw; the model then predicts each held-out configuration. **Measured** = rank 0's
mean step time from the end of the first logging interval (warm-up) to the last; its
communication = that minus the run's own mean compute per step; the predicted
communication is ``simulate.predict_comm``. Relative error = |predicted − measured| /
measured, per repeat (profiles and runs paired by repeat), mean and 95 % interval over
repeats. The goal (≤ 20 %, communication only, every held-out configuration) is met only
where the interval's upper end meets it. Needs root (namespaces); deletes what it creates.

    python bench/cost_model.py           # the documented run (3 repeats)
    python bench/cost_model.py --quick   # smoke check: 4 hosts, 1 repeat, same code path
"""

from __future__ import annotations

PROTOCOL = {
    "fitted_on": "sync_sgd and qsgd_4bit x 50/200 Mbit/s x 2/3 workers, compute held at 50 ms "
                 "(8 configurations; structure unchanged since, not re-fitted)",
    "data": {"name": "fashion_mnist"}, "model": {"name": "mlp"},      # 784-512-512-10, 2.68 MB
    "batch_size": 64, "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "rate": "200mbit", "both_ways": True, "latency_ms": 2.0,
    "hosts": [4, 6],                    # processes: the PS has hosts − 1 workers and 1 server
    "methods": {
        "powersgd_r2": {"algorithm": {"name": "sync_sgd"}, "comm": {"codec": {"name": "powersgd", "rank": 2}}},
        "topk_1pct": {"algorithm": {"name": "sync_sgd"},
                      "comm": {"codec": {"name": "topk", "ratio": 0.01}, "error_feedback": True}},
        "ps": {"algorithm": {"name": "ps", "servers": 1}},
        "gossip_ring": {"algorithm": {"name": "gossip", "graph": "ring"}},
    },
    "steps": 30, "log_every": 5, "repeats": 3, "seed": 0,
    # the model and its simpler variants, each adding one correction to the last (as fitted);
    # the goal is judged on "full"
    "variants": {"plain": {"efficiency": 1.0, "alpha_sw": 0.0, "gloo": False},   # textbook α–β, α = 0
                 "goodput": {"alpha_sw": 0.0, "gloo": False},                    # + TCP goodput η
                 "alpha_sw": {"gloo": False},                                     # + software latency
                 "full": {}},                                                     # + gloo's 2-worker all-gather
    "goal": {"max_relative_error_comm": 0.20},
    # the step's compute: the profile's, slowed by ranks / cores where the ranks outnumber the
    # machine's cores (simulate.compute_per_step; issue 17). The communication is unaffected.
    "shared_cores": True,
    "quick": {"hosts": [4], "steps": 15, "repeats": 1},
}

import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import finish, interval, table  # noqa: E402
from worlds import Session, add_cell, by_key, load, mean_step, measured_step, run_worlds  # noqa: E402

from distml.runtime import simulate  # noqa: E402


def config(p: dict, method: dict, workers: int, seed: int, latency_ms: float) -> dict:
    return {"name": "cost-model", "seed": seed, "workers": workers,
            "data": {"source": p["data"], "batch_size": p["batch_size"]}, "model": p["model"],
            "optim": p["optim"], "algorithm": method["algorithm"],
            "comm": {"timeout_s": 300, "latency_ms": latency_ms, **method.get("comm", {})},
            "train": {"max_steps": p["steps"], "epochs": 100, "eval_every": p["steps"],
                      "log_every": p["log_every"], "progress": False}}


def workers_on(method: dict, hosts: int) -> int:
    return hosts - 1 if method["algorithm"]["name"] == "ps" else hosts


def main() -> int:
    run = Session("cost_model", __doc__, PROTOCOL, "4 hosts, 1 repeat: a smoke check")
    p, log = run.p, run.log
    bw = simulate.parse_bandwidth(p["rate"])
    cores = os.cpu_count() if p["shared_cores"] else None
    rows, comm_err, step_err, signed, by_variant = [], {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="distml-cm-") as tmp_s:
        tmp = Path(tmp_s)
        worlds: dict = {}
        for rep in range(p["repeats"]):
            for m, method in p["methods"].items():
                add_cell(worlds, tmp, f"profile/{m}", config(p, method, 2, p["seed"] + rep, 0.0), rep,
                         limited=False)
                for h in p["hosts"]:
                    add_cell(worlds, tmp, f"{m}/{h}", config(p, method, workers_on(method, h),
                                                             p["seed"] + rep, p["latency_ms"]), rep)
        log(f"cost model (held out): {sum(len(c) for c in worlds.values())} cells; load {load()}")
        run_worlds(worlds, tmp, p["rate"], p["both_ways"], log)
        cells = by_key(worlds)
        for m, method in p["methods"].items():
            profiles = [simulate.profile(Path(c["out"])) for c in cells[f"profile/{m}"]]
            for h in p["hosts"]:
                key, n = f"{m}/{h}", workers_on(method, h)
                meas = [mean_step(Path(c["out"])) for c in cells[key]]
                pred_comm = [simulate.predict_comm(profiles[c["rep"]], n, bw,
                                                   call_latency=p["latency_ms"] / 1e3) for c in cells[key]]
                # every rank on this one machine: compute slows where ranks outnumber its cores
                pred_step = [simulate.compute_per_step(profiles[c["rep"]], n, cores) + pc
                             for c, pc in zip(cells[key], pred_comm)]
                e_comm = [abs(pc - (s - c)) / (s - c) for pc, (s, c) in zip(pred_comm, meas)]
                e_step = [abs(ps - s) / s for ps, (s, _) in zip(pred_step, meas)]
                by_variant[key] = {v: round(statistics.fmean(
                    abs(simulate.predict_comm(profiles[c["rep"]], n, bw, call_latency=p["latency_ms"] / 1e3, **kw)
                        - (s - k)) / (s - k) for c, (s, k) in zip(cells[key], meas)), 4)
                    for v, kw in p["variants"].items()}
                comm_err[key], step_err[key] = interval(e_comm), interval(e_step)
                signed[key] = round(statistics.fmean((pc - (s - c)) / (s - c)
                                                     for pc, (s, c) in zip(pred_comm, meas)), 4)
                ms = statistics.fmean(s for s, _ in meas)
                mc = statistics.fmean(s - c for s, c in meas)
                rows.append([m, h, n, f"{ms * 1e3:.0f}", f"{statistics.fmean(pred_step) * 1e3:.0f}",
                             f"{step_err[key]['mean']:.1%} [{step_err[key]['ci95'][0]:.1%}, "
                             f"{step_err[key]['ci95'][1]:.1%}]",
                             f"{mc * 1e3:.0f}", f"{statistics.fmean(pred_comm) * 1e3:.0f}",
                             f"{comm_err[key]['mean']:.1%} [{comm_err[key]['ci95'][0]:.1%}, "
                             f"{comm_err[key]['ci95'][1]:.1%}]",
                             f"{statistics.fmean(measured_step(Path(c['out'])) for c in cells[key]) * 1e3:.0f}"])
                log(f"  {key}: step {ms * 1e3:.0f} ms (predicted {statistics.fmean(pred_step) * 1e3:.0f}), "
                    f"comm {mc * 1e3:.0f} ms (predicted {statistics.fmean(pred_comm) * 1e3:.0f}): "
                    f"comm error {comm_err[key]['mean']:.1%}")
    worst_comm = max(comm_err, key=lambda k: comm_err[k]["mean"])
    worst_step = max(step_err, key=lambda k: step_err[k]["mean"])
    goal = PROTOCOL["goal"]["max_relative_error_comm"]
    missed = sorted(k for k, e in comm_err.items() if e["ci95"][1] > goal)
    headline = (f"held out (4–6 hosts, PowerSGD, top-k, PS, gossip, {p['latency_ms']:g} ms latency, "
                f"real compute): communication within {comm_err[worst_comm]['mean']:.0%} "
                f"({'goal ≤ 20% met on every configuration' if not missed else 'goal ≤ 20% missed on ' + ', '.join(missed)}); "
                f"step time within {step_err[worst_step]['mean']:.0%}")
    line = {"bench": "cost_model", "quick": run.quick, "repeats": p["repeats"],
            "max_relative_error": round(step_err[worst_step]["mean"], 4),
            "max_relative_error_comm": round(comm_err[worst_comm]["mean"], 4),
            "max_relative_error_comm_upper": round(max(e["ci95"][1] for e in comm_err.values()), 4),
            "max_relative_error_comm_by_variant": {v: max(e[v] for e in by_variant.values())
                                                   for v in p["variants"]},
            "goal_missed_on": missed, "headline": headline}
    details = {"tables": [table(
        f"Held-out configurations at {p['rate']} per link (both ways), {p['latency_ms']:g} ms transport "
        "latency, real compute; predicted by profiles of 2 workers on unlimited links",
        ["method", "hosts", "workers", "step ms", "predicted", "step error (95% CI)", "comm ms",
         "predicted comm", "comm error (95% CI)", "median-interval step ms"], rows),
        table("Communication-only error of the model's variants (each adds one correction; "
              "mean over repeats)", ["configuration", *p["variants"]],
              [[k, *(f"{e:.1%}" for e in v.values())] for k, v in by_variant.items()]),
        ],
        "comm_errors": comm_err, "step_errors": step_err, "signed_comm_errors": signed,
        "comm_errors_by_variant": by_variant,
        "efficiency": round(simulate.wire_efficiency(), 4), **run.record()}
    return finish(line, PROTOCOL, quick=run.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
