"""Scale past three workers: 2–16 ranks on the network test bed, theory checks, the cost model.

Every rank is its own host: a network namespace (``distml.runtime.testbed``) whose link is
capped at ``PROTOCOL["rate"]`` both ways (tc tbf on the host's interface and on its
bridge port, as a switch port does). One world per size trains its cells one after the
other (``python -m distml.runtime.testbed cells``: the worker's own code path, a fresh
transport count per cell), repeats interleaved, so a run costs its training and not a
process start, and the machine's load hits every method alike. Compute is a real, tiny
MLP (no sleep); the links make communication the bottleneck.

What it checks (issue 17):

- **gossip** at 16 ranks, from 16 different initial models and a learning rate too small
  to move float32 weights (mixing alone): the per-round contraction of the consensus
  distance against the second-largest eigenvalue modulus of each graph's mixing matrix
  (ring, torus, one-peer exponential; ``Graph.rate``), and rounds to 1e-3 of the start;
- **ring all-reduce**: wire bytes per rank per step (the interface's counters, two step
  counts differenced to drop set-up traffic, times TCP goodput η) against 2(N−1)/N·M, and
  step time against the α–β model, at 2, 4, 8, 16 ranks;
- **parameter server** at 8 workers with 1, 2, 4 servers (each its own host): aggregate
  push throughput (bytes pushed per second by all workers), on links capped at
  ``PROTOCOL["ps_rate"]`` (the same for every server count);
- **the cost model at the sizes it projects to**: ``distml simulate`` calibrated on a
  2-worker profile (unlimited links) predicts the step time at 4, 8, 16 workers of sync
  SGD, QSGD 4 bit, the parameter server (BSP, 1 server) and gossip on a ring, told the
  machine's cores (every rank shares them: ``simulate.compute_per_step``);
- local SGD and ADMM run at 8 and 16 ranks (step time reported, no goal).

Needs root (namespaces); deletes everything it creates.

    python bench/scale.py            # the documented run (3 repeats)
    python bench/scale.py --parts ps,model   # some parts (gossip, allreduce, model, ps, extras),
                                     # the full protocol; the others' numbers are kept from the
                                     # last result file and named in details["carried_over"]
    python bench/scale.py --quick    # smoke check: 2 and 4 ranks, fewer steps, same path
"""

from __future__ import annotations

PROTOCOL = {
    "data": {"name": "synthetic", "kind": "teacher_mlp", "dim": 256, "n_train": 8192, "n_test": 512},
    "model": {"name": "mlp", "hidden": [256, 128]},          # 100k parameters, 0.40 MB fp32
    "batch_size": 32,
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "rate": "100mbit", "both_ways": True,
    "steps": 40, "short_steps": 10, "log_every": 5,           # bytes: 40-step minus 10-step cells
    "ranks": [2, 4, 8, 16],
    "methods": {                                              # the cost model's four methods
        "sync_sgd": {"algorithm": {"name": "sync_sgd"}},
        "qsgd_4bit": {"algorithm": {"name": "sync_sgd"}, "comm": {"codec": {"name": "qsgd", "bits": 4}}},
        "ps": {"algorithm": {"name": "ps", "servers": 1}},
        "gossip_ring": {"algorithm": {"name": "gossip", "graph": "ring"}},
    },
    "extra_methods": {                                        # run at 8 and 16 ranks, no goal
        "local_sgd_h8": {"algorithm": {"name": "local_sgd", "period": 8}},
        "admm": {"algorithm": {"name": "admm"}},
    },
    # the cost model is told the machine's cores: every rank of the test bed shares them
    # (simulate.compute_per_step; fixed before the run of issue 17's follow-up)
    "shared_cores": True,
    "ps_workers": 8, "ps_servers": [1, 2, 4],
    "ps_rate": "25mbit",      # the PS part's link rate, the same for 1, 2 and 4 servers (below)
    "gossip_ranks": 16, "gossip_graphs": ["ring", "torus", "exponential"], "gossip_rounds": 160,
    "gossip_model": {"name": "mlp", "hidden": [16]}, "gossip_lr": 1e-12, "gossip_init_seed": 1000,
    "consensus_target": 1e-3,
    "rate_window": [1e-1, 1e-5],    # contraction fitted where distance / start lies in this window
    "repeats": 3, "seed": 0,
    "goals": {"gossip_rate_error": 0.20, "ps_scaling_4_servers": 3.0, "max_relative_error_scale": 0.20},
    "quick": {"ranks": [2, 4], "steps": 20, "short_steps": 10, "ps_workers": 2, "ps_servers": [1, 2],
              "gossip_ranks": 4, "gossip_rounds": 30, "repeats": 1},
}

