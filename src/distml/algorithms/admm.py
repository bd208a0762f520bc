"""Consensus ADMM: local proximal solves, a consensus variable by all-reduce, scaled duals.

Reference: Boyd, Parikh, Chu, Peleato & Eckstein 2011, "Distributed Optimization and
Statistical Learning via the Alternating Direction Method of Multipliers", §7.1. Each
round, worker i (approximately) solves ``min_x f_i(x) + ρ/2‖x − z + u_i‖²`` with its
local optimizer over ``local_steps`` loop steps (the proximal term enters through
``loss_terms``; with ``optim = lbfgs`` one step is a near-exact solve of a linear
model's subproblem), then ``z = ρ/(ρ+l2) · mean(x_i + u_i)`` by one all-reduce and
``u_i += x_i − z``. ``f_i`` is worker i's mean loss, so the objective is the mean of
the workers' mean losses (the global mean loss for equal shards, as shuffle_split gives)
plus ``l2/2 ‖w‖²`` on the weights. The consensus z is the run's model. A worker's half
(x_i, u_i, the z it last saw, the proximal term) is :class:`LocalADMM`, shared with the
asynchronous variant on the parameter server (``admm_async.py``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distml.aggregate.admm import admm_residuals, balance_rho, dual_update, penalty_mask, z_update
from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import broadcast_module, flatten, unflatten_into
from distml.comm.buffers import average_buffers, copy_buffers


def resets_state(optimizer: torch.optim.Optimizer, asked: bool | None) -> bool:
    """Whether an ADMM worker clears ``optimizer``'s state at the end of each round.

    ``asked`` None picks the default: yes for L-BFGS, whose curvature pairs belong to the
    last round's subproblem, no for first-order optimizers — their momentum and moments
    carry over, as the subproblem's centre z − u_i moves less and less (issue 14).
    """
    return isinstance(optimizer, torch.optim.LBFGS) if asked is None else bool(asked)


class LocalADMM:
    """Worker i's half of consensus ADMM (Boyd et al. 2011, §7.1, scaled form).

    Holds the consensus z this worker last saw and its scaled dual u_i; the local optimizer
    minimizes ``f_i(x) + ρ/2‖x − z + u_i‖²`` through :meth:`proximal_term` (added in the
    ``loss_terms`` hook), warm-started from its own x_i. Used by ``admm`` (z by all-reduce)
    and ``admm_async`` (z from a parameter server).

    Args:
        model: the worker's model; its trainable parameters are x_i, and z starts at them.
        penalize_bias: the L2 term applies to biases too (see :func:`penalty_mask`).
    """

    def __init__(self, model: nn.Module, penalize_bias: bool = False):
        self.model = model
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.mask = penalty_mask([(n, p.numel()) for n, p in named], penalize_bias)
        self.z = flatten(self.params).clone()
        self.u = torch.zeros_like(self.z)
        self._consensus = copy.deepcopy(model)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the proximal centre z − u_i (call after changing z or u)."""
        # as views shaped like each parameter
        self._centre = self.z - self.u
        self._targets, offset = [], 0
        for p in self.params:
            self._targets.append(self._centre[offset:offset + p.numel()].view_as(p))
            offset += p.numel()

    def x(self) -> torch.Tensor:
        """x_i, flattened (a copy)."""
        return flatten(self.params)

    def proximal_term(self, rho: float) -> torch.Tensor:
        """``ρ/2‖x − z + u_i‖²`` on the live parameters (differentiable)."""
        return 0.5 * rho * sum((p - t).pow(2).sum() for p, t in zip(self.params, self._targets))

    def accept(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Take the new consensus ``z`` and run the dual ascent ``u_i += x_i − z``, where ``x``
        is the x_i that went into it; returns the previous z."""
        z_prev, self.z = self.z, z
        dual_update(self.u, x, z)
        self.refresh()
        return z_prev

    def rescale(self, rho_old: float, rho_new: float) -> None:
        """The scaled dual after ρ changes: ``u ← u · ρ_old/ρ_new``."""
        self.u.mul_(rho_old / rho_new)
        self.refresh()

    def consensus_model(self, z: torch.Tensor | None = None) -> nn.Module:
        """A copy of the model carrying ``z`` (default: the z this worker last saw) and the
        buffers last given by :meth:`average_buffers` or :meth:`take_buffers`."""
        unflatten_into(self.z if z is None else z,
                       [p for p in self._consensus.parameters() if p.requires_grad])
        return self._consensus

    def average_buffers(self, transport) -> None:
        """The consensus model's buffers become the mean of the workers' (every worker calls)."""
        average_buffers(self.model, transport, into=self._consensus)

    def take_buffers(self) -> None:
        """The consensus model's buffers become this worker's own (no communication)."""
        copy_buffers(self.model, self._consensus)

    def state_dict(self) -> dict[str, Any]:
        return {"z": self.z, "u": self.u}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.z, self.u = state["z"].clone(), state["u"].clone()
        self.refresh()


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
        reset_optimizer: clear the optimizer's state at the end of every round, never
            between the steps of one. None (default): only a quasi-Newton optimizer's
            (L-BFGS's curvature pairs describe the last round's subproblem); first-order
            state (momentum, Adam's moments) is kept, since with ``local_steps = 1`` a
            reset every round would clear it every step (see :func:`resets_state`).

    Raises:
        ValueError: a parameter out of range.
    """

    buffers = "average"    # the consensus model carries the workers' mean buffers
    supports = Supports(wrap=False, **LOOP_STEP)   # wrap: loss_terms, eval_model

    def __init__(self, rho: float = 1.0, l2: float = 0.0, penalize_bias: bool = False,
                 local_steps: int = 1, adaptive_rho: bool = True, mu: float = 10.0,
                 tau: float = 2.0, reset_optimizer: bool | None = None):
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
        self.mu, self.tau, self.reset_optimizer = float(mu), float(tau), reset_optimizer
        self.round = 0
        self.primal_residual: float | None = None
        self.dual_residual: float | None = None

    def setup(self, model: nn.Module, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)
        self.local = LocalADMM(model, self.penalize_bias)
        self.reset_optimizer = resets_state(optimizer, self.reset_optimizer)

    @property
    def z(self) -> torch.Tensor:
        return self.local.z

    @property
    def u(self) -> torch.Tensor:
        return self.local.u

    def loss_terms(self, model: nn.Module) -> torch.Tensor | None:
        return self.local.proximal_term(self.rho)

    def after_step(self, step: int) -> None:
        if (step + 1) % self.local_steps:
            return
        t, local = self.transport, self.local
        x = local.x()
        mean = t.all_reduce(x + local.u, op="avg")
        z_prev = local.accept(z_update(mean, self.rho, self.l2, local.mask), x)
        sq = t.all_reduce((x - local.z).double().pow(2).sum().reshape(1), op="sum")
        self.primal_residual, self.dual_residual = admm_residuals(
            float(sq[0]), local.z, z_prev, self.rho, t.world_size)
        if self.adaptive_rho:   # every rank sees the same residuals, so ρ stays equal
            new = balance_rho(self.rho, self.primal_residual, self.dual_residual, self.mu, self.tau)
            local.rescale(self.rho, new)
            self.rho = new
        self.round += 1
        if self.reset_optimizer:
            self.optimizer.state.clear()

    def eval_model(self) -> nn.Module:
        return self.local.consensus_model()

    def at_eval(self, step: int) -> dict[str, Any]:
        self.local.average_buffers(self.transport)
        return {"admm_round": self.round, "rho": self.rho,
                "primal_residual": self.primal_residual, "dual_residual": self.dual_residual}

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "admm", "rho": self.rho, "l2": self.l2,
                "local_steps": self.local_steps, "adaptive_rho": self.adaptive_rho}

    def state_dict(self) -> dict[str, Any]:
        return {**self.local.state_dict(), "rho": self.rho, "round": self.round,
                "primal_residual": self.primal_residual, "dual_residual": self.dual_residual}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.local.load_state_dict(state)
        self.rho, self.round = float(state["rho"]), int(state["round"])
        self.primal_residual, self.dual_residual = state["primal_residual"], state["dual_residual"]
