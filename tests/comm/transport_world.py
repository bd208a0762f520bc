"""Run under `distml launch -n 2`: exercise the transport and write what each rank saw."""

import json
import sys
import time

import torch

import distml
from distml.errors import PeerError

scenario, out = sys.argv[1], sys.argv[2]
t = distml.init(timeout_s=float(sys.argv[3]) if len(sys.argv) > 3 else 20)
r, w = t.rank, t.world_size
res = {"rank": r, "world": w}

if scenario == "ops":
    x = torch.full((1000,), float(r + 1))
    t.all_reduce(x)
    res["sum"] = x[0].item()
    y = torch.full((10,), float(r + 1))
    h = t.all_reduce(y, op="avg", async_op=True)
    res["avg"] = h.wait()[0].item()
    b = torch.arange(5.0) if r == 0 else torch.zeros(5)
    t.broadcast(b, src=0)
    res["bcast"] = b.tolist()
    g = t.all_gather(torch.tensor([float(r)]))
    res["gather"] = [v.item() for v in g]
    if r == 1:
        t.send(torch.tensor([42.0]), dst=0)
    else:
        buf = torch.zeros(1)
        res["sender"] = t.recv(buf, src=None)
        res["recv"] = buf.item()
    t.barrier()
    res["stats"] = t.stats.snapshot()
    res["oplog"] = t.oplog.snapshot()
    t.close()
elif scenario == "peer_dies":
    t.barrier()
    if r == 1:
        sys.stdout.flush()
        import os
        os._exit(3)
    start = time.monotonic()
    try:
        for _ in range(100):
            t.all_reduce(torch.ones(10))
            time.sleep(0.05)
        res["error"] = None
    except PeerError as e:
        res["error"] = str(e)
    res["seconds"] = time.monotonic() - start
    t.abort()
with open(f"{out}.rank{r}.json", "w") as f:
    json.dump(res, f)