import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import finish, interval, mean_ci, ratio_ci, table  # noqa: E402
from worlds import Session, add_cell, by_key, load, measured_step, run_worlds  # noqa: E402

from distml.comm.topology import build_graph  # noqa: E402
from distml.runtime import simulate  # noqa: E402

PLOT = REPO / "docs" / "img" / "scale_step_time.png"


def config(p: dict, method: dict, workers: int, steps: int, seed: int, **over) -> dict:
    """One cell's config (a dict in the TOML's shape)."""
    return {"name": "scale", "seed": seed, "workers": workers,
            "data": {"source": p["data"], "batch_size": p["batch_size"]},
            "model": over.get("model", p["model"]),
            "optim": {**p["optim"], **over.get("optim", {})},
            "algorithm": method["algorithm"] | over.get("algorithm", {}),
            "comm": {"timeout_s": 300, **method.get("comm", {})},
            "train": {"max_steps": steps, "epochs": 1000, "eval_every": over.get("eval_every", steps),
                      "log_every": p["log_every"], "progress": False}}


PARTS = ("gossip", "allreduce", "model", "ps", "extras")


def plan_cells(p: dict, tmp: Path, parts: set[str]) -> dict[str, dict]:
    """Every cell of ``parts``, by link rate then world size (processes), repeats
    interleaved within a world."""
    by_rate: dict[str, dict] = {}

    def add(key: str, cfg: dict, rep: int, limited: bool = True, rate: str = p["rate"]) -> None:
        add_cell(by_rate.setdefault(rate, {}), tmp, key, cfg, rep, limited)

    for rep in range(p["repeats"]):
        seed = p["seed"] + rep
        if "model" in parts:
            for m, method in p["methods"].items():        # 2-worker profiles, unlimited links
                add(f"profile/{m}", config(p, method, 2, p["steps"], seed), rep, limited=False)
        for n in p["ranks"]:
            sync = p["methods"]["sync_sgd"]
            if parts & {"model", "allreduce"}:
                add(f"sync_sgd/{n}", config(p, sync, n, p["steps"], seed), rep)
            if "allreduce" in parts:
                add(f"sync_sgd_short/{n}", config(p, sync, n, p["short_steps"], seed), rep)
            if n == 2:
                continue
            if "model" in parts:
                for m in ("qsgd_4bit", "ps", "gossip_ring"):
                    add(f"{m}/{n}", config(p, p["methods"][m], n, p["steps"], seed), rep)
            if "extras" in parts and (n >= 8 or n == max(p["ranks"])):
                for m, method in p["extra_methods"].items():
                    add(f"{m}/{n}", config(p, method, n, p["steps"], seed), rep)
        if "ps" in parts:
            for s in p["ps_servers"]:
                add(f"ps_servers/{s}", config(p, p["methods"]["ps"], p["ps_workers"], p["steps"], seed,
                                                  algorithm={"servers": s}), rep, rate=p["ps_rate"])
        if "gossip" in parts:
            for g in p["gossip_graphs"]:
                add(f"consensus/{g}", config(
                    p, {"algorithm": {"name": "gossip", "graph": g}}, p["gossip_ranks"], p["gossip_rounds"],
                    seed, model=p["gossip_model"], optim={"lr": p["gossip_lr"], "momentum": 0.0},
                    algorithm={"local_init_seed": p["gossip_init_seed"] + 100 * rep}, eval_every=1), rep)
    return by_rate


def summary(out: str) -> dict:
    return json.loads((Path(out) / "summary.json").read_text())


