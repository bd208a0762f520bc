"""A user's own loop with distml.wrap, started by `distml launch -n 2`; rank 0 saves the model."""

import sys

import torch
from torch import nn

import distml

out = sys.argv[1]
torch.set_num_threads(1)
t = distml.init(timeout_s=30)
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
opt = distml.wrap(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                  algorithm={"name": "sync_sgd", "bucket_mb": 0.001})
g = torch.Generator().manual_seed(1)
X, Y = torch.randn(20, 2, 16, 10, generator=g), torch.randn(20, 2, 16, 1, generator=g)
for step in range(20):
    opt.zero_grad()
    nn.functional.mse_loss(model(X[step, t.rank]), Y[step, t.rank]).backward()
    opt.step()
if t.rank == 0:
    torch.save(model.state_dict(), out)
del opt
t.close()
