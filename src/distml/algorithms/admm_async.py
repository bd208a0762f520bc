"""Asynchronous consensus ADMM on the parameter server: partial barrier, bounded delay.

References: Zhang & Kwok, "Asynchronous Distributed ADMM for Consensus Optimization",
ICML 2014 (the server updates z from the first P of N workers; every worker's
contribution is at most τ rounds old); Chang, Hong, Liao & Wang, "Asynchronous
Distributed ADMM for Large-Scale Optimization, Part I", IEEE TSP 2016 (the same scheme,
with the order of updates used here); Boyd et al. 2011, §7.1 (the synchronous method).

Composed from parts that exist: worker i runs the synchronous method's local solve
(:class:`~distml.algorithms.admm.LocalADMM`: ``local_steps`` optimizer steps on
``f_i(x) + ρ/2‖x − z + u_i‖²``), then pushes the change of ``x_i + u_i`` since its last
push to the parameter server (:class:`~distml.algorithms.ps.ParameterServer`; the worker
role is :class:`ADMMWorker`) and pulls z. The server's rule keeps ``S = Σ_i (x_i + u_i)`` over all N workers — the newest
value of each, stale for those not in the round — and sets ``z = prox(S / N)`` with
the synchronous method's :func:`~distml.aggregate.admm.z_update`. Its rounds close on
the first ``quorum`` (P) pushes, but wait for any worker whose newest push would
otherwise be more than ``max_delay`` (τ) rounds old; a late push joins the open round
(:class:`~distml.comm.pace.BoundedDelay`). A worker's pull is answered once the round
that took its push closed; it then runs ``u_i += x_i − z``. With P = N every round
takes every worker: synchronous consensus ADMM.

Buffers (BatchNorm statistics) follow the ``average`` policy without breaking the
asynchrony: intermediate evaluations use rank 0's own buffers in the consensus model,
and after the last step the workers average theirs once into it (the model saved).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from distml.aggregate.admm import penalty_mask
from distml.aggregate.server_rules import ConsensusRule
from distml.algorithms.admm import LocalADMM, resets_state
from distml.algorithms.base import LOOP_STEP, Supports
from distml.algorithms.ps import ParameterServer, PSWorker
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import flatten
from distml.comm.compress import ErrorFeedback
from distml.comm.pace import BoundedDelay
from distml.errors import ConfigError


class ADMMWorker(PSWorker):
    """Worker i of asynchronous ADMM: the local solve, then push the change of x_i + u_i,
    pull z once the round that took it closed, and update u_i."""

    def __init__(self, plan: "AsyncADMM", model, optimizer):
        super().__init__(plan, model, optimizer)
        self.rho, self.local_steps = plan.rho, plan.local_steps
        self.reset_optimizer = resets_state(optimizer, plan.reset_optimizer)
        self.local = LocalADMM(model, plan.penalize_bias)
        self.admm_round = 0
        self.primal_residual: float | None = None    # ‖x_i − z‖ of this worker's last round
        self.dual_residual: float | None = None      # ρ‖z − z_prev‖ as this worker saw it
        self._final: torch.Tensor | None = None
        self._buffers_averaged = False

    def loss_terms(self, model: nn.Module) -> torch.Tensor | None:
        return self.local.proximal_term(self.rho)

    def after_backward(self, step: int) -> None:
        pass                        # the local solve runs on the worker; nothing to push yet

    def after_step(self, step: int) -> None:
        self._next_step = step + 1
        if (step + 1) % self.local_steps == 0:
            self._round()

    def _round(self) -> None:
        """Push the change of x_i + u_i, pull z once the round that took it closed, update u_i."""
        self._wait_push()
        local = self.local
        x = local.x()
        w = x + local.u
        torch.sub(w, self.ref, out=self.acc)
        self.ref = w
        self._push(self.acc)
        self._fetch()
        z_prev = local.accept(self.flat.clone(), x)
        self.primal_residual = float((x - local.z).norm())
        self.dual_residual = self.rho * float((local.z - z_prev).norm())
        self.admm_round += 1
        if self.reset_optimizer:
            self.optimizer.state.clear()

    def on_train_end(self, steps: int) -> None:
        """Steps after the last full round are dropped; rank 0 receives the final z; the
        workers average their buffers into the consensus model (every worker is here)."""
        first = not self._finished
        super().on_train_end(steps)
        if first and self.transport.rank == 0:
            self._final = self.flat.clone()
        if first:
            self.local.average_buffers(self.plan.workers_transport)
            self._buffers_averaged = True

    def eval_model(self) -> nn.Module:
        return self.local.consensus_model(self._final)

    def at_eval(self, step: int) -> dict[str, Any]:
        """This worker's view (no communication at evaluations: the run stays asynchronous)."""
        if not self._buffers_averaged:
            self.local.take_buffers()
        return {**super().at_eval(step), "admm_round": self.admm_round, "rho": self.rho,
                "primal_residual": self.primal_residual, "dual_residual": self.dual_residual}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "admm": self.local.state_dict(),
                "admm_round": self.admm_round, "primal_residual": self.primal_residual,
                "dual_residual": self.dual_residual}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if state:
            self.local.load_state_dict(state["admm"])
            self.admm_round = int(state["admm_round"])
            self.primal_residual, self.dual_residual = state["primal_residual"], state["dual_residual"]

    def rank_metrics(self) -> dict[str, Any]:
        return {**super().rank_metrics(), "admm_round": self.admm_round,
                "primal_residual": self.primal_residual, "dual_residual": self.dual_residual}


