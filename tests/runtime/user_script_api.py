"""Python API user: own nn.Module + Dataset, and a registered model named in a config."""

import json
import sys

import torch
from torch import nn
from torch.utils.data import TensorDataset

import distml


class TinyNet(nn.Module):
    def __init__(self, d=8, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, classes))

    def forward(self, x):
        return self.net(x)


distml.register("model", "tiny", lambda input_shape, num_classes: TinyNet(input_shape[0], num_classes))


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centers = torch.tensor([[3.0] * 8, [-3.0] * 8, [3.0, -3.0] * 4])
    return TensorDataset(centers[y] + torch.randn(n, 8, generator=g), y)


if __name__ == "__main__":
    out = sys.argv[1]
    base = {"name": "api", "workers": 2, "optim": {"name": "sgd", "lr": 0.1},
            "data": {"batch_size": 16}, "train": {"epochs": 2, "progress": False}}
    s1 = distml.run(base, model=TinyNet(), train_data=blobs(512, 0), test_data=blobs(256, 1),
                    out=f"{out}/module")
    s2 = distml.run({**base, "model": {"name": "tiny"}}, train_data=blobs(512, 0),
                    test_data=blobs(256, 1), out=f"{out}/registered")
    json.dump({"module": s1, "registered": s2}, open(f"{out}/result.json", "w"))
