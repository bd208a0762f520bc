"""What checking every gradient for inf/nan each step would cost (docs/reliability.md).

distml checks the loss every step and the parameters at each checkpoint and at the end,
not the gradients every step; this measures the check it leaves out, on the MLP of
docs/design.md §6 (784-512-512-10, batch 64, SGD with momentum, 1 thread): one fused pass
(``torch._foreach_norm`` over all gradients, then one finiteness test) between backward
and the optimizer step. Plain and checked steps run in interleaved rounds; the overhead
is the median over rounds of (checked step time / plain step time − 1). Times are this
process's CPU time (``time.process_time``, one thread), so other load on the machine
inflates them less than it would wall-clock times.

    python bench/grad_check.py              # the documented run: 15 rounds of 200 steps
    python bench/grad_check.py --quick      # smoke check: 2 rounds of 20 steps

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "grad_check", "step_ms": ..., "overhead_median": ..., "rounds": ...}
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=200, help="timed steps per round and variant")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 20 steps (smoke check)")
    args = ap.parse_args()
    rounds, steps = (2, 20) if args.quick else (args.rounds, args.steps)

    torch.set_num_threads(1)
    torch.manual_seed(0)
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
    print(json.dumps({"bench": "grad_check", "model": "mlp 784-512-512-10, batch 64, 1 thread",
                      "step_ms": round(statistics.median(plain) * 1e3, 3),
                      "overhead_median": round(statistics.median(ratios) - 1, 4),
                      "overhead_min": round(min(ratios) - 1, 4), "rounds": rounds, "steps": steps}))


if __name__ == "__main__":
    main()
