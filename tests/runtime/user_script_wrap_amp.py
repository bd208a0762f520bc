"""``distml.wrap`` + ``synchronize()`` + ``clip_grad_norm_`` + ``GradScaler`` in a user's loop.

Started by ``distml launch -n 2``; rank 0 saves the model. ``train(rank, world)`` is also
the single-process reference (world 1 on the concatenated batches).
"""

import sys

import torch
from torch import nn

STEPS, CLIP, SCALE = 12, 0.5, 1024.0


def data():
    g = torch.Generator().manual_seed(1)
    return (torch.randn(STEPS, 2, 16, 10, generator=g, dtype=torch.float64),
            torch.randn(STEPS, 2, 16, 1, generator=g, dtype=torch.float64))


def model_and_optimizer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1)).double()
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def step(model, opt, scaler, x, y, synchronize=None):
    opt.zero_grad()
    scaler.scale(nn.functional.mse_loss(model(x), y)).backward()
    if synchronize is not None:
        synchronize()
    scaler.unscale_(opt)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
    scaler.step(opt)
    scaler.update()
    return float(norm)


if __name__ == "__main__":
    import distml
    out = sys.argv[1]
    torch.set_num_threads(1)
    t = distml.init(timeout_s=30)
    model, opt = model_and_optimizer()
    dopt = distml.wrap(model, opt, algorithm={"name": "sync_sgd", "bucket_mb": 0.001})
    scaler = torch.amp.GradScaler("cpu", init_scale=SCALE)
    X, Y = data()
    for s in range(STEPS):
        step(model, dopt, scaler, X[s, t.rank], Y[s, t.rank], synchronize=dopt.synchronize)
    dopt.finish()
    if t.rank == 0:
        torch.save(model.state_dict(), out)
    del dopt
    t.close()
