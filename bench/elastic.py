"""A worker killed mid-run, the survivors going on in place (issue 18, runtime/elastic.py).

For each algorithm that continues after a worker loss (``[faults] on_worker_loss =
"continue"``) and each seed: one run of 4 workers on 127.0.0.1 in which one worker
(drawn from the seed) is SIGKILLed from outside once it has logged a step drawn from the
seed, and the same run uninterrupted. Measured: the time from the kill to the next step
the survivors complete (the new rank 0's stamp), completed steps lost (a step logged
twice by a survivor), and the final test accuracy against the uninterrupted run's.

Join part: for each algorithm and join seed, one more run with ``--max-restarts 1`` and a
larger model, in which a replacement joins the running group after the kill. Measured:
``join_seconds`` (the replacement's process start to its first completed step, median),
and the state transfer's bandwidth as a fraction of a plain transport broadcast of the
same bytes among as many ranks, measured in this invocation.

    python bench/elastic.py [--quick] [--part all|recovery|join] [--algorithms parameter_server,...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RESULTS, finish, interval, paired_ci, table  # noqa: E402

PROTOCOL = {
    "workers": 4,
    "algorithms": {"sync_sgd": 'name = "sync_sgd"', "local_sgd": 'name = "local_sgd"\nperiod = 4',
                   "gossip": 'name = "gossip"\ngraph = "ring"',
                   # BSP, 1 server + the 4 workers (the victim is always a worker)
                   "parameter_server": 'name = "ps"\nservers = 1\npace = "bsp"'},
    "seeds": [0, 1, 2, 3, 4],
    "quick_seeds": [0],
    "data": {"name": "synthetic", "kind": "gaussian_mixture", "n_train": 8000, "n_test": 2000,
             "dim": 32, "num_classes": 4, "noise": 3.0},
    "model": {"name": "mlp", "hidden": [64]},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 32,
    "steps": 120, "quick_steps": 60,
    "compute_s": 0.03,           # every step padded to 30 ms: the kill lands mid-training
    "kill_step": "uniform in [steps/5, 3·steps/4] from random.Random(seed)",
    "victim": "uniform in 0..3 from the same generator (rank 0, the lead, included)",
    "timeout_s": 20,
    "concurrent_runs": 2,        # runs side by side; interrupted and uninterrupted interleaved
    "tuning": "none: every run of a seed has the same config; only the kill differs",
    "join": {"seeds": [0, 1, 2], "quick_seeds": [0],
             # the algorithms that admit a replacement (the parameter server does not)
             "algorithms": ["sync_sgd", "local_sgd", "gossip"],
             # a larger model than above, so the state transfer moves megabytes
             "model": {"name": "mlp", "hidden": [512, 512]},
             "max_restarts": 1, "join_wait_s": 40, "timeout_s": 90,
             "raw_repeats": 7},
    "goals": {"recovery_seconds": "<= 2", "steps_lost": 0,
              "accuracy": "paired difference's 95% interval within ± the uninterrupted "
                          "runs' seed-to-seed spread (max − min)",
              "join_seconds": "<= 10, median over the join runs of every algorithm; every "
                              "run's value reported",
              "transfer_fraction": ">= 0.5: the state broadcast's bandwidth over a plain "
                                   "broadcast of the same bytes among the same number of "
                                   "ranks (median of raw_repeats, this invocation)"},
}

CONFIG = """
name = "elastic"
seed = {seed}
workers = {workers}
[data]
source = {source}
partition = {{ name = "shuffle_split", reshuffle = "global" }}
batch_size = {batch}
[model]
name = "mlp"
hidden = {hidden}
[optim]
name = "sgd"
lr = {lr}
momentum = {momentum}
[algorithm]
{algorithm}
[comm]
timeout_s = {timeout}
[train]
max_steps = {steps}
epochs = 1000
eval_every = 100000
log_every = 1
progress = false
[faults]
compute_s = {compute}
on_worker_loss = "continue"
{join_faults}
"""


def toml_inline(d: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in d.items()) + " }"


def write_config(folder: Path, algo: str, seed: int, steps: int, join: bool = False) -> Path:
    p, j = PROTOCOL, PROTOCOL["join"]
    path = folder / f"{algo}-{seed}{'-join' if join else ''}.toml"
    path.write_text(CONFIG.format(seed=seed, workers=p["workers"], source=toml_inline(p["data"]),
                                  batch=p["batch_size"],
                                  hidden=(j if join else p)["model"]["hidden"],
                                  lr=p["optim"]["lr"], momentum=p["optim"]["momentum"],
                                  algorithm=p["algorithms"][algo],
                                  timeout=j["timeout_s"] if join else p["timeout_s"],
                                  steps=steps, compute=p["compute_s"],
                                  join_faults=f"join_wait_s = {j['join_wait_s']}" if join else ""))
    return path


def plan_kill(seed: int, steps: int) -> tuple[int, int]:
    rng = random.Random(seed)
    return rng.randrange(PROTOCOL["workers"]), rng.randint(steps // 5, 3 * steps // 4)


def logged_steps(out: Path, rank: int) -> list[int]:
    path = out / f"events-rank{rank}.jsonl"
    if not path.exists():
        return []
    return [json.loads(x)["step"] for x in path.read_text().splitlines() if x.strip()]


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def rank_pid(out: Path, rank: int, launcher_pid: int) -> int | None:
    """The pid rank ``rank`` logged, if it descends from the launcher we started (its
    child, or a child of the launcher's fork server)."""
    log = out / "logs" / f"rank{rank}.log"
    if not log.exists():
        return None
    pids = [int(x.split("starting: pid ")[1].split(",")[0])
            for x in log.read_text().splitlines() if "starting: pid" in x]
    if not pids:
        return None
    parent = _parent(pids[-1])
    for _ in range(2):
        if parent == launcher_pid:
            return pids[-1]
        parent = _parent(parent) if parent else None
    return None


def one_run(folder: Path, algo: str, seed: int, steps: int, kill: bool, join: bool = False) -> dict:
    """One ``distml run`` in its own session; with ``kill``, SIGKILL the drawn worker once it
    logged the drawn step; with ``join``, a replacement joins after it. Its process group is
    always killed at the end."""
    cfg = write_config(folder, algo, seed, steps, join)
    out = folder / f"{algo}-{seed}-{'join' if join else 'kill' if kill else 'full'}"
    victim, at = plan_kill(seed, steps)
    cmd = [sys.executable, "-m", "distml", "run", str(cfg), "--out", str(out), "--json"]
    if join:
        cmd += ["--max-restarts", str(PROTOCOL["join"]["max_restarts"])]
    p = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    killed_at = None
    try:
        if kill:
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline and p.poll() is None:
                steps_seen = logged_steps(out, victim)
                if steps_seen and steps_seen[-1] >= at:
                    pid = rank_pid(out, victim, p.pid)
                    if pid is not None:
                        os.kill(pid, signal.SIGKILL)
                        killed_at = time.time()
                        break
                time.sleep(0.01)
        _, err = p.communicate(timeout=900)
    finally:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait()
    summary_path = out / "summary.json"
    s = json.loads(summary_path.read_text()) if summary_path.exists() else None
    if join:
        entry = next((c for c in (s or {}).get("membership", []) if c.get("joined")), None)
        return {"algorithm": algo, "seed": seed, "join": True, "code": p.returncode,
                "victim": victim, "kill_step": at, "killed": killed_at is not None,
                "joined_step": entry["step"] if entry else None,
                "join_seconds": entry["join_seconds"] if entry else None,
                "startup_seconds": entry.get("startup_seconds") if entry else None,
                "transfer_seconds": entry["transfer_seconds"] if entry else None,
                "state_bytes": entry["state_bytes"] if entry else None,
                "workers_at_end": s["workers"] if s else None,
                "error": err.strip().splitlines()[-1] if p.returncode and err.strip() else None}
    result = {"algorithm": algo, "seed": seed, "kill": kill, "code": p.returncode,
              "accuracy": s["test_accuracy"] if s else None, "steps": s["steps"] if s else None,
              "error": err.strip().splitlines()[-1] if p.returncode and err.strip() else None}
    if kill:
        change = (s or {}).get("membership") or [None]
        change = change[0]
        survivors = [r for r in range(PROTOCOL["workers"]) if r != victim]
        lost = max((sum(c - 1 for c in Counter(logged_steps(out, r)).values()) for r in survivors),
                   default=0)
        result.update(victim=victim, kill_step=at, killed=killed_at is not None, steps_lost=lost,
                      recovery_seconds=(change["next_step_at"] - killed_at
                                        if change and killed_at and change.get("next_step_at") else None),
                      detect_seconds=(change["failed_at"] - killed_at if change and killed_at else None),
                      regroup_seconds=change["recovery_seconds"] if change else None,
                      phases=change.get("phases") if change else None,
                      resumed_step=change["step"] if change else None)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="one seed, fewer steps (smoke check)")
    ap.add_argument("--runs", default=None, help="also append every run's record to this "
                    "JSON-lines file as it ends")
    ap.add_argument("--from-runs", default=None, help="summarize the records of an earlier "
                    "--runs file instead of running")
    ap.add_argument("--algorithms", default=None, help="comma-separated subset of "
                    f"{', '.join(PROTOCOL['algorithms'])} (default: all)")
    ap.add_argument("--part", choices=["all", "recovery", "join"], default="all",
                    help="run only one part; the other part's runs are taken from the "
                         "committed bench/results/elastic.json (said in the result)")
    args = ap.parse_args()
    seeds = PROTOCOL["quick_seeds"] if args.quick else PROTOCOL["seeds"]
    join_seeds = PROTOCOL["join"]["quick_seeds" if args.quick else "seeds"]
    steps = PROTOCOL["quick_steps"] if args.quick else PROTOCOL["steps"]
    algos = list(PROTOCOL["algorithms"])
    if args.algorithms:
        unknown = set(args.algorithms.split(",")) - set(algos)
        if unknown:
            ap.error(f"unknown algorithms {sorted(unknown)}; valid: {', '.join(algos)}")
        algos = [a for a in algos if a in args.algorithms.split(",")]
    loads = [os.getloadavg()]
    if args.from_runs:
        records = [json.loads(x) for x in Path(args.from_runs).read_text().splitlines() if x.strip()]
        results, loads = [r for r in records if "algorithm" in r], \
            [r["loadavg"] for r in records if "loadavg" in r]
    else:
        # interleaved: each seed's interrupted and uninterrupted runs of every algorithm together
        jobs = [(a, s, k, False) for s in seeds for a in algos for k in (True, False)] \
            if args.part != "join" else []
        jobs += [(a, s, True, True) for s in join_seeds for a in algos
                 if a in PROTOCOL["join"]["algorithms"]] if args.part != "recovery" else []

        def job(j):
            r = one_run(Path(tmp), j[0], j[1], steps, j[2], join=j[3])
            if args.runs:
                with open(args.runs, "a") as f:
                    f.write(json.dumps(r) + "\n")
            return r

        if args.runs:
            with open(args.runs, "a") as f:
                f.write(json.dumps({"loadavg": loads[0]}) + "\n")
        with tempfile.TemporaryDirectory(prefix="distml-elastic-") as tmp:
            with ThreadPoolExecutor(PROTOCOL["concurrent_runs"]) as pool:
                results = list(pool.map(job, jobs))
        loads.append(os.getloadavg())
    earlier = None
    if args.part != "all":       # the other part: the committed result file's runs
        earlier = json.loads((RESULTS / "elastic.json").read_text())
        keep = (lambda r: r.get("join")) if args.part == "recovery" else (lambda r: not r.get("join"))
        results += [r for r in earlier["details"]["runs"] if keep(r)]
    joins = [r for r in results if r.get("join")]
    results = [r for r in results if not r.get("join")]
    join_line, join_details = summarize_joins(joins)
    algos = [a for a in algos if any(r["algorithm"] == a for r in results)]

    rows, recovery, lost_all, deltas, spreads, met = [], {}, [], {}, {}, {}
    for a in algos:
        killed = [r for r in results if r["algorithm"] == a and r["kill"]]
        full = {r["seed"]: r for r in results if r["algorithm"] == a and not r["kill"]}
        rec = [r["recovery_seconds"] for r in killed if r["recovery_seconds"] is not None]
        recovery[a] = round(statistics.median(rec), 3) if rec else None
        lost_all += [r["steps_lost"] for r in killed]
        pairs = [(r["accuracy"], full[r["seed"]]["accuracy"]) for r in killed
                 if r["accuracy"] is not None and full[r["seed"]]["accuracy"] is not None]
        accs = [full[s]["accuracy"] for s in full if full[s]["accuracy"] is not None]
        spreads[a] = round(max(accs) - min(accs), 4) if len(accs) > 1 else None
        if pairs:
            m, lo, hi = paired_ci([x for x, _ in pairs], [y for _, y in pairs])
            deltas[a] = {"mean": round(m, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(pairs)}
        ok_acc = (a in deltas and spreads[a] is not None
                  and -spreads[a] <= deltas[a]["ci95"][0] and deltas[a]["ci95"][1] <= spreads[a])
        met[a] = {"recovery": bool(rec) and len(rec) == len(killed) and max(rec) <= 2.0,
                  "steps_lost": all(r["steps_lost"] == 0 for r in killed)
                  and all(r["code"] == 0 for r in killed),
                  "accuracy": ok_acc}
        for r in killed:
            rows.append([a, r["seed"], r["victim"], r["kill_step"], r["resumed_step"], r["code"],
                         _fmt(r["detect_seconds"]), _fmt(r["regroup_seconds"]),
                         _fmt(r["recovery_seconds"]), r["steps_lost"], r["accuracy"],
                         full[r["seed"]]["accuracy"]])
    worst = max(lost_all) if lost_all else None
    headline = "; ".join(f"{a} recovery {recovery[a]} s (median)" for a in algos) + \
        f"; steps lost {worst}; goals met: " + \
        ", ".join(f"{a} {'/'.join(k for k, v in met[a].items() if v) or 'none'}" for a in algos)
    headline += "; " + join_line.pop("headline")
    line = {"bench": "elastic", "recovery_seconds": recovery, "steps_lost": worst,
            "accuracy_delta": deltas, **join_line,
            "repeats": len({r["seed"] for r in results}),
            "headline": headline}
    details = {"runs": results + joins, "goals_met": met, "uninterrupted_spread": spreads,
               "join": join_details,
               "other_part_from": None if earlier is None else
               {"commit": earlier["commit"], "date": earlier["date"]},
               "rec_interval": {a: interval([r["recovery_seconds"] for r in results
                                             if r["algorithm"] == a and r["kill"]
                                             and r["recovery_seconds"] is not None] or [0.0])
                                for a in algos},
               "loadavg_before_after": loads,
               "tables": [table("Kill to the next completed step (4 workers, one SIGKILLed)",
                                ["algorithm", "seed", "victim", "killed after step",
                                 "resumed at step", "exit", "kill → detected s",
                                 "detected → regrouped s", "kill → next step s", "steps lost",
                                 "accuracy", "uninterrupted accuracy"], rows),
                          join_details.pop("table")]}
    return finish(line, PROTOCOL, quick=args.quick, details=details)


def summarize_joins(joins: list[dict]) -> tuple[dict, dict]:
    """``join_seconds`` (median), the transfer bandwidth against a plain broadcast of the
    same bytes (measured now, among as many ranks), the goals, and the table."""
    sizes = sorted({r["state_bytes"] for r in joins if r.get("state_bytes")})
    raw = raw_broadcast_seconds(sizes, PROTOCOL["workers"], PROTOCOL["join"]["raw_repeats"]) \
        if sizes else {}
    rows = []
    for r in joins:
        r["raw_seconds"] = raw.get(r.get("state_bytes"))
        r["transfer_fraction"] = (round(r["raw_seconds"] / r["transfer_seconds"], 3)
                                  if r["raw_seconds"] and r.get("transfer_seconds") else None)
        rows.append([r["algorithm"], r["seed"], r["victim"], r["kill_step"], r["joined_step"],
                     r["code"], r["workers_at_end"], r["join_seconds"], r.get("startup_seconds"),
                     r["state_bytes"],
                     _fmt(r["transfer_seconds"]), _fmt(r["raw_seconds"]), r["transfer_fraction"]])
    secs = [r["join_seconds"] for r in joins if r.get("join_seconds") is not None]
    fracs = [r["transfer_fraction"] for r in joins if r.get("transfer_fraction") is not None]
    complete = bool(joins) and len(secs) == len(joins)
    median = round(statistics.median(secs), 3) if secs else None
    frac = round(statistics.median(fracs), 3) if fracs else None
    met = {"join_seconds": complete and median is not None and median <= 10.0,
           "transfer_fraction": bool(fracs) and len(fracs) == len(joins) and frac >= 0.5}
    by_algo = {a: round(statistics.median(v), 3) for a in PROTOCOL["algorithms"]
               if (v := [r["join_seconds"] for r in joins if r["algorithm"] == a
                         and r.get("join_seconds") is not None])}
    headline = (f"join {median} s (median of {len(secs)}/{len(joins)}), transfer {frac} of raw; "
                f"join goals met: {', '.join(k for k, v in met.items() if v) or 'none'}")
    line = {"join_seconds": median, "join_seconds_by_algorithm": by_algo,
            "transfer_fraction": frac, "headline": headline}
    details = {"goals_met": met, "raw_broadcast_seconds": raw,
               "table": table("A replacement joins (4 workers, one SIGKILLed, --max-restarts 1)",
                              ["algorithm", "seed", "victim", "killed after step", "joined at step",
                               "exit", "workers at end", "join s", "of which start-up s",
                               "state bytes", "transfer s",
                               "raw broadcast s", "raw / transfer"], rows)}
    return line, details


def raw_broadcast_seconds(sizes: list[int], world: int, repeats: int) -> dict[int, float]:
    """For each size in bytes: the median seconds, on the source rank, of one plain
    transport broadcast of that many bytes among ``world`` local processes (gloo on
    127.0.0.1), the bandwidth the state transfer is compared with."""
    import multiprocessing as mp
    import socket

    from distml.comm.transport import Transport
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    store = Transport.host_store(sock, 60.0)
    sock.detach()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_raw_rank, args=(r, world, port, sizes, repeats, queue))
             for r in range(world)]
    try:
        for p in procs:
            p.start()
        times = queue.get(timeout=300)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        del store
    return {n: round(statistics.median(t), 5) for n, t in zip(sizes, times)}


def _raw_rank(rank: int, world: int, port: int, sizes: list[int], repeats: int, queue) -> None:
    import torch

    from distml.comm.transport import Transport
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    t = Transport.connect(Transport.store_client("127.0.0.1", port, 60.0), rank, world,
                          timeout_s=60.0)
    times = []
    for nbytes in sizes:
        buf = torch.ones(nbytes, dtype=torch.uint8) if rank == 0 else torch.empty(nbytes, dtype=torch.uint8)
        times.append([])
        for _ in range(repeats):
            t.barrier()
            t0 = time.perf_counter()
            t.broadcast(buf, src=0)
            times[-1].append(time.perf_counter() - t0)
    if rank == 0:
        queue.put(times)
    t.close()


def _fmt(x):
    return None if x is None else round(x, 3)


if __name__ == "__main__":
    sys.exit(main())