def wire_tx(out: str) -> list[int]:
    return [json.loads(f.read_text())["tx_bytes"] for f in sorted(Path(out).glob("wire-rank*.json"))]


def consensus(out: str) -> dict[int, float]:
    """Rank 0's consensus distance at every evaluation, by step."""
    dist = {}
    for name in ("eval.jsonl", "events-rank0.jsonl"):
        path = Path(out) / name
        if path.exists():
            for line in path.read_text().splitlines():
                e = json.loads(line)
                if e.get("consensus_distance") is not None:
                    dist[int(e["step"])] = float(e["consensus_distance"])
    return dist


def contraction(dist: dict[int, float], window: list[float], period: int) -> float:
    """Measured per-round contraction: the geometric mean of d_{k+1}/d_k over the rounds whose
    distance, relative to the start, lies in ``window``; a graph that averages exactly
    within a period (one-peer exponential, n a power of 2) gets (d_period / d_0)^(1/period)."""
    d0 = dist[0]
    inside = [k for k in sorted(dist) if window[1] <= dist[k] / d0 <= window[0]]
    if period > 1 or len(inside) < 2:
        k = period if period > 1 else max(sorted(dist)[1], 1)
        return (dist[k] / d0) ** (1.0 / k)
    a, b = inside[0], inside[-1]
    return (dist[b] / dist[a]) ** (1.0 / (b - a))


def rounds_to(dist: dict[int, float], target: float) -> int | None:
    d0 = dist[0]
    return next((k for k in sorted(dist) if dist[k] <= target * d0), None)


def gossip_part(by: dict, p: dict) -> tuple[dict, list, dict]:
    """Gossip: per-round contraction against the second-largest eigenvalue modulus."""
    rows, err_hi, err_mean, rounds = [], {}, {}, {}
    for g in p["gossip_graphs"]:
        graph = build_graph(g, p["gossip_ranks"])
        theory = graph.rate()
        rates, rts = [], []
        for c in by[f"consensus/{g}"]:
            dist = consensus(c["out"])
            rates.append(contraction(dist, p["rate_window"], graph.period() if not graph.static else 1))
            rts.append(rounds_to(dist, p["consensus_target"]))
        m, lo, hi = mean_ci(rates)
        err = abs(m - theory) / theory if theory > 0 else None
        err_mean[g] = err
        err_hi[g] = None if err is None else max(abs(lo - theory), abs(hi - theory)) / theory
        rounds[g] = rts
        rows.append([g, f"{theory:.4f}", f"{m:.4f} [{lo:.4f}, {hi:.4f}]",
                     "—" if err is None else f"{err:.1%} (≤ {err_hi[g]:.1%})", ", ".join(str(r) for r in rts)])
    tables = [table(f"Gossip at {p['gossip_ranks']} ranks: per-round contraction of the consensus "
                    "distance against the mixing matrix's second-largest eigenvalue modulus",
                    ["graph", "λ (theory)", "measured (mean, 95% CI)", "relative error (conservative)",
                     f"rounds to {p['consensus_target']:g} (per repeat)"], rows)]
    ordered = all(r is not None for g in rounds for r in rounds[g])
    if ordered:
        mean_r = {g: statistics.fmean(rounds[g]) for g in rounds}
        gs = p["gossip_graphs"]            # listed ring, torus, exponential: fastest last
        ordered = all(mean_r[gs[i]] > mean_r[gs[i + 1]] for i in range(len(gs) - 1))
    judged = [g for g in err_hi if err_hi[g] is not None]
    numbers = {"gossip_rate_error": round(max(err_mean[g] for g in judged), 4) if judged else None,
               "gossip_rate_error_conservative": round(max(err_hi[g] for g in judged), 4) if judged else None,
               "gossip_ordering_ok": ordered}
    details = {"gossip": {"rounds_to_target": rounds, "error_conservative": err_hi,
                          "exponential_note": "λ = 0 where n is a power of 2 (exact average after log2 n "
                          "rounds): compared by the measured rate, not a relative error"}}
    return numbers, tables, details