@ALGORITHMS.register("admm_async", topology="parameter server",
                     pace="partial barrier: first P of N, delay <= τ rounds", codecs="compressor",
                     paper="Zhang & Kwok 2014; Chang et al. 2016 (AD-ADMM); Boyd et al. 2011 §7.1",
                     summary="asynchronous consensus ADMM: z on a parameter server from the first "
                             "P of N workers, bounded delay")
class AsyncADMM(ParameterServer):
    """Consensus ADMM whose z lives on parameter servers and closes rounds on a partial barrier.

    Args:
        rho: the penalty ρ (> 0), fixed (residual balancing needs every worker's residual
            each round, which an asynchronous round does not have).
        l2: L2 coefficient on the consensus weights (>= 0), applied in the z-update.
        penalize_bias: apply l2 to biases too (scikit-learn does not).
        local_steps: loop steps (optimizer steps) per worker round (>= 1).
        quorum: P, the pushes that close a round (1 <= P <= workers); None: every worker.
        max_delay: τ, the most rounds a worker's newest contribution may be old (>= 0);
            0 waits for every worker every round.
        servers: server processes (extra to the workers); z is split by key range.
        reset_optimizer: clear the optimizer's state every round; None (default): for
            L-BFGS only (see :func:`~distml.algorithms.admm.resets_state`).
        codec: set by distml from ``[comm] codec``: a Compressor on the pushes.

    Raises:
        ValueError: a parameter out of range.
    """

    elastic = False     # its rounds close on a partial barrier: no regroup (ps.py's check)

    buffers = "average"     # rank 0's at intermediate evaluations, the workers' mean at the end
    supports = Supports(wrap=False, precisions=LOOP_STEP["precisions"])   # workers: the standard loop

    def __init__(self, rho: float = 1.0, l2: float = 0.0, penalize_bias: bool = False,
                 local_steps: int = 1, quorum: int | None = None, max_delay: int = 2,
                 servers: int = 1, reset_optimizer: bool | None = None, codec=None):
        if not 0 < rho < math.inf:
            raise ValueError(f"rho must be a finite number > 0, got {rho}")
        if not 0 <= l2 < math.inf:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2}")
        if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
            raise ValueError(f"local_steps must be an integer >= 1, got {local_steps!r}")
        self.max_delay = BoundedDelay(max_delay).tau
        # pushes are changes of x_i + u_i; the servers hold z
        super().__init__(servers=servers, pace="bsp", push="deltas", quorum=quorum, codec=codec)
        self.rho, self.l2, self.penalize_bias = float(rho), float(l2), bool(penalize_bias)
        self.local_steps, self.reset_optimizer = local_steps, reset_optimizer

    def check_config(self, config) -> None:
        """Also refuse a lossy codec without error feedback: z is the running sum of the
        pushes, so what a codec drops (top-k's unselected coordinates) would stay out of z
        for ever; error feedback carries it into later pushes (issue 14)."""
        super().check_config(config)
        if self.codec is not None and not self.codec.lossless and \
                not isinstance(self.codec, ErrorFeedback):
            raise ConfigError(f"admm_async: the lossy codec {self.codec.describe()} loses its "
                              "compression error from z for ever; set comm.error_feedback = true")

    def worker_role(self) -> ADMMWorker:
        return ADMMWorker(self, self.model, self.optimizer)

    def server_rule(self, index: int) -> ConsensusRule:
        a, b = self.bounds[index]
        params = [p for p in self.model.parameters() if p.requires_grad]
        named = [(n, p.numel()) for n, p in self.model.named_parameters() if p.requires_grad]
        mask = penalty_mask(named, self.penalize_bias)[a:b]
        return ConsensusRule(flatten(params)[a:b].clone(), self.workers, self.rho, self.l2, mask)

    def summary_extra(self, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """Adds ``admm_async``: rounds, the measured delay, and residuals summed over workers
        (each worker's last round: ``r = sqrt(Σ_i ‖x_i − z_i‖²)``, ``s = ρ·sqrt(Σ_i ‖z_i −
        z_i,prev‖²)`` with z_i the z worker i last received; the synchronous definitions
        when all rounds take all workers)."""
        out = super().summary_extra(per_rank)
        servers = [r for r in per_rank if r.get("role") == "server"]
        workers = [r for r in per_rank if r.get("role") == "worker"]

        def norm(key: str) -> float | None:
            vals = [w[key] for w in workers if w.get(key) is not None]
            return sum(v * v for v in vals) ** 0.5 if vals else None

        out["admm_async"] = {
            "rho": self.rho, "l2": self.l2, "quorum": self.quorum or len(workers),
            "max_delay": self.max_delay,
            "rounds": max((s["rounds"] for s in servers), default=0),
            "worker_rounds": [w["admm_round"] for w in workers],
            "delay_max": max((s["delay_max"] for s in servers), default=0),
            "late_pushes": sum(s["late_pushes"] for s in servers[:1]),
            "primal_residual": norm("primal_residual"), "dual_residual": norm("dual_residual")}
        return out

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "admm_async", "rho": self.rho, "l2": self.l2,
                "local_steps": self.local_steps, "quorum": self.quorum,
                "max_delay": self.max_delay, "servers": self.servers,
                "codec": None if self.codec is None else self.codec.describe()}
