"""Aggregation methods at an equal number of communication rounds: accuracy and bytes.

Fashion-MNIST, the MLP 784-128-10 or the small CNN, SGD with momentum (lr 0.05,
momentum 0.9, batch 64 per worker) under a constant and a cosine learning-rate schedule,
the same seed (initial model and shards) for every method within a repeat. Each worker
keeps its own fixed shard (``shuffle_split`` with ``reshuffle = "none"``: the local-data
setting of Sun et al. 2017, "Ensemble-Compression", and what it relabels). One
communication round = ``epochs_per_round`` local epochs; every method runs ``rounds``
rounds:

- ``model_averaging`` — ``local_sgd`` with ``period`` = the steps of one round (2 workers);
- ``ensemble_compression`` — ``every`` = one round (2 workers): all-gather the models,
  relabel the local shard with the ensemble's soft outputs (T = 2), distil for one pass
  over the shard (extra optimizer steps: it computes about twice as much per round);
- ``ensemble_compression_anneal`` — the same with ``distill_schedule = "linear"``;
- ``admm`` — consensus ADMM, ``local_steps`` = the steps of one round (2 workers);
- ``gossip_ring`` / ``gossip_exponential`` — D-PSGD mixing once per round on **4**
  workers (with 2 every graph is exact averaging);
- ``model_averaging_4w`` — model averaging on the same 4 workers (gossip's reference).

The protocol (``PROTOCOL`` below) is fixed before the run: every method uses the same
optimizer and learning rate (a grid of one, identical for all: the bench compares
aggregation rules, not tunings), on the MLP 5 seeds (the effect is under one point), 5
rounds, constant and cosine schedules; on the CNN (about 4x the cost) 3 seeds, 3 rounds,
the constant schedule; results on the
test split. The rounds each run really made are read back from its
``algorithm_metrics`` and checked. Figures are summary.json's ``test_accuracy`` of the
final model and ``bytes_sent`` (payload summed over workers, including rank 0's initial
broadcast; for gossip also the evaluation-time all-reduce, which ``bytes_train`` leaves
out). Methods run interleaved within each seed, every run in fresh worker processes; a
run is deterministic for its seed (tests/test_determinism.py), so the interval is over
seeds only. Reported: mean and 95% interval over seeds, and the paired interval of
ensemble-compression − model averaging (same seeds) after every round.

    python bench/aggregation.py                  # the documented run, the MLP (docs/benchmarks.md)
    python bench/aggregation.py --model cnn      # the CNN (results/aggregation_cnn.json)
    python bench/aggregation.py --methods all    # also the annealed variant, ADMM and gossip
    python bench/aggregation.py --quick          # smoke check: 1 round, 1 seed

Ends by printing one JSON line (docs/design.md §5); the top-level figures are the
constant schedule's, every schedule's under ``configurations``::

    {"bench": "aggregation", "accuracy": {method: mean}, "bytes": {method: mean},
     "ec_minus_ma": points, "ec_minus_ma_ci": [low, high], "headline": "...", ...}

``ec_minus_ma`` = the mean over seeds of (ensemble_compression − model_averaging) test
accuracy, in percentage points, and ``ec_minus_ma_ci`` its paired 95% interval;
``ec_minus_ma_by_round`` the same mean after each round 1..R (``…_by_round_ci`` their
intervals); ``ec_anneal_minus_ma`` (and ``…_ci``) for the annealed variant.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, interval, paired_ci, table  # noqa: E402

PROTOCOL = {
    "data": "fashion_mnist, shuffle_split reshuffle=none (a fixed shard per worker), test split",
    # 5 seeds where the effect is under a point (the MLP). A CNN run costs ~4x an MLP run
    # on the shared 2 cores: 3 seeds, 3 rounds, the constant schedule only
    "models": {"mlp": {"model": {"name": "mlp", "hidden": [128]}, "seeds": [0, 1, 2, 3, 4],
                       "rounds": 5, "schedules": ["constant", "cosine"]},
               "cnn": {"model": {"name": "cnn"}, "seeds": [0, 1, 2], "rounds": 3,
                       "schedules": ["constant"]}},
    "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "batch_size": 64,
    "epochs_per_round": 1,
    "methods": ["model_averaging", "ensemble_compression"],
    "tuning": "none: one learning rate for every method (a grid of one, identical for all)",
    "goal": "ensemble_compression >= model_averaging at equal rounds: the paired 95% "
            "interval's lower end >= 0",
}
QUICK = {"rounds": 1, "seeds": [0]}

# method -> (workers, algorithm spec builder(steps_per_round, epochs_per_round), round counter key)
METHODS = {
    "model_averaging": (2, lambda h, e: {"name": "local_sgd", "period": h}, "syncs"),
    "ensemble_compression": (2, lambda h, e: {"name": "ensemble_compression", "every": e,
                                              "relabel_fraction": 1.0, "temperature": 2.0,
                                              "distill_epochs": 1}, "ec_round"),
    "ensemble_compression_anneal": (2, lambda h, e: {"name": "ensemble_compression", "every": e,
                                                     "relabel_fraction": 1.0, "temperature": 2.0,
                                                     "distill_epochs": 1, "distill_schedule": "linear"},
                                    "ec_round"),
    "admm": (2, lambda h, e: {"name": "admm", "local_steps": h}, "admm_round"),
    "gossip_ring": (4, lambda h, e: {"name": "gossip", "graph": "ring", "every": h}, "gossip_round"),
    "gossip_exponential": (4, lambda h, e: {"name": "gossip", "graph": "exponential", "every": h},
                           "gossip_round"),
    "model_averaging_4w": (4, lambda h, e: {"name": "local_sgd", "period": h}, "syncs"),
}


def base_config(workers: int, model: str, schedule: str, p: dict, seed: int) -> dict:
    return {
        "name": "aggregation", "seed": seed, "workers": workers,
        "data": {"source": {"name": "fashion_mnist"},
                 "partition": {"name": "shuffle_split", "reshuffle": "none"},
                 "batch_size": p["batch_size"]},
        "model": dict(p["model"]),
        "optim": {**p["optimizer"], "schedule": schedule},
        "comm": {"timeout_s": 300},
        "train": {"epochs": p["rounds"] * p["epochs_per_round"], "eval_every": 0,
                  "progress": False, "log_every": 50},
    }


def config(method: str, model: str, schedule: str, p: dict, seed: int) -> tuple[dict, int]:
    """The run's config and its model's parameter count."""
    import distml
    workers, algo, _ = METHODS[method]
    cfg = base_config(workers, model, schedule, p, seed)
    plan = distml.plan(cfg)
    cfg["algorithm"] = algo(plan["steps_per_epoch"] * p["epochs_per_round"], p["epochs_per_round"])
    cfg["name"] = f"aggregation-{method}"
    return cfg, int(plan["model"]["parameters"])


def saved_run(cfg: dict, folder: Path) -> dict | None:
    """The summary of a finished run of exactly ``cfg`` in ``folder``, or None.

    A run is deterministic for its seed (tests/runtime/test_determinism.py), so reading a
    finished one back gives what rerunning it would (its wall times are the original's):
    an interrupted bench resumes, and ``--part`` splits one over parallel invocations.
    """
    from distml.config import parse_config
    try:
        saved = json.loads((folder / "config.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    return summary if saved == parse_config(cfg).to_dict() else None


def one_run(method: str, model: str, schedule: str, p: dict, seed: int, root: Path) -> dict:
    import distml
    cfg, n_params = config(method, model, schedule, p, seed)
    workers, _, counter = METHODS[method]
    folder = root / f"{model}-{schedule}-{method}-seed{seed}"
    t0 = time.perf_counter()
    s = saved_run(cfg, folder)
    reused = s is not None
    if s is None:
        s = distml.run(cfg, out=folder)
    elapsed = time.perf_counter() - t0
    m = s.get("algorithm_metrics") or {}
    evals = [json.loads(line) for line in
             (folder / "eval.jsonl").read_text().splitlines() if line.strip()]
    rounds = m.get(counter)
    if rounds != p["rounds"]:
        raise RuntimeError(f"{method}: {counter} = {rounds}, expected {p['rounds']} rounds")
    eval_bytes = 0
    if method.startswith("gossip"):   # one all-reduce of the replicas (+ one float64) per evaluation
        eval_bytes = len(evals) * workers * (4 * n_params + 8)
    out = {"test_accuracy": s["test_accuracy"], "bytes_sent": s["bytes_sent"],
           "bytes_train": s["bytes_sent"] - eval_bytes, "rounds": rounds, "workers": workers,
           "steps": s["steps"], "wall_seconds": s["wall_seconds"],
           "compute_seconds": s["compute_seconds"], "run_seconds": elapsed, "reused": reused,
           "curve": [e.get("test_accuracy") for e in evals]}
    for k in ("ensemble_accuracy", "member_accuracy_mean", "consensus_distance",
              "primal_residual", "rho"):
        if k in m:
            out[k] = m[k]
    return out


def points(mean_low_high: tuple[float, float, float]) -> tuple[float, list[float]]:
    """A paired interval of accuracies as ``(mean, [low, high])`` in points."""
    m, lo, hi = (round(100 * x, 2) for x in mean_low_high)
    return m, [lo, hi]


def at_round(runs: list[dict], r: int, p: dict) -> list[float]:
    """Each seed's accuracy after round r: a run evaluates at step 0 and after every
    epoch (``eval_every = 0``), so round r is its curve's entry r·epochs_per_round."""
    return [x["curve"][r * p["epochs_per_round"]] for x in runs]


def summarize(results: dict[str, list[dict]], p: dict) -> dict:
    """One (model, schedule) configuration: means, intervals and paired differences."""
    def values(method, key):
        return [r[key] for r in results[method] if r.get(key) is not None]
    out = {"accuracy": {m: interval(values(m, "test_accuracy")) for m in results},
           "bytes": {m: int(sum(values(m, "bytes_sent")) / len(results[m])) for m in results},
           "bytes_train": {m: int(sum(values(m, "bytes_train")) / len(results[m])) for m in results},
           "wall_seconds": {m: interval(values(m, "wall_seconds"), 2) for m in results},
           "per_seed": {m: [round(v, 4) for v in values(m, "test_accuracy")] for m in results}}
    ma = results.get("model_averaging")
    for method, key in (("ensemble_compression", "ec"), ("ensemble_compression_anneal", "ec_anneal")):
        if method not in results or not ma:
            continue
        ec = results[method]
        out[f"{key}_minus_ma"], out[f"{key}_minus_ma_ci"] = points(paired_ci(
            values(method, "test_accuracy"), values("model_averaging", "test_accuracy")))
        by_round = [points(paired_ci(at_round(ec, r, p), at_round(ma, r, p)))
                    for r in range(1, p["rounds"] + 1)]
        out[f"{key}_minus_ma_by_round"] = [m for m, _ in by_round]
        out[f"{key}_minus_ma_by_round_ci"] = [ci for _, ci in by_round]
        out[f"{key}_seeds_ahead_by_round"] = [
            sum(a > b for a, b in zip(at_round(ec, r, p), at_round(ma, r, p)))
            for r in range(1, p["rounds"] + 1)]
    if "ensemble_compression" in results:
        out["ec_ensemble_accuracy"] = interval(values("ensemble_compression", "ensemble_accuracy"))
        out["ec_member_accuracy"] = interval(values("ensemble_compression", "member_accuracy_mean"))
    return out


def signed(x: float) -> str:
    return f"{x:+.2f}"


def tables_for(name: str, c: dict, p: dict) -> list[dict]:
    """The accuracy table and the per-round difference table of one configuration."""
    rows = [[m, METHODS[m][0], f"{a['mean']:.4f} [{a['ci95'][0]:.4f}, {a['ci95'][1]:.4f}]",
             ", ".join(f"{v:.4f}" for v in c["per_seed"][m]), round(c["bytes_train"][m] / 1e6, 2)]
            for m, a in c["accuracy"].items()]
    out = [table(f"{name}: test accuracy after {p['rounds']} rounds (mean [95% CI] over "
                 f"{len(p['seeds'])} seeds)",
                 ["method", "workers", "test accuracy", "per seed", "MB sent (training)"], rows)]
    diff_rows = []
    for key, label in (("ec", "ensemble-compression − model averaging"),
                       ("ec_anneal", "annealed distillation − model averaging")):
        if f"{key}_minus_ma_by_round" not in c:
            continue
        diff_rows.append([label] + [f"{signed(m)} [{signed(lo)}, {signed(hi)}]" for m, (lo, hi) in
                                    zip(c[f"{key}_minus_ma_by_round"], c[f"{key}_minus_ma_by_round_ci"])])
        diff_rows.append(["seeds ahead"] + [f"{k} of {len(p['seeds'])}"
                                            for k in c[f"{key}_seeds_ahead_by_round"]])
    if diff_rows:
        out.append(table(f"{name}: paired difference after each round (points, mean [95% CI])",
                         ["after round"] + [str(r) for r in range(1, p["rounds"] + 1)], diff_rows))
    return out


def verdict(c: dict) -> str:
    m, (lo, hi) = c["ec_minus_ma"], c["ec_minus_ma_ci"]
    word = "ahead" if lo >= 0 else ("behind" if hi < 0 else "a tie")
    return f"{signed(m)} [{signed(lo)}, {signed(hi)}] ({word})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 round, 1 seed")
    ap.add_argument("--model", choices=list(PROTOCOL["models"]), default="mlp",
                    help="one model per invocation (the CNN's result: bench/results/aggregation_cnn.json)")
    ap.add_argument("--methods", default=",".join(PROTOCOL["methods"]),
                    help="comma-separated subset of: " + ", ".join(METHODS) + "; or 'all'")
    ap.add_argument("--out", type=Path, default=None,
                    help="keep the run folders here (default: a temp dir); finished runs of the "
                         "same config found there are read back, not rerun")
    ap.add_argument("--part", default=None, metavar="I/N",
                    help="only run the I-th of every N runs into --out, then stop (the protocol "
                         "split over N parallel invocations; gather with one more without --part)")
    args = ap.parse_args()
    part = None
    if args.part is not None:
        i, _, n = args.part.partition("/")
        if not (i.isdigit() and n.isdigit() and int(i) < int(n)) or args.out is None:
            ap.error(f"--part must be I/N with 0 <= I < N, with --out; got {args.part!r}")
        part = (int(i), int(n))
    p = {**{k: v for k, v in PROTOCOL.items() if k != "models"}, "model_name": args.model,
         **PROTOCOL["models"][args.model], **(QUICK if args.quick else {})}
    methods = list(METHODS) if args.methods == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        ap.error(f"unknown methods {sorted(unknown)}; valid: {', '.join(METHODS)} or 'all'")
    p["methods"] = methods
    configs = [(args.model, schedule) for schedule in p["schedules"]]
    results = {c: {m: [] for m in methods} for c in configs}
    load = [os.getloadavg()]
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distml-aggregation-") as tmp:
        root = args.out if args.out is not None else Path(tmp)
        # interleaved: load hits every method alike
        order = [(seed, model, schedule, method) for seed in p["seeds"]
                 for model, schedule in configs for method in methods]
        for index, (seed, model, schedule, method) in enumerate(order):
            if part is not None and index % part[1] != part[0]:
                continue
            r = one_run(method, model, schedule, p, seed, root)
            results[(model, schedule)][method].append(r)
            print(f"seed {seed} {model}/{schedule} {method:27s} acc={r['test_accuracy']:.4f} "
                  f"MB={r['bytes_sent'] / 1e6:.2f} steps={r['steps']} run={r['run_seconds']:.1f}s"
                  f"{' (read back)' if r['reused'] else ''} "
                  f"curve={[round(a, 4) for a in r['curve']]}", file=sys.stderr, flush=True)
            load.append(os.getloadavg())
    if part is not None:
        return 0
    summaries = {f"{model}/{schedule}": summarize(results[(model, schedule)], p)
                 for model, schedule in configs}
    main_c = summaries[f"{configs[0][0]}/{configs[0][1]}"]
    line = {"bench": "aggregation" if args.model == "mlp" else f"aggregation_{args.model}",
            "accuracy": {m: a["mean"] for m, a in main_c["accuracy"].items()},
            "bytes": main_c["bytes"]}
    for k in ("ec_minus_ma", "ec_minus_ma_ci", "ec_minus_ma_by_round", "ec_minus_ma_by_round_ci",
              "ec_anneal_minus_ma", "ec_anneal_minus_ma_ci", "ec_anneal_minus_ma_by_round"):
        line[k] = main_c.get(k)
    if "ec_ensemble_accuracy" in main_c:
        line["ec_ensemble_accuracy"] = main_c["ec_ensemble_accuracy"]["mean"]
        line["ec_member_accuracy"] = main_c["ec_member_accuracy"]["mean"]
    line["configurations"] = {name: {k: c.get(k) for k in ("ec_minus_ma", "ec_minus_ma_ci",
                                                           "ec_anneal_minus_ma", "ec_anneal_minus_ma_ci")}
                              for name, c in summaries.items()}
    if "ec_minus_ma" in main_c:
        line["headline"] = ("ensemble-compression − model averaging after "
                            f"{p['rounds']} rounds, points: "
                            + "; ".join(f"{name} {verdict(c)}" for name, c in summaries.items())
                            + f"; after round 1 ({configs[0][0]}/{configs[0][1]}) "
                            f"{signed(main_c['ec_minus_ma_by_round'][0])}")
    line.update({"rounds": p["rounds"], "epochs_per_round": p["epochs_per_round"],
                 "seeds": len(p["seeds"]), "schedules": p["schedules"], "model": args.model,
                 "workers": {m: METHODS[m][0] for m in methods},
                 "bench_seconds": round(time.perf_counter() - t_start, 1)})
    details = {"configurations": summaries, "loadavg": load,
               "tables": [t for name, c in summaries.items() for t in tables_for(name, c, p)]}
    return finish(line, p, quick=args.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