def model_part(by: dict, p: dict) -> tuple[dict, list, dict]:
    """The cost model: 2-worker profiles predict every size, told the machine's cores."""
    bw = simulate.parse_bandwidth(p["rate"])
    cores = os.cpu_count() if p["shared_cores"] else None    # every rank on this one machine
    profiles = {m: [simulate.profile(Path(c["out"])) for c in by[f"profile/{m}"]] for m in p["methods"]}
    rows, errors, series = [], {}, {}
    for m in p["methods"]:
        for n in p["ranks"]:
            key = f"{m}/{n}"
            if key not in by:
                continue
            meas = [measured_step(Path(c["out"])) for c in by[key]]
            pred = [simulate.predict_step(profiles[m][c["rep"]], n, bw, cores=cores) for c in by[key]]
            errs = [abs(a - b) / b for a, b in zip(pred, meas)]
            mm, lo, hi = mean_ci(meas)
            e = interval(errs)
            errors[key] = {**e, "signed": round(statistics.fmean((a - b) / b for a, b in zip(pred, meas)), 4)}
            series.setdefault(m, []).append((n, mm, lo, hi, statistics.fmean(pred)))
            rows.append([m, n, f"{mm * 1e3:.1f} [{lo * 1e3:.1f}, {hi * 1e3:.1f}]",
                         f"{statistics.fmean(pred) * 1e3:.1f}",
                         f"{e['mean']:.1%} [{e['ci95'][0]:.1%}, {e['ci95'][1]:.1%}]",
                         f"{errors[key]['signed']:+.1%}"])
    tables = [table(f"Step time at {p['rate']} per host link: measured against `distml simulate` "
                    f"calibrated on a 2-worker profile ({cores} shared cores)",
                    ["method", "workers", "measured ms (95% CI)", "predicted ms", "relative error (95% CI)",
                     "signed error (mean)"], rows)]
    scale_keys = [k for k in errors if int(k.split("/")[1]) > 2]
    numbers = {"max_relative_error_scale": round(max(errors[k]["mean"] for k in scale_keys), 4),
               "max_relative_error_scale_conservative": round(max(errors[k]["ci95"][1] for k in scale_keys), 4)}
    return numbers, tables, {"errors": errors, "series": series, "profiles": profiles, "cores": cores}


def allreduce_part(by: dict, p: dict) -> tuple[dict, list, dict]:
    """Ring all-reduce bytes: (tx(long) − tx(short)) / Δsteps · η against 2(N−1)/N·M."""
    eta = simulate.wire_efficiency()
    model_bytes = simulate.profile(Path(by[f"sync_sgd/{p['ranks'][0]}"][0]["out"]))["model_bytes"]
    rows, ratios = [], {}
    for n in p["ranks"]:
        per = []
        for long, short in zip(by[f"sync_sgd/{n}"], by[f"sync_sgd_short/{n}"]):
            dtx = [a - b for a, b in zip(wire_tx(long["out"]), wire_tx(short["out"]))]
            per.append(statistics.fmean(dtx) * eta / (p["steps"] - p["short_steps"]))
        theory = 2 * (n - 1) / n * model_bytes
        r = interval([x / theory for x in per])
        ratios[n] = r
        rows.append([n, f"{theory / 1e3:.1f}", f"{statistics.fmean(per) / 1e3:.1f}",
                     f"{r['mean']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"])
    tables = [table("Ring all-reduce: payload bytes per rank per step on the wire (interface "
                    "counters × η) against 2(N−1)/N·M", ["ranks", "2(N−1)/N·M kB", "measured kB",
                                                         "ratio (95% CI)"], rows)]
    worst = max(ratios.values(), key=lambda r: abs(r["mean"] - 1))
    return ({"allreduce_bytes_ratio": worst["mean"], "allreduce_bytes_ratio_ci": worst["ci95"]}, tables,
            {"allreduce_ratios": ratios})


