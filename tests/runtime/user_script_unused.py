"""sync_sgd when ranks leave different parameters unused: rank 1 skips a branch on even steps.

Started by ``distml launch -n 2``; one bucket per parameter, so the buckets launched from
the gradient hooks come in a different order on the two ranks, and the skipped layer has
the shapes of the layer after it (a mispaired all-reduce would sum silently).
"""

import sys

import torch
from torch import nn

STEPS = 8


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.branch = nn.Linear(8, 8)
        self.b = nn.Linear(8, 8)
        self.head = nn.Linear(8, 1)

    def forward(self, x, use_branch: bool):
        h = torch.tanh(self.a(x))
        if use_branch:
            h = torch.tanh(self.branch(h))
        return self.head(torch.tanh(self.b(h)))


def uses_branch(rank: int, step: int) -> bool:
    return rank == 0 or step % 2 == 1


def model_and_optimizer():
    torch.manual_seed(0)
    model = Branchy().double()
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def data():
    g = torch.Generator().manual_seed(3)
    return (torch.randn(STEPS, 2, 16, 6, generator=g, dtype=torch.float64),
            torch.randn(STEPS, 2, 16, 1, generator=g, dtype=torch.float64))


if __name__ == "__main__":
    import distml
    out = sys.argv[1]
    torch.set_num_threads(1)
    t = distml.init(timeout_s=30)
    model, opt = model_and_optimizer()
    dopt = distml.wrap(model, opt, algorithm={"name": "sync_sgd", "bucket_mb": 1e-6})
    X, Y = data()
    for s in range(STEPS):
        dopt.zero_grad()
        nn.functional.mse_loss(model(X[s, t.rank], uses_branch(t.rank, s)), Y[s, t.rank]).backward()
        dopt.step()
    if t.rank == 0:
        torch.save(model.state_dict(), out)
    del dopt
    t.close()
