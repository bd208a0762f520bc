"""Stochastic variance-reduced gradient (SVRG).

Johnson & Zhang 2013, "Accelerating Stochastic Gradient Descent using Predictive
Variance Reduction" (NIPS). Every outer iteration takes a snapshot ``w̃`` and its full
gradient ``μ = ∇F(w̃)``; the inner steps use ``∇f_S(w) − ∇f_S(w̃) + μ``, whose variance
vanishes as ``w`` and ``w̃`` approach the optimum, so a constant step converges linearly.

Standalone, not in the optimizer registry: the full-gradient snapshot needs the whole
data set, which the worker loop (one batch per step) does not hand to an optimizer.
Use it from Python: ``opt.snapshot(full_closure)`` every outer iteration, then
``opt.step(batch_closure)``; ``step`` evaluates the batch closure at ``w`` and at ``w̃``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from distml.optim._flat import eval_grad, flat_params, params_of, set_params
from distml.optim.base import positive


class SVRG(torch.optim.Optimizer):
    """SVRG (Johnson & Zhang 2013) over ``params``.

    Args:
        params: the parameters to optimize.
        lr: step size (> 0); the paper's analysis wants about 1/(10 L).

    Raises:
        ConfigError: lr <= 0.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1):
        positive("svrg", "lr", lr)
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def snapshot(self, full_closure) -> float:
        """Take ``w̃ = w`` and ``μ = ∇F(w̃)``; ``full_closure`` evaluates the whole objective.

        Returns:
            F(w̃).
        """
        params = params_of(self)
        st = self.state[params[0]]
        loss, mu = eval_grad(full_closure, params)
        st["w_snap"], st["mu"] = flat_params(params), mu
        return loss

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """One variance-reduced step on the closure's batch; returns its loss at ``w``.

        Raises:
            RuntimeError: no closure, or no :meth:`snapshot` taken yet.
        """
        params = params_of(self)
        st = self.state[params[0]]
        if closure is None or "mu" not in st:
            raise RuntimeError("svrg: call snapshot(full_closure) first, then step(batch_closure)")
        w = flat_params(params)
        loss, g = eval_grad(closure, params)
        set_params(params, st["w_snap"])
        _, g_snap = eval_grad(closure, params)
        set_params(params, w - self.param_groups[0]["lr"] * (g - g_snap + st["mu"]))
        return torch.tensor(loss)
