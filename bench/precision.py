"""bf16 autocast against fp32 on the quick-start CNN: does mixed precision cost accuracy?

``examples/quickstart.toml`` (a small CNN on Fashion-MNIST, 2 workers, sync_sgd, momentum
SGD with a cosine schedule) trained twice from the same seed, once with ``[train]
precision = "fp32"`` and once with ``"bf16"`` (``torch.autocast`` around forward and loss;
float32 master weights, gradients and all-reduce), then evaluated in float32. The
difference of the final test accuracies is reported in percentage points (the goal:
within 0.5), with the ratio of the wall times (it depends on the CPU's bf16 support:
autocast adds casts, and only CPUs with bf16 instructions run the kernels faster).

    python bench/precision.py --epochs 2   # the documented run: the quick-start's 2 epochs (docs/sync_sgd.md)
    python bench/precision.py              # 1 epoch
    python bench/precision.py --quick      # smoke check: 60 steps, same code path

Ends by printing one JSON line (docs/design.md §5) with ``bf16_minus_fp32`` (points),
``fp32_accuracy``, ``bf16_accuracy`` and ``bf16_over_fp32_wall``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_run(precision: str, args) -> dict:
    import distml
    overrides = [f"train.precision={precision}", f"train.epochs={args.epochs}",
                 "train.eval_every=100000", "train.checkpoint_every=0", "train.progress=false"]
    if args.quick:
        overrides += ["train.max_steps=60", "optim.schedule.warmup_steps=10"]
    with tempfile.TemporaryDirectory() as tmp:
        s = distml.run(REPO / "examples" / "quickstart.toml", overrides=overrides,
                       out=Path(tmp) / "run")
    return {"test_accuracy": s["test_accuracy"], "test_loss": s["test_loss"],
            "train_loss": s["train_loss"], "wall_seconds": s["wall_seconds"], "steps": s["steps"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="60 steps per precision (smoke check)")
    args = ap.parse_args()
    runs = {p: one_run(p, args) for p in ("fp32", "bf16")}
    for p, r in runs.items():
        print(f"{p}: accuracy {r['test_accuracy']:.4f}, test loss {r['test_loss']:.4f}, "
              f"{r['steps']} steps in {r['wall_seconds']:.1f} s", flush=True)
    print(json.dumps({"bench": "precision", "epochs": args.epochs, "quick": args.quick,
                      "bf16_minus_fp32": round(100 * (runs["bf16"]["test_accuracy"]
                                                      - runs["fp32"]["test_accuracy"]), 2),
                      "fp32_accuracy": runs["fp32"]["test_accuracy"],
                      "bf16_accuracy": runs["bf16"]["test_accuracy"],
                      "bf16_over_fp32_wall": round(runs["bf16"]["wall_seconds"]
                                                   / runs["fp32"]["wall_seconds"], 2)}))


if __name__ == "__main__":
    main()
