"""CoCoA / CoCoA+ against mini-batch SGD: communication rounds to 1e-2 relative suboptimality.

Problem: L2-regularized logistic regression, ``P(w) = 1/n Σ log(1 + e^{−y x·w}) + λ/2 ‖w‖²``
(λ = 0.01, no intercept) on scikit-learn's breast_cancer training split as distml loads
it (455 × 30, standardized). Optimum ``P*``: scikit-learn's ``LogisticRegression``
(C = 1/(λn), tol 1e-12). Target: ``P(w) ≤ (1 + 1e-2) P*``. 2 workers; every method
touches the same number of samples per communication round: H per worker.

- CoCoA+ (adding) and CoCoA (averaging): ``distml.run`` with ``[algorithm] name =
  "cocoa"``, 2 worker processes, H SDCA steps per worker per round; the objective of
  every round's iterate is read from ``events-rank0.jsonl`` (each round logs P of the
  iterate it began at, so event j is the iterate after j rounds).
- Mini-batch SGD: a single-process simulation of 2-worker synchronous SGD (what
  ``sync_sgd`` computes): each round each worker draws the next H samples of its own
  shard (the same shards CoCoA uses; a fresh permutation per pass), the two gradients
  of ``mean loss + λ/2‖w‖²`` are averaged (= the gradient of the global mini-batch of 2H),
  and ``w ← w − η_t g`` with the 1/t decay ``η_t = η0 / (1 + λ η0 t)`` (Bottou 2012).
  η0 is the best of a 5-point grid (``--grid``), picked by rounds to target (ties: lower
  final objective). Rounds are deterministic: no timing noise.

A method that does not reach the target within ``--max-rounds`` (1,000) counts that
many rounds.

    python bench/cocoa.py                  # the documented run (docs/benchmarks.md)
    python bench/cocoa.py --quick          # smoke check: same code path, 200-round cap, one H

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "cocoa", "round_reduction": ..., ...}

``round_reduction`` = SGD rounds ÷ CoCoA+ rounds at the headline H (one local pass);
``round_reduction_cocoa`` the same for CoCoA (averaging); ``by_h`` every H measured.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np

LAM = 0.01
SEED = 0
REL = 1e-2


def train_set():
    from distml.partition import SOURCES
    tr = SOURCES.build({"name": "sklearn", "dataset": "breast_cancer"}, seed=SEED).train()
    x, y = tr.take(np.arange(len(tr)))
    return x.double().numpy().reshape(len(tr), -1), 2.0 * y.double().numpy() - 1.0, tr


def optimum(x, y) -> float:
    from sklearn.linear_model import LogisticRegression

    from distml.optim.glm import primal_objective
    w = LogisticRegression(C=1.0 / (LAM * len(y)), fit_intercept=False, tol=1e-12,
                           max_iter=10_000).fit(x, y).coef_[0]
    return primal_objective("logistic", x, y, w, LAM)


def shards(data, workers: int) -> list[np.ndarray]:
    """The row indices of each worker's shard, exactly as ``algorithms/cocoa.py`` cuts them."""
    from distml.config import load_config
    from distml.partition import PARTITIONS
    cfg = load_config(base={"seed": SEED})
    order = PARTITIONS.build(cfg.data.partition).indices(len(data), 0, 1, 0, SEED, data.labels)
    return np.array_split(order, workers)


def cocoa_rounds(variant: str, h: int, max_rounds: int, target: float) -> dict:
    import distml
    cfg = {
        "name": f"bench-cocoa-{variant}", "seed": SEED, "workers": 2,
        "data": {"source": {"name": "sklearn", "dataset": "breast_cancer"}, "batch_size": 32},
        "model": {"name": "softmax", "bias": False},
        "algorithm": {"name": "cocoa", "variant": variant, "lam": LAM, "local_steps": h,
                      "gap_tol": 1e-6, "rounds": max_rounds},
        "train": {"log_every": 1, "eval_every": 10 ** 9, "progress": False},
    }
    with tempfile.TemporaryDirectory() as tmp:
        s = distml.run(cfg, out=Path(tmp) / "run")
        log = (Path(tmp) / "run" / "events-rank0.jsonl").read_text()
        events = [json.loads(ln) for ln in log.splitlines()]
    objectives = [e["loss"] for e in events]
    final = s["algorithm_metrics"]["primal_objective"]
    hit = next((j for j, v in enumerate(objectives) if v <= target), None)
    if hit is None and final <= target and len(objectives) < max_rounds:
        hit = len(objectives)                # reached by the last (certified, unlogged) iterate
    return {"rounds": hit if hit is not None else max_rounds, "reached": hit is not None,
            "rounds_run": len(objectives), "final_objective": final}


