"""Consensus ADMM: local proximal solves, a consensus variable by all-reduce, scaled duals.

Reference: Boyd, Parikh, Chu, Peleato & Eckstein 2011, "Distributed Optimization and
Statistical Learning via the Alternating Direction Method of Multipliers", §7.1. Each
round, worker i (approximately) solves ``min_x f_i(x) + ρ/2‖x − z + u_i‖²`` with its
local optimizer over ``local_steps`` loop steps (the proximal term enters through
``loss_terms``; with ``optim = lbfgs`` one step is a near-exact solve of a linear
model's subproblem), then ``z = ρ/(ρ+l2) · mean(x_i + u_i)`` by one all-reduce and
``u_i += x_i − z``. ``f_i`` is worker i's mean loss, so the objective is the mean of
the workers' mean losses (the global mean loss for equal shards, as shuffle_split gives)
plus ``l2/2 ‖w‖²`` on the weights. The consensus z is the run's model. The asynchronous
variant (partial, bounded-delay z-updates) needs the parameter server and is not here.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distml.aggregate.admm import admm_residuals, balance_rho, dual_update, penalty_mask, z_update
from distml.algorithms import ALGORITHMS
from distml.algorithms.base import Algorithm
from distml.comm.buckets import broadcast_module, flatten, unflatten_into


@ALGORITHMS.register("admm", topology="collective", pace="bsp",
                     paper="Boyd et al. 2011 (consensus ADMM, §7.1; residual balancing §3.4.1)",
                     summary="consensus ADMM: local proximal solves, z by all-reduce, scaled duals")
class ConsensusADMM(Algorithm):
    """Synchronous consensus ADMM over all workers.

    Args:
        rho: initial penalty ρ (> 0).
        l2: L2 coefficient on the consensus weights (>= 0); the objective's regularizer
            lives in the z-update, so leave the optimizer's weight_decay at 0.
        penalize_bias: apply l2 to biases too (scikit-learn does not).
        local_steps: loop steps (optimizer steps) per ADMM round (>= 1).
        adaptive_rho: residual balancing of ρ (Boyd et al. §3.4.1).
        mu: imbalance ratio between the residuals that changes ρ (> 1).
        tau: factor ρ changes by (> 1).
        reset_optimizer: clear the optimizer's state every round (the subproblem changes:
            L-BFGS curvature pairs or momentum from the last round would mix objectives).

    Raises:
        ValueError: a parameter out of range.
    """

    def __init__(self, rho: float = 1.0, l2: float = 0.0, penalize_bias: bool = False,
                 local_steps: int = 1, adaptive_rho: bool = True, mu: float = 10.0,
                 tau: float = 2.0, reset_optimizer: bool = True):
        if not rho > 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if not isinstance(local_steps, int) or local_steps < 1:
            raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
        if not mu > 1 or not tau > 1:
            raise ValueError(f"mu and tau must be > 1, got mu={mu}, tau={tau}")
        self.rho, self.l2, self.penalize_bias = float(rho), float(l2), bool(penalize_bias)
        self.local_steps, self.adaptive_rho = local_steps, bool(adaptive_rho)
        self.mu, self.tau, self.reset_optimizer = float(mu), float(tau), bool(reset_optimizer)
        self.round = 0
        self.primal_residual: float | None = None
        self.dual_residual: float | None = None

    def setup(self, model: nn.Module, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.mask = penalty_mask([(n, p.numel()) for n, p in named], self.penalize_bias)
        self.z = flatten(self.params).clone()
        self.u = torch.zeros_like(self.z)
        self._consensus = copy.deepcopy(model)
        self._refresh_targets()

    def _refresh_targets(self) -> None:
        # the proximal centre z − u_i, as views shaped like each parameter
        self._centre = self.z - self.u
        self._targets, offset = [], 0
        for p in self.params:
            self._targets.append(self._centre[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def loss_terms(self, model: nn.Module) -> torch.Tensor | None:
        return 0.5 * self.rho * sum((p - t).pow(2).sum() for p, t in zip(self.params, self._targets))

    def after_step(self, step: int) -> None:
        if (step + 1) % self.local_steps:
            return
        t = self.transport
        x = flatten(self.params)
        mean = t.all_reduce(x + self.u, op="avg")
        z_prev = self.z
        self.z = z_update(mean, self.rho, self.l2, self.mask)
        dual_update(self.u, x, self.z)
        sq = t.all_reduce(torch.tensor([float((x - self.z).pow(2).sum())], dtype=torch.float64),
                          op="sum")
        self.primal_residual, self.dual_residual = admm_residuals(
            float(sq[0]), self.z, z_prev, self.rho, t.world_size)
        if self.adaptive_rho:   # every rank sees the same residuals, so ρ stays equal
            new = balance_rho(self.rho, self.primal_residual, self.dual_residual, self.mu, self.tau)
            self.u.mul_(self.rho / new)
            self.rho = new
        self.round += 1
        self._refresh_targets()
        if self.reset_optimizer:
            self.optimizer.state.clear()

    def eval_model(self) -> nn.Module:
        unflatten_into(self.z, [p for p in self._consensus.parameters() if p.requires_grad])
        return self._consensus

    def at_eval(self, step: int) -> dict[str, Any]:
        return {"admm_round": self.round, "rho": self.rho,
                "primal_residual": self.primal_residual, "dual_residual": self.dual_residual}

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "admm", "rho": self.rho, "l2": self.l2,
                "local_steps": self.local_steps, "adaptive_rho": self.adaptive_rho}

    def state_dict(self) -> dict[str, Any]:
        return {"z": self.z, "u": self.u, "rho": self.rho, "round": self.round,
                "primal_residual": self.primal_residual, "dual_residual": self.dual_residual}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z, self.u = state["z"].clone(), state["u"].clone()
        self.rho, self.round = float(state["rho"]), int(state["round"])
        self.primal_residual, self.dual_residual = state["primal_residual"], state["dual_residual"]
        self._refresh_targets()