def ps_part(by: dict, p: dict) -> tuple[dict, list, dict]:
    """Parameter server: aggregate push throughput by server count."""
    thr, steps = {}, {}
    for s in p["ps_servers"]:
        cells = by[f"ps_servers/{s}"]
        steps[s] = [measured_step(Path(c["out"])) for c in cells]
        thr[s] = [summary(c["out"])["bytes_sent"] / summary(c["out"])["steps"] / t
                  for c, t in zip(cells, steps[s])]
    rows = [[s, "{:.1f} [{:.1f}, {:.1f}]".format(*(x * 1e3 for x in mean_ci(steps[s]))),
             f"{statistics.fmean(v) / 1e6:.2f}",
             "1.00" if s == 1 else "{:.2f} [{:.2f}, {:.2f}]".format(*ratio_ci(v, thr[1]))]
            for s, v in thr.items()]
    tables = [table(f"Parameter server, {p['ps_workers']} workers, BSP, {p['ps_rate']} per host link: "
                    "aggregate push throughput", ["servers", "step ms (95% CI)", "MB/s pushed",
                                                  "× 1 server (95% CI)"], rows)]
    top = max(p["ps_servers"])
    ratio = ratio_ci(thr[top], thr[1])
    return ({"ps_scaling_4_servers": round(ratio[0], 3), "ps_scaling_ci": [round(x, 3) for x in ratio[1:]],
             "ps_servers_compared": top}, tables, {"throughput": thr, "ps_steps": steps})


def extras_part(by: dict, p: dict) -> tuple[dict, list, dict]:
    """Local SGD and ADMM: step time only."""
    rows = []
    for m in p["extra_methods"]:
        for n in p["ranks"]:
            if f"{m}/{n}" in by:
                mm, lo, hi = mean_ci([measured_step(Path(c["out"])) for c in by[f"{m}/{n}"]])
                rows.append([m, n, f"{mm * 1e3:.1f} [{lo * 1e3:.1f}, {hi * 1e3:.1f}]"])
    return {}, [table("Local SGD (H = 8) and ADMM: measured step time", ["method", "workers", "ms (95% CI)"],
                      rows)], {}


ANALYSES = {"gossip": gossip_part, "model": model_part, "allreduce": allreduce_part, "ps": ps_part,
            "extras": extras_part}


def analyse(by: dict, p: dict, parts: list[str]) -> tuple[dict, dict]:
    numbers, tables, details = {}, [], {}
    for part in PARTS:
        if part in parts:
            n, t, d = ANALYSES[part](by, p)
            numbers.update(n)
            tables += t
            details.update(d)
    rss = [json.loads(f.read_text())["max_rss_mb"] for c in sum(by.values(), [])
           for f in Path(c["out"]).glob("wire-rank*.json")]
    details["max_rank_memory_mb"] = round(max(rss), 1)
    details["tables"] = tables
    return numbers, details


