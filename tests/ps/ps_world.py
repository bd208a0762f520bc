"""Run under `distml launch -n 4`: the PS server loop and client with a counting update rule.

Phases run one after another in one world (roles are per phase; a barrier separates
them). Each worker pushes a vector with 1 at index 0 (the count of pushes) and 1 at
index 1 + rank, sleeping a random time per step; the server adds what it applies.
Each rank writes what it saw to ``OUT.rank{r}.json``.
"""

import json
import random
import sys
import time

import torch

import distml
from distml.comm.pace import make_pace
from distml.comm.ps import PSClient, ServerLoop, shard_bounds

out = sys.argv[1]
t = distml.init(timeout_s=30)
r = t.rank
N = 8
STEPS = 30

# (name, workers, servers, pace, quorum, mean sleep per step in ms by worker rank)
PHASES = [
    ("bsp", 3, 1, "bsp", None, [1, 3, 8]),
    ("ssp2", 3, 1, {"name": "ssp", "staleness": 2}, None, [1, 3, 8]),
    ("asp", 3, 1, "asp", None, [1, 3, 8]),
    ("quorum", 3, 1, "bsp", 2, [1, 1, 40]),
    ("bsp_2servers", 2, 2, "bsp", None, [1, 4]),
    ("asp_2servers", 2, 2, "asp", None, [1, 4]),
]


class Count:
    """Update rule: add the sum of the pushes (the count lands in index 0)."""

    def __call__(self, params, total, count, aux):
        params.add_(total)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


results = {}
for name, W, S, pace_spec, quorum, sleep_ms in PHASES:
    pace = make_pace(pace_spec)
    bounds = shard_bounds(N, S)
    res = {}
    if r >= W:
        i = r - W
        a, b = bounds[i]
        server = ServerLoop(t, i, torch.zeros(b - a, dtype=torch.float64), list(range(W)), pace,
                            Count(), quorum=quorum)
        res = {"role": "server", "report": server.run(), "params": server.params.tolist(),
               "bounds": [a, b]}
    else:
        client = PSClient(t, list(range(W, W + S)), bounds)
        rng = random.Random(1000 * r + len(name))
        clock, stale, push_h = 0, [], None
        bufs = [torch.zeros(N, dtype=torch.float64) for _ in range(2)]
        pulled = torch.zeros(N, dtype=torch.float64)
        for step in range(STEPS):
            time.sleep(rng.expovariate(1.0 / (sleep_ms[r] / 1000.0)))
            flat = bufs[step % 2]                # double buffer: one may still be on the wire
            if push_h is not None:
                push_h.wait()
            flat.zero_()
            flat[0] = 1.0
            flat[1 + r] = 1.0
            push_h = client.push(flat, clock)
            clock += 1
            res_pull = client.pull(pulled, clock).wait()
            stale.append(res_pull.staleness)
            if pace.synchronous:
                clock = max(clock, res_pull.clock)
        push_h.wait()
        final = torch.zeros(N, dtype=torch.float64)
        client.done(final if r == 0 else None)
        res = {"role": "worker", "pushes": STEPS, "stale": stale,
               "final": final.tolist() if r == 0 else None}
    t.barrier()
    results[name] = res

with open(f"{out}.rank{r}.json", "w") as f:
    json.dump(results, f)
t.close()
