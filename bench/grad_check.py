"""What checking every gradient for inf/nan each step would cost (docs/reliability.md).

distml checks the loss every step and the parameters at each checkpoint and at the end,
not the gradients every step; this measures the check it leaves out, on the MLP of
docs/design.md §6 (784-512-512-10, batch 64, SGD with momentum, 1 thread): one fused pass
(``torch._foreach_norm`` over all gradients, then one finiteness test) between backward
and the optimizer step. Plain and checked steps run in interleaved rounds (the protocol,
``PROTOCOL``, is fixed before the run); the overhead is the mean over rounds of
(checked step time / plain step time − 1) with its 95% interval (rounds are the
repeats; ``overhead_median`` kept for comparison with earlier runs). Times are this
process's CPU time (``time.process_time``, one thread), so other load on the machine
inflates them less than it would wall-clock times.

    python bench/grad_check.py              # the documented run: 15 rounds of 200 steps
    python bench/grad_check.py --quick      # smoke check: 2 rounds of 20 steps

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "grad_check", "step_ms": ..., "overhead_mean": ..., "overhead_ci": [lo, hi],
     "overhead_median": ..., "rounds": ..., "headline": "..."}
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, mean_ci  # noqa: E402

PROTOCOL = {"model": "mlp 784-512-512-10, batch 64, 1 thread, SGD momentum 0.9",
            "rounds": 15, "steps": 200, "seed": 0, "clock": "time.process_time"}
QUICK = {"rounds": 2, "steps": 20}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 rounds of 20 steps (smoke check)")
    args = ap.parse_args()
    p = {**PROTOCOL, **(QUICK if args.quick else {})}
    rounds, steps = p["rounds"], p["steps"]

    torch.set_num_threads(1)
    torch.manual_seed(p["seed"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512),
                          nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    params = list(model.parameters())
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))

    def step(check: bool) -> None:
        opt.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        if check and not bool(torch.isfinite(torch.stack(torch._foreach_norm([p.grad for p in params]))).all()):
            raise RuntimeError("non-finite gradient")
        opt.step()

    ratios, plain = [], []
    for _ in range(rounds):
        t = {}
        for check in (False, True):
            for _ in range(max(2, steps // 10)):            # warm-up
                step(check)
            t0 = time.process_time()
            for _ in range(steps):
                step(check)
            t[check] = (time.process_time() - t0) / steps
        ratios.append(t[True] / t[False])
        plain.append(t[False])
    overhead = mean_ci([r - 1 for r in ratios])
    line = {"bench": "grad_check", "model": p["model"],
            "step_ms": round(statistics.median(plain) * 1e3, 3),
            "overhead_mean": round(overhead[0], 4),
            "overhead_ci": [round(overhead[1], 4), round(overhead[2], 4)],
            "overhead_median": round(statistics.median(ratios) - 1, 4),
            "overhead_min": round(min(ratios) - 1, 4), "rounds": rounds, "steps": steps,
            "headline": f"checking every gradient adds {100 * overhead[0]:.2f}% "
                        f"[{100 * overhead[1]:.2f}, {100 * overhead[2]:.2f}] to a "
                        f"{statistics.median(plain) * 1e3:.2f} ms step"}
    return finish(line, p, quick=args.quick,
                  details={"ratios": ratios, "plain_s": plain, "loadavg": os.getloadavg()})


if __name__ == "__main__":
    sys.exit(main())
