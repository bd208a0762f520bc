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
    """Gradient pushes: the configured optimizer, rebuilt over the shard with the worker
    optimizer's parameter groups (each group's part of the shard keeps its settings, e.g.
    no weight decay on biases), steps on them.

    Synchronously it steps once per round on the round's mean gradient. Asynchronously
    (ASP, SSP) it steps once per push, on the push's gradient, with each group's learning
    rate divided by ``workers`` — the rule of asynchronous Adam variants: one push from
    every worker then moves the model about as far as one synchronous round for every
    optimizer, adaptive ones (Adam, RMSprop, Adagrad: invariant to a gradient's scale)
    included, and weight decay acts once per round, not once per push.

    Args:
        shard: the shard's values (the rule updates them in place).
        like: the worker's optimizer (class, hyperparameters, parameter groups).
        workers: N, the number of workers.
        synchronous: one step per round (True) or per push (False).
        params: the worker's trainable parameters in flat order (None: one group, the
            optimizer's ``defaults``).
        start: where the shard starts in the flat vector of ``params``.

    Raises:
        ConfigError: the optimizer cannot be rebuilt over one tensor.
    """

    def __init__(self, shard: torch.Tensor, like: torch.optim.Optimizer, workers: int,
                 synchronous: bool, params: list[torch.Tensor] | None = None, start: int = 0):
        self.workers, self.synchronous = workers, synchronous
        self.shard = shard
        self.segments = _group_segments(like, params, start, shard.numel())
        accepted = _constructor_keywords(like)
        groups = []
        for index, lo, hi in self.segments:
            settings = {k: v for k, v in (like.param_groups[index].items() if params is not None
                                           else like.defaults.items()) if k in accepted}
            groups.append({**settings, "params": [nn.Parameter(shard[lo:hi])]})
        self._base = [float(g.get("lr", 0.0)) for g in groups]
        first = like.param_groups[0].get("lr", 0.0) if params is not None else like.defaults.get("lr")
        # a group's lr relative to the worker's first group: the pushed (scheduled) lr scales it
        self._ratios = [b / float(first) if first else 1.0 for b in self._base]
        try:
            self.opt = type(like)(groups)
        except TypeError as e:
            raise ConfigError(f"optimizer {type(like).__name__} cannot run on a parameter server "
                              f"({e}); use sgd, momentum, nesterov, adam, adamw, adagrad or rmsprop")

    @property
    def params(self) -> torch.Tensor:
        """The tensor the rule updates in place (the shard the server sends to pulls)."""
        return self.shard

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None:
        grad = total / count if self.synchronous and count > 1 else total
        scale = 1.0 if self.synchronous else 1.0 / self.workers
        for g, base, ratio, (_, lo, hi) in zip(self.opt.param_groups, self._base, self._ratios,
                                               self.segments):
            # the workers' scheduled learning rate rides on the push (aux)
            g["lr"] = (aux * ratio if aux > 0 else base) * scale
            g["params"][0].grad = grad[lo:hi]
        self.opt.step()
        for g in self.opt.param_groups:
            g["params"][0].grad = None

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


def _group_segments(like: torch.optim.Optimizer, params: list[torch.Tensor] | None, start: int,
                    length: int) -> list[tuple[int, int, int]]:
    """``(group index, lo, hi)`` runs of the shard ``[start, start + length)`` of the flat
    vector of ``params``, one per maximal run of parameters in one group of ``like``."""
    if params is None:
        return [(0, 0, length)]
    group_of = {id(p): i for i, g in enumerate(like.param_groups) for p in g["params"]}
    runs: list[tuple[int, int, int]] = []
    offset = 0
    for p in params:
        lo, hi = max(offset, start), min(offset + p.numel(), start + length)
        offset += p.numel()
        if lo >= hi:
            continue
        index = group_of[id(p)]
        if runs and runs[-1][0] == index and runs[-1][2] == lo - start:
            runs[-1] = (index, runs[-1][1], hi - start)
        else:
            runs.append((index, lo - start, hi - start))
    return runs


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


def _constructor_keywords(optimizer: torch.optim.Optimizer) -> set[str]:
    """The hyper-parameters the optimizer's constructor takes. A parameter group (and
    ``defaults``) may also hold derived entries (torch 2.13's AdamW records
    ``decoupled_weight_decay``, which ``AdamW()`` refuses), which must not be passed on."""
    return set(inspect.signature(type(optimizer).__init__).parameters) - {"self", "params"}
