"""Communication efficiency: every codec, local SGD and a few combinations vs fp32 sync SGD.

Fashion-MNIST, 2 workers (local launcher, gloo on 127.0.0.1), the MLP 784-512-512-10
(communication-heavy) and optionally the CNN; momentum SGD, batch 64 per worker. For
every method: final test accuracy (mean over seeds) and bytes sent per worker per step,
both from each run's ``summary.json`` (bytes counted by the transport). The one-time
broadcast of the initial model (identical for every method) is left out of the per-step
bytes; ``bytes_reduction_with_setup`` keeps it in.

    python bench/compression.py                   # the documented run: MLP, 3 epochs, 2 seeds
    python bench/compression.py --models mlp,cnn  # also the CNN
    python bench/compression.py --quick           # smoke check: 1 seed, 0.5 epoch, same path

Ends with one JSON line (DESIGN.md §5)::

    {"bench": "compression", "bytes_reduction": {...}, "accuracy_drop": {...}, "best": ...}

``bytes_reduction[m]`` = fp32 bytes/worker/step ÷ m's; ``accuracy_drop[m]`` = fp32's mean
accuracy − m's, in points (positive = worse); both for the MLP.
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

REPO = Path(__file__).resolve().parents[1]

SYNC = {"name": "sync_sgd"}
EF = {"error_feedback": True}
#: method → (algorithm table, comm table)
METHODS = {
    "fp32": (SYNC, {}),
    "fp16": (SYNC, {"codec": "fp16"}),
    "bf16": (SYNC, {"codec": "bf16"}),
    "qsgd_2bit": (SYNC, {"codec": {"name": "qsgd", "bits": 2}}),
    "qsgd_4bit": (SYNC, {"codec": {"name": "qsgd", "bits": 4}}),
    "qsgd_8bit": (SYNC, {"codec": {"name": "qsgd", "bits": 8}}),
    "sign_ef": (SYNC, {"codec": "sign", **EF}),
    "topk_1pct_ef": (SYNC, {"codec": {"name": "topk", "ratio": 0.01}, **EF}),
    "topk_1pct_ef_fp16": (SYNC, {"codec": [{"name": "topk", "ratio": 0.01}, "fp16"], **EF}),
    "randomk_10pct_ef": (SYNC, {"codec": {"name": "randomk", "ratio": 0.1}, **EF}),
    "threshold_ef": (SYNC, {"codec": {"name": "threshold", "tau": 0.01}, **EF}),
    "powersgd_r2": (SYNC, {"codec": {"name": "powersgd", "rank": 2}}),
    "local_sgd_h16": ({"name": "local_sgd", "period": 16}, {}),
    "local_sgd_h16_pipeline": ({"name": "local_sgd", "period": 16, "pipeline": True}, {}),
    "local_sgd_h16_bmuf": ({"name": "local_sgd", "period": 16, "bmuf": True,
                            "block_momentum": 0.5}, {}),
    "local_h16_sign_ef": ({"name": "local_sgd", "period": 16}, {"codec": "sign", **EF}),
    "local_h16_powersgd_r2": ({"name": "local_sgd", "period": 16},
                              {"codec": {"name": "powersgd", "rank": 2}}),
}
COMBOS = ("topk_1pct_ef_fp16", "local_h16_sign_ef", "local_h16_powersgd_r2")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(x)}" for k, x in v.items()) + " }"
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return repr(v)


def config_text(model: str, algorithm: dict, comm: dict, seed: int, epochs: float) -> str:
    lines = [f'name = "bench"', f"seed = {seed}", "workers = 2", "[data]",
             'source = { name = "fashion_mnist" }', "batch_size = 64", "[model]", f'name = "{model}"',
             "[optim]", 'name = "sgd"', "lr = 0.05", "momentum = 0.9", "[algorithm]"]
    lines += [f"{k} = {toml_value(v)}" for k, v in algorithm.items()]
    lines += ["[comm]", "timeout_s = 120"] + [f"{k} = {toml_value(v)}" for k, v in comm.items()]
    lines += ["[train]", f"epochs = {epochs}", "eval_every = 0", "log_every = 50", "progress = false"]
    return "\n".join(lines) + "\n"


def run_one(tmp: Path, model: str, method: str, seed: int, epochs: float) -> dict:
    algorithm, comm = METHODS[method]
    path = tmp / f"{model}-{method}-{seed}.toml"
    path.write_text(config_text(model, algorithm, comm, seed, epochs))
    out = tmp / path.stem
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "distml", "run", str(path), "--out", str(out)],
                         capture_output=True, text=True, cwd=REPO, timeout=3600)
    if res.returncode != 0:
        # a diverged run (e.g. loss became nan) is a result, not a crash of the bench
        line = (res.stderr.strip().splitlines() or ["?"])[0]
        print(f"  {model:4s} {method:24s} seed {seed}: FAILED: {line}", file=sys.stderr, flush=True)
        return {"acc": None, "error": line}
    s = json.loads((out / "summary.json").read_text())
    n_params = sum(v.numel() for v in __import__("torch").load(out / "model.pt", weights_only=True).values())
    setup = n_params * 4                       # rank 0's broadcast of the initial model
    per_step = (s["bytes_sent"] - setup) / s["workers"] / s["steps"]
    per_step_setup = s["bytes_sent"] / s["workers"] / s["steps"]
    print(f"  {model:4s} {method:24s} seed {seed}: acc {s['test_accuracy']:.4f}  "
          f"{per_step / 1e3:10.2f} kB/worker/step  wall {s['wall_seconds']:.1f}s  "
          f"({time.perf_counter() - t0:.0f}s total)", file=sys.stderr, flush=True)
    return {"acc": s["test_accuracy"], "bytes": per_step, "bytes_setup": per_step_setup,
            "wall": s["wall_seconds"], "comm": s["comm_seconds"], "compute": s["compute_seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 0.5 epoch: a smoke check")
    ap.add_argument("--models", default="mlp", help="comma-separated: mlp,cnn")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=None)
    ap.add_argument("--methods", default=",".join(METHODS))
    args = ap.parse_args()
    seeds = args.seeds or (1 if args.quick else 2)
    epochs = args.epochs or (0.5 if args.quick else 3.0)
    methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; valid: {', '.join(METHODS)}")
    if "fp32" not in methods:
        methods.insert(0, "fp32")
    from distml.algorithms import ALGORITHMS
    skipped = [m for m in methods if METHODS[m][1].get("codec")
               and "codec" not in ALGORITHMS.parameters(METHODS[m][0]["name"])]
    for m in skipped:      # an algorithm that takes no codec in this version of distml
        print(f"  skipped {m}: {METHODS[m][0]['name']} takes no comm.codec in this version",
              file=sys.stderr)
    methods = [m for m in methods if m not in skipped]
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory(prefix="distml-bench-") as tmp:
        for model in args.models.split(","):
            results[model] = {}
            for method in methods:
                runs = [run_one(Path(tmp), model, method, seed, epochs) for seed in range(seeds)]
                failed = [r["error"] for r in runs if r["acc"] is None]
                if failed:
                    results[model][method] = {"accuracy": None, "failed": failed}
                    continue
                results[model][method] = {
                    "accuracy": statistics.mean(r["acc"] for r in runs),
                    "bytes_per_worker_step": statistics.mean(r["bytes"] for r in runs),
                    "bytes_per_worker_step_with_setup": statistics.mean(r["bytes_setup"] for r in runs),
                    "wall_seconds": statistics.mean(r["wall"] for r in runs),
                    "comm_seconds": statistics.mean(r["comm"] for r in runs),
                    "compute_seconds": statistics.mean(r["compute"] for r in runs)}
    main_model = "mlp" if "mlp" in results else next(iter(results))
    table = results[main_model]
    base = table["fp32"]
    done = {m: r for m, r in table.items() if r["accuracy"] is not None}
    reduction = {m: base["bytes_per_worker_step"] / r["bytes_per_worker_step"] for m, r in done.items()}
    with_setup = {m: base["bytes_per_worker_step_with_setup"] / r["bytes_per_worker_step_with_setup"]
                  for m, r in done.items()}
    drop = {m: 100 * (base["accuracy"] - r["accuracy"]) for m, r in done.items()}
    ok = [m for m in COMBOS if m in done and drop[m] <= 1.0]
    best = max(ok, key=lambda m: reduction[m]) if ok else None
    if best is not None:
        reduction["best_combo"], drop["best_combo"] = reduction[best], drop[best]
    print(json.dumps({"bench": "compression", "model": main_model, "seeds": seeds, "epochs": epochs,
                      "quick": args.quick, "best": best,
                      "bytes_reduction": {m: round(v, 2) for m, v in reduction.items()},
                      "bytes_reduction_with_setup": {m: round(v, 2) for m, v in with_setup.items()},
                      "accuracy_drop": {m: round(v, 2) for m, v in drop.items()},
                      "accuracy": {m: None if r["accuracy"] is None else round(r["accuracy"], 4)
                                   for m, r in table.items()},
                      "failed": sorted(m for m in table if m not in done), "skipped": skipped,
                      "results": results}))


if __name__ == "__main__":
    main()
