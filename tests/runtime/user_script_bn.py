"""A user's own BatchNorm module and dataset through ``distml.run`` (no registry names).

``python user_script_bn.py OUT ALGORITHM_JSON W1,W2,...`` trains once per worker count and
leaves ``OUT/w<W>/model.pt``; the test imports this file for the same module, data and
config to build its single-process reference.
"""

import json
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

import distml

STEPS = 6
BATCH = 8


class BNNet(nn.Module):
    """Linear → BatchNorm → ReLU → Linear: batch statistics make each rank's forward its own."""

    def __init__(self, d=6, hidden=12, classes=3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(),
                                  nn.Linear(hidden, classes))

    def forward(self, x):
        return self.body(x)


def make_model() -> BNNet:
    torch.manual_seed(5)
    return BNNet()


def datasets():
    g = torch.Generator().manual_seed(2)
    y = torch.randint(0, 3, (144,), generator=g)
    x = torch.randn(144, 6, generator=g) + y[:, None].float()
    return TensorDataset(x, y), TensorDataset(x[:48], y[:48])


def config(algorithm: dict, workers: int) -> dict:
    return {"name": f"bn{workers}", "seed": 1, "workers": workers, "algorithm": algorithm,
            "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
            "data": {"batch_size": BATCH},
            "train": {"dtype": "float64", "max_steps": STEPS, "eval_every": 1000, "progress": False}}


if __name__ == "__main__":
    out, algorithm, counts = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3].split(",")
    train, test = datasets()
    for w in map(int, counts):
        distml.run(config(algorithm, w), model=make_model(), train_data=train, test_data=test,
                   out=f"{out}/w{w}")
