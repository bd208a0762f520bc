"""Run under `distml launch -n 2`: every codec through the transport, and PowerSGD vs torch.

Scenario "codecs": for each codec spec, one reduction of a rank-specific tensor; records
the bytes the transport counted, the payload sizes, the result and every rank's decoded
contribution (to check the mean). Scenario "powersgd": torch's DDP with its own
powerSGD_hook on a small MLP, the hook's inputs and outputs recorded, then our reducer on
the same inputs.
"""

import json
import sys

import torch

import distml
from distml.comm.compress import CODECS, build_codec, init_state, reduce_mean

scenario, out = sys.argv[1], sys.argv[2]
t = distml.init(timeout_s=30)
r, w = t.rank, t.world_size
res = {"rank": r, "world": w, "cases": []}
torch.set_num_threads(1)

SPECS = [["fp16"], ["bf16"], [{"name": "qsgd", "bits": 2}], [{"name": "qsgd", "bits": 4}],
         [{"name": "qsgd", "bits": 8}], ["sign"], [{"name": "topk", "ratio": 0.05}],
         [{"name": "threshold", "tau": 1.0}], [{"name": "randomk", "ratio": 0.1}],
         [{"name": "topk", "ratio": 0.05}, "fp16"],
         [{"name": "topk", "ratio": 0.05}, {"name": "qsgd", "bits": 2}],     # SparseLoCo
         [{"name": "powersgd", "rank": 1}]]

if scenario in ("codecs", "all"):
    for spec in SPECS:
        for ef in ([False, True] if spec != [{"name": "powersgd", "rank": 1}] else [False]):
            codec = build_codec(spec, ef, seed=5, rank=r)
            g = torch.Generator().manual_seed(100 + r)
            x = torch.randn(3000, generator=g, dtype=torch.float64)
            state = init_state(codec, x, [torch.Size([50, 60])])
            before = t.stats.snapshot()
            mean, _ = reduce_mean(x, codec, state, t)
            after = t.stats.snapshot()
            case = {"spec": spec, "ef": ef, "sent": after["bytes_sent"] - before["bytes_sent"],
                    "mean": mean.tolist(), "x": x.tolist()}
            if hasattr(codec, "compress"):
                payload, st = codec.compress(x, init_state(codec, x))
                case["payload_numels"] = [p.numel() for p in payload]
                case["payload_itemsizes"] = [p.element_size() for p in payload]
                case["wire_bytes"] = codec.wire_bytes(payload)
                case["decoded"] = codec.decompress(payload, x, st).tolist()
            res["cases"].append(case)
    res["codec_names"] = sorted(CODECS.names())
if scenario in ("powersgd", "all"):
    import torch.distributed as dist
    from torch.distributed.algorithms.ddp_comm_hooks import powerSGD_hook as psgd
    from torch.nn.parallel import DistributedDataParallel as DDP
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(32, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 4))
    ddp = DDP(net)
    state = psgd.PowerSGDState(process_group=None, matrix_approximation_rank=2,
                               start_powerSGD_iter=2, use_error_feedback=True, warm_start=True,
                               random_seed=0)
    calls = []

    def hook(st, bucket):
        record = {"input": bucket.buffer().detach().clone(),
                  "shapes": [tuple(gr.shape) for gr in bucket.gradients()]}
        fut = psgd.powerSGD_hook(st, bucket)

        def keep(f):
            record["output"] = f.value().detach().clone()
            return f.value()
        calls.append(record)
        return fut.then(keep)

    ddp.register_comm_hook(state, hook)
    g = torch.Generator().manual_seed(10 + r)
    for _ in range(6):
        ddp.zero_grad()
        x = torch.randn(16, 32, generator=g)
        ddp(x).pow(2).mean().backward()
    dist.barrier()
    ours = CODECS.build({"name": "powersgd", "rank": 2, "start_iter": 2}, seed=0)
    st = None
    worst = 0.0
    for c in calls:
        if st is None:   # DDP rebuilds its bucket after the first step: use the final layout
            st = ours.init(c["input"], calls[-1]["shapes"])
        mean, st = ours.reduce(c["input"], st, t)
        worst = max(worst, (mean - c["output"]).abs().max().item())
    res["calls"] = len(calls)
    res["worst"] = worst
    res["compressed_rounds"] = st["iter"] - 2
    res["output_norm"] = calls[-1]["output"].norm().item()
t.close()
with open(f"{out}.rank{r}.json", "w") as f:
    json.dump(res, f)
