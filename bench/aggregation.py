"""Aggregation methods at an equal number of communication rounds: accuracy and bytes.

Fashion-MNIST, an MLP (784-128-10) by default (``--model cnn`` for the small CNN), plain
SGD with momentum (lr 0.05, momentum 0.9, batch 64 per worker), the same seed (initial
model and shards) for every method within a repeat. Each worker keeps its own fixed shard
(``shuffle_split`` with ``reshuffle = "none"``: the local-data setting of Sun et al.
2017, and what ensemble-compression relabels). One communication round = ``--every``
local epochs; every method runs ``--rounds`` rounds (``--rounds × --every`` epochs):

- ``model_averaging`` — ``local_sgd`` with ``period`` = the steps of one round (2 workers);
- ``ensemble_compression`` — ``every`` = ``--every`` epochs (2 workers): all-gather the
  models, relabel the local shard with the ensemble's soft outputs (T = 2), distil for one
  pass over the shard (these are extra optimizer steps: it computes about twice as much
  per round as the others);
- ``ensemble_compression_anneal`` — the same with ``distill_schedule = "linear"`` (the
  distillation's learning rate falls to 0 over its pass);
- ``admm`` — consensus ADMM, ``local_steps`` = the steps of one round (2 workers);
- ``gossip_ring`` / ``gossip_exponential`` — D-PSGD mixing once per round over a ring
  (Metropolis–Hastings 1/3) or the one-peer exponential graph, on **4** workers (with 2
  every graph is exact averaging);
- ``model_averaging_4w`` — model averaging on the same 4 workers, the exact-averaging
  reference for the two gossip graphs.

The rounds each run really made are read back from its ``algorithm_metrics`` (``syncs``,
``ec_round``, ``admm_round``, ``gossip_round``) and checked against ``--rounds``.
Figures are summary.json's ``test_accuracy`` (the final model: the average, rank 0's
distilled model, ADMM's consensus z, the replicas' mean) and ``bytes_sent`` (payload
handed to the transport, summed over workers; it includes rank 0's initial broadcast of
the model, and for gossip the evaluation-time all-reduce of the replicas, one per
evaluation, which ``bytes_train`` leaves out). Methods run interleaved within each repeat,
every run in fresh worker processes; medians over ``--repeats`` are reported.

    python bench/aggregation.py                  # the documented run, 9 repeats (docs/benchmarks.md)
    python bench/aggregation.py --quick          # smoke check: 1 round, 1 repeat, same code path

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "aggregation", "accuracy": {method: median}, "bytes": {method: median},
     "ec_minus_ma": points, "rounds": R, "repeats": N, ...}

``ec_minus_ma`` = (median accuracy of ensemble_compression − median accuracy of
model_averaging) × 100, in percentage points; ``ec_minus_ma_paired`` = the per-repeat
differences (same seed); ``ec_minus_ma_by_round`` = the same difference of medians after
each round 1..R; ``ec_anneal_minus_ma`` (and ``…_by_round``) for the annealed variant.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

LR, MOMENTUM, BATCH = 0.05, 0.9, 64

# method -> (workers, algorithm spec builder(steps_per_round, args), round counter key)
METHODS = {
    "model_averaging": (2, lambda h, a: {"name": "local_sgd", "period": h}, "syncs"),
    "ensemble_compression": (2, lambda h, a: {"name": "ensemble_compression", "every": a.every,
                                              "relabel_fraction": 1.0, "temperature": 2.0,
                                              "distill_epochs": 1}, "ec_round"),
    "ensemble_compression_anneal": (2, lambda h, a: {"name": "ensemble_compression", "every": a.every,
                                                     "relabel_fraction": 1.0, "temperature": 2.0,
                                                     "distill_epochs": 1, "distill_schedule": "linear"},
                                    "ec_round"),
    "admm": (2, lambda h, a: {"name": "admm", "local_steps": h}, "admm_round"),
    "gossip_ring": (4, lambda h, a: {"name": "gossip", "graph": "ring", "every": h}, "gossip_round"),
    "gossip_exponential": (4, lambda h, a: {"name": "gossip", "graph": "exponential", "every": h},
                           "gossip_round"),
    "model_averaging_4w": (4, lambda h, a: {"name": "local_sgd", "period": h}, "syncs"),
}


def base_config(workers: int, args, seed: int) -> dict:
    model = {"name": "mlp", "hidden": [128]} if args.model == "mlp" else {"name": "cnn"}
    return {
        "name": "aggregation", "seed": seed, "workers": workers,
        "data": {"source": {"name": "fashion_mnist"},
                 "partition": {"name": "shuffle_split", "reshuffle": "none"}, "batch_size": BATCH},
        "model": model,
        "optim": {"name": "sgd", "lr": LR, "momentum": MOMENTUM, "schedule": args.schedule},
        "comm": {"timeout_s": 300},
        "train": {"epochs": args.rounds * args.every, "eval_every": 0, "progress": False,
                  "log_every": 50},
    }


def config(method: str, args, seed: int) -> tuple[dict, int]:
    """The run's config and its model's parameter count."""
    import distml
    workers, algo, _ = METHODS[method]
    cfg = base_config(workers, args, seed)
    plan = distml.plan(cfg)
    cfg["algorithm"] = algo(plan["steps_per_epoch"] * args.every, args)
    cfg["name"] = f"aggregation-{method}"
    return cfg, int(plan["model"]["parameters"])


def one_run(method: str, args, seed: int, root: Path) -> dict:
    import distml
    cfg, n_params = config(method, args, seed)
    workers, _, counter = METHODS[method]
    t0 = time.perf_counter()
    s = distml.run(cfg, out=root / f"{method}-seed{seed}")
    elapsed = time.perf_counter() - t0
    m = s.get("algorithm_metrics") or {}
    evals = [json.loads(line) for line in
             (Path(s["run_dir"]) / "eval.jsonl").read_text().splitlines() if line.strip()]
    rounds = m.get(counter)
    if rounds != args.rounds:
        raise RuntimeError(f"{method}: {counter} = {rounds}, expected {args.rounds} rounds")
    eval_bytes = 0
    if method.startswith("gossip"):   # one all-reduce of the replicas (+ one float64) per evaluation
        eval_bytes = len(evals) * workers * (4 * n_params + 8)
    out = {"test_accuracy": s["test_accuracy"], "bytes_sent": s["bytes_sent"],
           "bytes_train": s["bytes_sent"] - eval_bytes, "rounds": rounds, "workers": workers,
           "steps": s["steps"], "wall_seconds": s["wall_seconds"],
           "compute_seconds": s["compute_seconds"], "run_seconds": elapsed,
           "curve": [e.get("test_accuracy") for e in evals]}
    for k in ("ensemble_accuracy", "member_accuracy_mean", "consensus_distance",
              "primal_residual", "rho"):
        if k in m:
            out[k] = m[k]
    return out


def by_round(runs: list[dict], reference: list[dict], args) -> list[float]:
    """Median accuracy after each round minus the reference's, in points (rounds 1..R).

    A run evaluates after every epoch (``eval_every = 0``) and at step 0, so round r's
    figure is its curve's entry r·``--every``.
    """
    def median_at(rs, r):
        return statistics.median(x["curve"][r * args.every] for x in rs)
    return [round(100 * (median_at(runs, r) - median_at(reference, r)), 2)
            for r in range(1, args.rounds + 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 round, 1 repeat")
    ap.add_argument("--repeats", type=int, default=9,
                    help="seeds per method (the final accuracy moves by ±1 point between seeds)")
    ap.add_argument("--rounds", type=int, default=5, help="communication rounds R for every method")
    ap.add_argument("--every", type=int, default=1, help="local epochs per round")
    ap.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    ap.add_argument("--schedule", choices=("constant", "cosine"), default="constant",
                    help="learning-rate schedule for every method (cosine: to 0 over the run)")
    ap.add_argument("--methods", default=",".join(METHODS),
                    help="comma-separated subset of: " + ", ".join(METHODS))
    ap.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temp dir)")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.rounds = 1, 1
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = set(methods) - set(METHODS)
    if unknown or not methods:
        ap.error(f"unknown methods {sorted(unknown)}; valid: {', '.join(METHODS)}")
    if args.repeats < 1 or args.rounds < 1 or args.every < 1:
        ap.error("--repeats, --rounds and --every must be >= 1")

    results: dict[str, list[dict]] = {m: [] for m in methods}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="distml-aggregation-") as tmp:
        root = args.out if args.out is not None else Path(tmp)
        for rep in range(args.repeats):
            for method in methods:
                r = one_run(method, args, seed=rep, root=root)
                results[method].append(r)
                print(f"repeat {rep} {method:21s} acc={r['test_accuracy']:.4f} "
                      f"MB={r['bytes_sent'] / 1e6:.2f} (train {r['bytes_train'] / 1e6:.2f}) "
                      f"rounds={r['rounds']} steps={r['steps']} wall={r['wall_seconds']:.1f}s "
                      f"run={r['run_seconds']:.1f}s "
                      + " ".join(f"{k}={r[k]:.4g}" for k in ("ensemble_accuracy", "member_accuracy_mean",
                                                            "consensus_distance", "rho") if k in r)
                      + f" curve={[round(a, 4) for a in r['curve']]}",
                      file=sys.stderr, flush=True)

    def med(method: str, key: str):
        vals = [r[key] for r in results[method] if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    accuracy = {m: round(med(m, "test_accuracy"), 4) for m in methods}
    out = {"bench": "aggregation", "accuracy": accuracy,
           "bytes": {m: int(med(m, "bytes_sent")) for m in methods}}
    if "ensemble_compression" in methods and "model_averaging" in methods:
        out["ec_minus_ma"] = round(100 * (accuracy["ensemble_compression"] - accuracy["model_averaging"]), 2)
        out["ec_minus_ma_paired"] = [round(100 * (e["test_accuracy"] - a["test_accuracy"]), 2)
                                     for e, a in zip(results["ensemble_compression"],
                                                     results["model_averaging"])]
        out["ec_minus_ma_by_round"] = by_round(results["ensemble_compression"],
                                               results["model_averaging"], args)
        if "ensemble_compression_anneal" in methods:
            out["ec_anneal_minus_ma"] = round(100 * (accuracy["ensemble_compression_anneal"]
                                                     - accuracy["model_averaging"]), 2)
            out["ec_anneal_minus_ma_by_round"] = by_round(results["ensemble_compression_anneal"],
                                                          results["model_averaging"], args)
        out["ec_ensemble_accuracy"] = round(med("ensemble_compression", "ensemble_accuracy"), 4)
        out["ec_member_accuracy"] = round(med("ensemble_compression", "member_accuracy_mean"), 4)
    else:
        out["ec_minus_ma"] = None
    out.update({
        "rounds": args.rounds, "epochs_per_round": args.every, "repeats": args.repeats,
        "schedule": args.schedule,
        "workers": {m: METHODS[m][0] for m in methods}, "model": args.model,
        "bytes_train": {m: int(med(m, "bytes_train")) for m in methods},
        "wall_seconds": {m: round(med(m, "wall_seconds"), 2) for m in methods},
        "bench_seconds": round(time.perf_counter() - t_start, 1),
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