def sgd_rounds(x, y, parts: list[np.ndarray], h: int, eta0: float, max_rounds: int,
               target: float) -> dict:
    """2-worker synchronous mini-batch SGD, simulated in one process (see the module doc)."""
    rng = [np.random.default_rng(SEED * 1009 + k) for k in range(len(parts))]
    perm = [p[r.permutation(len(p))] for p, r in zip(parts, rng)]
    pos = [0] * len(parts)
    w = np.zeros(x.shape[1])

    def objective(w):
        return float(np.logaddexp(0.0, -y * (x @ w)).mean() + 0.5 * LAM * w @ w)

    hit, value = None, objective(w)
    for t in range(1, max_rounds + 1):
        grads = []
        for k in range(len(parts)):
            idx = []
            while len(idx) < h:              # the next h samples of the shard, passes wrap
                if pos[k] == len(perm[k]):
                    perm[k], pos[k] = parts[k][rng[k].permutation(len(parts[k]))], 0
                take = min(h - len(idx), len(perm[k]) - pos[k])
                idx.extend(perm[k][pos[k]:pos[k] + take])
                pos[k] += take
            xb, yb = x[idx], y[idx]
            m = yb * (xb @ w)
            coef = -yb * np.exp(-np.logaddexp(0.0, m))      # d/dm log(1+e^{-m}) · y
            grads.append(xb.T @ coef / len(idx) + LAM * w)
        g = np.mean(grads, axis=0)           # sync_sgd's all-reduce average
        w = w - eta0 / (1.0 + LAM * eta0 * t) * g
        value = objective(w)
        if not np.isfinite(value):
            break
        if value <= target:
            hit = t
            break
    return {"rounds": hit if hit is not None else max_rounds, "reached": hit is not None,
            "final_objective": value, "eta0": eta0}


def _on_term(signum, frame):                 # run the finally blocks (the launcher reaps)
    raise SystemExit(128 + signum)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 200-round cap, headline H only")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds are deterministic; repeats only re-check that (default 1)")
    ap.add_argument("--max-rounds", type=int, default=1000)
    ap.add_argument("--grid", default="0.1,0.3,1,3,10", help="SGD's η0 values (5 points)")
    ap.add_argument("--small-h", type=int, default=32, help="a second, smaller H (0: none)")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, _on_term)
    if args.quick:
        args.max_rounds, args.small_h = 200, 0
    grid = [float(v) for v in args.grid.split(",")]
    x, y, data = train_set()
    p_star = optimum(x, y)
    target = (1.0 + REL) * p_star
    parts = shards(data, 2)
    n_local = max(len(p) for p in parts)
    hs = [n_local] + ([args.small_h] if args.small_h else [])
    by_h = {}
    for h in hs:
        sgd = [sgd_rounds(x, y, parts, h, e, args.max_rounds, target) for e in grid]
        best = min(sgd, key=lambda r: (r["rounds"], r["final_objective"]))
        row = {"h": h, "sgd": best, "sgd_grid": {str(r["eta0"]): r["rounds"] for r in sgd}}
        for variant in ("cocoa+", "cocoa"):
            reps = [cocoa_rounds(variant, h, args.max_rounds, target) for _ in range(args.repeats)]
            if len({r["rounds"] for r in reps}) != 1:
                print(f"warning: {variant} rounds differ between repeats: {reps}", file=sys.stderr)
            row[variant] = reps[0]
        for variant in ("cocoa+", "cocoa"):
            row[f"reduction_{variant}"] = round(best["rounds"] / max(row[variant]["rounds"], 1), 2)
        by_h[h] = row
        print(json.dumps(row), file=sys.stderr, flush=True)
    head = by_h[n_local]
    print(json.dumps({
        "bench": "cocoa", "round_reduction": head["reduction_cocoa+"],
        "round_reduction_cocoa": head["reduction_cocoa"],
        "rounds": {"cocoa+": head["cocoa+"]["rounds"], "cocoa": head["cocoa"]["rounds"],
                   "sgd": head["sgd"]["rounds"]},
        "sgd_eta0": head["sgd"]["eta0"], "sgd_grid_rounds": head["sgd_grid"],
        "h": n_local, "p_star": round(p_star, 6), "rel_target": REL, "lam": LAM,
        "max_rounds": args.max_rounds, "repeats": args.repeats,
        "by_h": {str(h): {"cocoa+": r["cocoa+"]["rounds"], "cocoa": r["cocoa"]["rounds"],
                          "sgd": r["sgd"]["rounds"], "sgd_eta0": r["sgd"]["eta0"],
                          "round_reduction": r["reduction_cocoa+"]} for h, r in by_h.items()},
    }))


if __name__ == "__main__":
    main()
