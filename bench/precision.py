"""bf16 autocast against fp32 on the quick-start CNN: does mixed precision cost accuracy?

``examples/quickstart.toml`` (a small CNN on Fashion-MNIST, 2 workers, sync_sgd, momentum
SGD with a cosine schedule) trained twice from the same seed, once with ``[train]
precision = "fp32"`` and once with ``"bf16"`` (``torch.autocast`` around forward and loss;
float32 master weights, gradients and all-reduce), then evaluated in float32. The
difference of the final test accuracies is reported in percentage points (the goal:
within 0.5), with the ratio of the wall times (it depends on the CPU's bf16 support:
autocast adds casts, and only CPUs with bf16 instructions run the kernels faster).

The protocol (``PROTOCOL``) is fixed before the run: the quick-start's 2 epochs, 5
seeds (the effect is under a point), the two precisions interleaved within each seed;
``bf16_minus_fp32`` is the paired mean over seeds with its 95% interval
(``bf16_minus_fp32_ci``); the goal counts as met only when the whole interval lies
within ±0.5 points.

    python bench/precision.py              # the documented run (docs/benchmarks.md)
    python bench/precision.py --quick      # smoke check: 1 seed, 60 steps, same code path

Ends by printing one JSON line (docs/design.md §5) with ``bf16_minus_fp32`` (points),
``bf16_minus_fp32_ci``, ``fp32_accuracy``, ``bf16_accuracy`` (means) and
``bf16_over_fp32_wall`` (the ratio of mean wall times, with ``…_ci``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import finish, interval, paired_ci, ratio_ci, table  # noqa: E402

PROTOCOL = {"config": "examples/quickstart.toml", "epochs": 2.0, "seeds": [0, 1, 2, 3, 4],
            "precisions": ["fp32", "bf16"], "tuning": "none: the quick-start's optimizer for both",
            "goal": "|bf16 - fp32| <= 0.5 points: the whole paired 95% interval inside ±0.5"}
QUICK = {"seeds": [0], "max_steps": 60}


def one_run(precision: str, seed: int, p: dict) -> dict:
    import distml
    overrides = [f"seed={seed}", f"train.precision={precision}", f"train.epochs={p['epochs']}",
                 "train.eval_every=100000", "train.checkpoint_every=0", "train.progress=false"]
    if "max_steps" in p:
        overrides += [f"train.max_steps={p['max_steps']}", "optim.schedule.warmup_steps=10"]
    with tempfile.TemporaryDirectory() as tmp:
        s = distml.run(REPO / "examples" / "quickstart.toml", overrides=overrides,
                       out=Path(tmp) / "run")
    return {"test_accuracy": s["test_accuracy"], "test_loss": s["test_loss"],
            "train_loss": s["train_loss"], "wall_seconds": s["wall_seconds"], "steps": s["steps"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 60 steps per precision (smoke check)")
    args = ap.parse_args()
    p = {**PROTOCOL, **(QUICK if args.quick else {})}
    runs: dict[str, list[dict]] = {q: [] for q in p["precisions"]}
    for seed in p["seeds"]:                  # interleaved: load hits both precisions alike
        for q in p["precisions"]:
            r = one_run(q, seed, p)
            runs[q].append(r)
            print(f"seed {seed} {q}: accuracy {r['test_accuracy']:.4f}, test loss "
                  f"{r['test_loss']:.4f}, {r['steps']} steps in {r['wall_seconds']:.1f} s",
                  file=sys.stderr, flush=True)
    acc = {q: [r["test_accuracy"] for r in rs] for q, rs in runs.items()}
    wall = {q: [r["wall_seconds"] for r in rs] for q, rs in runs.items()}
    diff = paired_ci(acc["bf16"], acc["fp32"])
    wall_ratio = ratio_ci(wall["bf16"], wall["fp32"])
    met = -0.5 <= 100 * diff[1] and 100 * diff[2] <= 0.5
    line = {"bench": "precision", "epochs": p["epochs"], "quick": args.quick,
            "seeds": len(p["seeds"]),
            "bf16_minus_fp32": round(100 * diff[0], 2),
            "bf16_minus_fp32_ci": [round(100 * diff[1], 2), round(100 * diff[2], 2)],
            "fp32_accuracy": interval(acc["fp32"])["mean"],
            "bf16_accuracy": interval(acc["bf16"])["mean"],
            "bf16_over_fp32_wall": round(wall_ratio[0], 2),
            "bf16_over_fp32_wall_ci": [round(wall_ratio[1], 2), round(wall_ratio[2], 2)]}
    line["headline"] = (f"bf16 − fp32 {100 * diff[0]:+.2f} [{100 * diff[1]:+.2f}, "
                        f"{100 * diff[2]:+.2f}] points; goal within ±0.5: "
                        + ("met" if met else "not met (the interval reaches past ±0.5)"))
    rows = [[q, f"{interval(acc[q])['mean']:.4f} {interval(acc[q])['ci95']}",
             ", ".join(f"{a:.4f}" for a in acc[q]), f"{interval(wall[q], 1)['mean']:.1f}"]
            for q in p["precisions"]]
    details = {"runs": runs, "loadavg": os.getloadavg(), "tables": [table(
        f"Quick-start CNN, {p['epochs']:g} epochs, {len(p['seeds'])} seeds",
        ["precision", "test accuracy (mean [95% CI])", "per seed", "wall s (mean)"], rows)]}
    return finish(line, p, quick=args.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
