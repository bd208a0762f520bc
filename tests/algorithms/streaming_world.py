"""Run under `distml launch -n 2`: DiLoCo and Streaming DiLoCo trained with ``distml.wrap``.

Cases (each rank writes ``OUT.rank{r}.json``):
- ``diloco`` / ``streaming_f1``: DiLoCo and Streaming DiLoCo with F = 1, τ = 0, α = 0;
- ``streaming_f2``: F = 2, τ = 1, α = 0.5 (compared with a plain re-implementation in the test),
  and the same saved after 5 steps and resumed into new objects (``streaming_f2_resumed``);
- ``codec:<alg>:<i>``: the codecs of ``CODECS`` on the pseudo-gradient (``CODEC_RUNS``).

The model, data and inner optimizer are defined here and imported by the test's reference.
"""

from __future__ import annotations

import json
import sys

import torch
from torch import nn

STEPS, BATCH, INNER_LR = 10, 8, 0.01
DILOCO = {"name": "diloco", "period": 3}
STREAMING_F1 = {"name": "streaming_diloco", "period": 3, "fragments": 1}
STREAMING_F2 = {"name": "streaming_diloco", "period": 4, "fragments": 2, "overlap_steps": 1,
                "mixing": 0.5}
#: every codec family on the pseudo-gradient, lossy ones with error feedback (PowerSGD keeps its own)
CODECS = [(["fp16"], False), (["bf16"], False), ([{"name": "qsgd", "bits": 8}], True),
          ([{"name": "qsgd", "bits": 4}], True), ([{"name": "qsgd", "bits": 2}], True),
          ([{"name": "topk", "ratio": 0.2}], True), ([{"name": "powersgd", "rank": 1}], False),
          ([{"name": "topk", "ratio": 0.2}, {"name": "qsgd", "bits": 2}], True)]   # SparseLoCo
#: every codec on Streaming DiLoCo (fragments, overlap); DiLoCo with 4-bit QSGD and SparseLoCo
CODEC_RUNS = [("streaming", i) for i in range(len(CODECS))] + [("diloco", 3), ("diloco", 7)]
CODEC_ALGORITHMS = {"diloco": {"name": "diloco", "period": 4},
                    "streaming": {"name": "streaming_diloco", "period": 4, "fragments": 2,
                                  "overlap_steps": 1, "mixing": 0.5}}
CODEC_STEPS, CODEC_LR = 32, 0.02


def make_model() -> nn.Module:
    """4 tensors of 30, 5, 15 and 3 entries (float64): F = 2 cuts it [30] | [5, 15, 3]."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def batches(rank: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Rank ``rank``'s batches: a linear teacher plus a little noise (different on each rank)."""
    teacher = torch.randn(6, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    g = torch.Generator().manual_seed(100 + rank)
    out = []
    for _ in range(steps):
        x = torch.randn(BATCH, 6, generator=g, dtype=torch.float64)
        out.append((x, x @ teacher + 0.01 * torch.randn(BATCH, 3, generator=g, dtype=torch.float64)))
    return out


def eval_loss(model: nn.Module) -> float:
    x, y = batches(999, 1)[0]
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def train(transport, spec: dict, steps: int, codec=None, lr: float = INNER_LR,
          resume_after: int | None = None) -> dict:
    """Train ``steps`` steps; with ``resume_after``, stop after that many, save, and go on
    with a new model, optimizer and algorithm loaded from the saved state."""
    import copy

    import distml
    from distml.algorithms import ALGORITHMS

    def build():
        model = make_model()
        algorithm = ALGORITHMS.build(spec, codec=codec)
        return model, algorithm, distml.wrap(model, torch.optim.AdamW(model.parameters(), lr=lr),
                                             algorithm, transport=transport)

    model, algorithm, opt = build()
    start = eval_loss(model)
    for step, (x, y) in enumerate(batches(transport.rank, steps)):
        if step == resume_after:
            saved = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict()})
            model, algorithm, opt = build()
            model.load_state_dict(saved["model"])
            opt.load_state_dict(saved["opt"])
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    opt.finish()
    return {"params": [p.detach().reshape(-1).tolist() for p in model.parameters()],
            "start_loss": start, "loss": eval_loss(model), **algorithm.rank_metrics()}


def main(out: str) -> None:
    import distml
    from distml.comm.compress import build_codec
    torch.set_num_threads(1)
    t = distml.init(timeout_s=30)
    res = {"diloco": train(t, DILOCO, STEPS), "streaming_f1": train(t, STREAMING_F1, STEPS),
           "streaming_f2": train(t, STREAMING_F2, STEPS),
           # after 5 steps nothing is in flight (fragment 0 sent after 4 landed after 5)
           "streaming_f2_resumed": train(t, STREAMING_F2, STEPS, resume_after=5)}
    for name, i in CODEC_RUNS:
        codec, ef = CODECS[i]
        res[f"codec:{name}:{i}"] = train(t, CODEC_ALGORITHMS[name], CODEC_STEPS,
                                         build_codec(codec, ef, seed=0, rank=t.rank), CODEC_LR)
    t.close()
    with open(f"{out}.rank{t.rank}.json", "w") as f:
        json.dump(res, f)


if __name__ == "__main__":
    main(sys.argv[1])
