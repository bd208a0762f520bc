"""Run under `distml launch -n 3`: 2 PS workers (rank 1 slow) and 1 server, SSP pace.

Staleness is measured without the server's counters: the model is one marker vector,
coordinate ``j`` of which only worker ``j`` moves (its gradient is the one-hot ``-e_j``),
so the parameters a worker computes on carry how many of each worker's pushes they
include. Each worker records, before every step, its own clock (pushes so far, counted
here) and the other worker's marker; rank 0 also records the final model, from which
the test reads the value of one push. Usage: ``ssp_world.py OUT``.
"""

import json
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

import distml
from distml.algorithms.ps import ParameterServer

STEPS = 24
WORKERS = 2
S = 1
# (push_every, pull_every): accepted combinations, then (1, 3), which config refuses
PHASES = [(1, 1), (2, 1), (3, 3), (1, 3)]


def phase(t, push_every: int, pull_every: int) -> dict:
    model = nn.Module()
    model.marker = nn.Parameter(torch.zeros(WORKERS, dtype=torch.float64))
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    algo = ParameterServer(servers=1, pace={"name": "ssp", "staleness": S},
                           push_every=push_every, pull_every=pull_every)
    algo.setup(model, opt, t)
    r = t.rank
    if r >= WORKERS:
        algo.run(SimpleNamespace(checkpoints=SimpleNamespace(write=None), resume_requested=False,
                                 clock=None, survivors=None))
        return {}
    steps = []
    for step in range(STEPS):
        steps.append({"clock": step // push_every, "other": float(model.marker[1 - r])})
        model.marker.grad = -torch.nn.functional.one_hot(torch.tensor(r), WORKERS).double()
        algo.after_backward(step)
        opt.step()
        algo.after_step(step)
        if r == 1:
            time.sleep(0.03)
    algo.on_train_end(STEPS)
    return {"steps": steps, "pushes": STEPS // push_every,
            "final": model.marker.tolist() if r == 0 else None}


t = distml.init(timeout_s=30)
record = {}
for push_every, pull_every in PHASES:
    record[f"{push_every},{pull_every}"] = phase(t, push_every, pull_every)
    t.barrier()
with open(f"{sys.argv[1]}.rank{t.rank}.json", "w") as f:
    json.dump(record, f)
t.close()
