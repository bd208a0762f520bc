"""The parameter server's optimizer rule (issue 14, point 2): parameter groups kept,
asynchronous pushes stepped with the learning rate over N.

Differential: one synchronous round of the rule on a shard equals one step of the
worker's own optimizer (two groups: weight decay on the weight only) on the model.
"""

import pytest
import torch

from distml.aggregate.server_rules import OptimizerRule
from distml.comm.buckets import flatten


def model_and_grads():
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    grads = [torch.randn_like(p) for p in model.parameters()]
    return model, grads


@pytest.mark.parametrize("cls, kw", [(torch.optim.SGD, {"lr": 0.1, "momentum": 0.9}),
                                     (torch.optim.Adam, {"lr": 0.01})])
@pytest.mark.parametrize("start, stop", [(0, 15), (5, 14), (12, 15)])
def test_a_round_on_a_shard_equals_the_worker_optimizer_with_its_groups(cls, kw, start, stop):
    model, grads = model_and_grads()
    params = list(model.parameters())
    groups = [{"params": [model.weight], "weight_decay": 0.5}, {"params": [model.bias]}]
    like = cls(groups, **kw)
    rule = OptimizerRule(flatten(params)[start:stop].clone(), like, workers=2, synchronous=True,
                         params=params, start=start)
    for step in range(3):      # state (momentum, moments) carries over
        g = flatten(grads) * (step + 1)
        rule(rule.params, 2 * g[start:stop], 2, aux=0.0)    # a round of two equal pushes
        for p, gp in zip(params, grads):
            p.grad = gp * (step + 1)
        like.step()
    torch.testing.assert_close(rule.params, flatten(params)[start:stop].detach())


def test_an_asynchronous_adam_push_moves_a_synchronous_round_over_n():
    model, grads = model_and_grads()
    params = list(model.parameters())
    flat = flatten(params).clone()
    workers = 4
    rule = OptimizerRule(flat.clone(), torch.optim.Adam(params, lr=0.01), workers,
                         synchronous=False, params=params)
    rule(rule.params, flatten(grads), 1, aux=0.01)
    # Adam's first step moves every coordinate by lr (scale-free): here lr / N
    torch.testing.assert_close((rule.params - flat).abs(), torch.full_like(flat, 0.01 / workers),
                               rtol=1e-6, atol=1e-9)