def plot(series: dict, rate: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (m, pts) in enumerate(series.items()):
        pts = sorted(pts)
        color = f"C{i}"
        ns = [q[0] for q in pts]
        ax.errorbar(ns, [q[1] * 1e3 for q in pts], yerr=[[(q[1] - q[2]) * 1e3 for q in pts],
                                                         [(q[3] - q[1]) * 1e3 for q in pts]],
                    marker="o", color=color, label=f"{m} measured", capsize=3)
        ax.plot(ns, [q[4] * 1e3 for q in pts], ls="--", marker="x", color=color, label=f"{m} predicted")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("workers (one host each)")
    ax.set_ylabel("step time, ms")
    ax.set_title(f"Step time against ranks at {rate} per link (95% CI over repeats)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    PLOT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)
    return str(PLOT.relative_to(REPO))


def carried_over(parts: list[str], quick: bool) -> tuple[dict, list, dict]:
    """A run of some parts keeps the other parts' numbers and tables from the last full-protocol
    result file, and says so (``details["carried_over"]``)."""
    if len(parts) == len(PARTS) or quick:
        return {}, [], {}
    old = json.loads((REPO / "bench" / "results" / "scale.json").read_text())
    ran = {k for part in parts for k in PART_KEYS[part]}
    line = {k: v for k, v in old["line"].items() if k not in ran and k not in ("bench", "headline", "repeats", "parts")}
    tables = [t for t in old["details"]["tables"] if not any(t["title"].startswith(x) for part in parts
                                                                 for x in PART_TABLES[part])]
    owner = {"gossip": "gossip", "allreduce_ratios": "allreduce", "plots": "model"}
    keep = {k: old["details"][k] for k, part in owner.items() if k in old["details"] and part not in parts}
    return line, tables, {**keep, "carried_over": {
        "parts": [x for x in PARTS if x not in parts], "commit": old["commit"], "date": old["date"],
        "command": old["command"]}}


#: the result-line keys and table titles (their start) of each part
PART_KEYS = {"gossip": ("gossip_rate_error", "gossip_rate_error_conservative", "gossip_ordering_ok"),
             "allreduce": ("allreduce_bytes_ratio", "allreduce_bytes_ratio_ci"),
             "model": ("max_relative_error_scale", "max_relative_error_scale_conservative"),
             "ps": ("ps_scaling_4_servers", "ps_scaling_ci", "ps_servers_compared"), "extras": ()}
PART_TABLES = {"gossip": ("Gossip",), "allreduce": ("Ring all-reduce",), "model": ("Step time",),
               "ps": ("Parameter server",), "extras": ("Local SGD",)}


def verdicts(numbers: dict) -> dict[str, bool]:
    goals = PROTOCOL["goals"]
    met = {}
    if numbers.get("gossip_rate_error_conservative") is not None:
        met["gossip_rate"] = (numbers["gossip_rate_error_conservative"] <= goals["gossip_rate_error"]
                              and numbers["gossip_ordering_ok"])
    if "ps_scaling_ci" in numbers:
        met["ps_scaling"] = numbers["ps_scaling_ci"][0] >= goals["ps_scaling_4_servers"]
    if "max_relative_error_scale_conservative" in numbers:
        met["cost_model"] = numbers["max_relative_error_scale_conservative"] <= goals["max_relative_error_scale"]
    return met


def headline(numbers: dict, met: dict) -> str:
    said = []
    word = {True: "met", False: "missed"}
    if "gossip_rate" in met:
        said.append(f"gossip rate within {numbers['gossip_rate_error']:.0%} of λ₂ ({word[met['gossip_rate']]})")
    if "ps_scaling" in met:
        said.append(f"PS {numbers['ps_servers_compared']} servers {numbers['ps_scaling_4_servers']:.2f}× "
                    f"[{numbers['ps_scaling_ci'][0]:.2f}, {numbers['ps_scaling_ci'][1]:.2f}] of 1 "
                    f"({word[met['ps_scaling']]})")
    if "cost_model" in met:
        said.append(f"cost model ≤ {numbers['max_relative_error_scale']:.0%} at 4–16 workers "
                    f"({word[met['cost_model']]}, conservative {numbers['max_relative_error_scale_conservative']:.0%})")
    return "; ".join(said)


def main() -> int:
    run = Session("scale", __doc__, PROTOCOL, "2 and 4 ranks, fewer steps: a smoke check", parts=PARTS)
    p, log, parts = run.p, run.log, run.parts
    with tempfile.TemporaryDirectory(prefix="distml-scale-") as tmp_s:
        tmp = Path(tmp_s)
        by_rate = plan_cells(p, tmp, set(parts))
        log(f"scale ({', '.join(parts)}): {sum(len(c) for w in by_rate.values() for c in w.values())} cells; "
            f"load {load()}")
        for rate, worlds in by_rate.items():
            run_worlds(worlds, tmp, rate, p["both_ways"], log)
        cells = [c for worlds in by_rate.values() for c in worlds.values()]
        numbers, details = analyse(by_key(dict(enumerate(cells))), p, parts)
    old_line, old_tables, old_details = carried_over(parts, run.quick)
    numbers = {**old_line, **numbers}
    details["tables"] += old_tables
    details.update(old_details)
    series = details.pop("series", None)
    plots = [plot(series, p["rate"])] if series and not run.quick else details.pop("plots", [])
    met = verdicts(numbers)
    details.update(plots=plots, goals_met=met, **run.record())
    line = {"bench": "scale", **numbers, "repeats": p["repeats"], "parts": parts,
            "headline": headline(numbers, met)}
    return finish(line, PROTOCOL, quick=run.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
