"""The parameter server's update rules: what a server does with the pushes of a round.

Injected into :class:`~distml.comm.ps.ServerLoop` (the server loop knows only messages,
clocks and the pace; docs/design.md §4). Each rule applies ``total`` (the sum of ``count``
pushes) to its shard in place and keeps its own checkpointable state.

References: Dean et al. 2012 (Downpour SGD: the server runs the optimizer on pushed
gradients); Li et al. 2014 (the parameter server); Zhang & Kwok 2014 and Chang et al.
2016 (asynchronous consensus ADMM: z from each worker's newest ``x_i + u_i``).
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

from distml.aggregate.admm import z_update
from distml.errors import ConfigError


class OptimizerRule:
    """Gradient pushes: the round's mean gradient feeds the configured optimizer, rebuilt
    over the shard (same class and hyperparameters). Applied asynchronously, each push
    counts ``1 / workers``: one push from every worker then moves the model as far as one
    synchronous round, so BSP, SSP and ASP compare at the same learning rate.

    Raises:
        ConfigError: the optimizer cannot be rebuilt over one tensor.
    """

    def __init__(self, shard: torch.Tensor, like: torch.optim.Optimizer, workers: int,
                 synchronous: bool):
        self.workers, self.synchronous = workers, synchronous
        self.param = nn.Parameter(shard)
        try:
            self.opt = type(like)([self.param], **_constructor_args(like))
        except TypeError as e:
            raise ConfigError(f"optimizer {type(like).__name__} cannot run on a parameter server "
                              f"({e}); use sgd, momentum, nesterov, adam, adamw, adagrad or rmsprop")

    @property
    def params(self) -> torch.Tensor:
        """The tensor the rule updates in place (the shard the server sends to pulls)."""
        return self.param.data

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None:
        divisor = count if self.synchronous else self.workers
        self.param.grad = total if divisor == 1 else total / divisor
        if aux > 0:          # the workers' scheduled learning rate rides on the push
            for g in self.opt.param_groups:
                g["lr"] = aux
        self.opt.step()
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


class DeltaRule:
    """Model-delta pushes: the server adds the mean delta of a round (synchronous) or each
    delta over the number of workers (asynchronous) — model averaging through the PS."""

    def __init__(self, shard: torch.Tensor, workers: int, synchronous: bool):
        self.params, self.workers, self.synchronous = shard, workers, synchronous

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None:
        params.add_(total, alpha=1.0 / (count if self.synchronous else self.workers))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class ConsensusRule:
    """Asynchronous consensus ADMM's z-update on one shard. Pushes are changes of
    ``x_i + u_i``, so their running sum ``S`` is ``Σ_i (x_i + u_i)`` with each worker's
    newest value; ``z = prox(S / N)`` (:func:`~distml.aggregate.admm.z_update`)."""

    def __init__(self, shard: torch.Tensor, workers: int, rho: float, l2: float, mask: torch.Tensor):
        self.params = shard
        self.workers, self.rho, self.l2, self.mask = workers, rho, l2, mask
        self.total = shard.clone() * workers      # every worker starts at x_i = z0, u_i = 0

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None:
        self.total.add_(total)
        params.copy_(z_update(self.total / self.workers, self.rho, self.l2, self.mask))

    def state_dict(self) -> dict[str, Any]:
        return {"total": self.total.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.total.copy_(state["total"])


def _constructor_args(optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's hyper-parameters that its constructor takes: ``defaults`` may also
    hold derived entries (torch 2.13's AdamW records ``decoupled_weight_decay``, which
    ``AdamW()`` refuses), so only the constructor's own keywords are passed on."""
    accepted = inspect.signature(type(optimizer).__init__).parameters
    return {k: v for k, v in optimizer.defaults.items() if k in accepted}
