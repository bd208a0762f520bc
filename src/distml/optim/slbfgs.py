"""Stochastic L-BFGS (stochastic quasi-Newton, SQN): second-order, stochastic.

Byrd, Hansen, Nocedal & Singer 2016, "A Stochastic Quasi-Newton Method for Large-Scale
Optimization" (SIAM J. Optim. 26). Steps ``w ← w − α H g`` use the stochastic gradient
of the batch and the L-BFGS two-loop product ``H g``; the curvature pairs are collected
only every ``update_every`` (L) steps, between *averaged* iterates ``w̄_t − w̄_{t−1}``, so
gradient noise does not corrupt them. The paper's ``y = ∇²F_S(w̄_t) s`` is taken here as
the gradient difference on one batch S, ``y = ∇F_S(w̄_t) − ∇F_S(w̄_{t−1})`` (its secant
form; exact for quadratics), which needs only the worker loop's closure: every L steps
two extra closure calls on the current batch. Pairs with ``sᵀy ≤ 1e-10 sᵀs`` are skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from distml.optim._flat import eval_grad, flat_params, params_of, set_params
from distml.optim.base import OPTIMIZERS, int_at_least, positive


def two_loop(g: torch.Tensor, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The L-BFGS product ``H g`` from curvature pairs ``(s, y)``, oldest first (Nocedal 1980)."""
    q = g.clone()
    coeffs = []
    for s, y in reversed(pairs):
        rho = 1.0 / float(y @ s)
        a = rho * float(s @ q)
        q -= a * y
        coeffs.append((rho, a))
    s, y = pairs[-1]
    q *= float(s @ y) / float(y @ y)
    for (s, y), (rho, a) in zip(pairs, reversed(coeffs)):
        q += (a - rho * float(y @ q)) * s
    return q


class StochasticLBFGS(torch.optim.Optimizer):
    """SQN (Byrd et al. 2016): one stochastic step per ``step(closure)``.

    Args:
        params: the parameters to optimize.
        lr: step size α (> 0); the first L steps are plain SGD steps of this size.
        history_size: curvature pairs kept, M (>= 1).
        update_every: L, steps between curvature updates (>= 1).

    Raises:
        ConfigError: a value out of range.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, history_size: int = 10,
                 update_every: int = 10):
        positive("slbfgs", "lr", lr)
        int_at_least("slbfgs", "history_size", history_size, 1)
        int_at_least("slbfgs", "update_every", update_every, 1)
        super().__init__(params, dict(lr=lr, history_size=history_size, update_every=update_every))

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """One SQN step on the closure's batch; returns the batch loss before the step."""
        if closure is None:
            raise RuntimeError("slbfgs needs a closure that re-evaluates the loss")
        group = self.param_groups[0]
        params = params_of(self)
        # state lives on the first parameter so torch's state_dict checkpoints it
        st = self.state[params[0]]
        w = flat_params(params)
        if "t" not in st:
            st.update(t=0, w_sum=torch.zeros_like(w), w_bar_prev=None, s=[], y=[])
        loss, g = eval_grad(closure, params)
        pairs = list(zip(st["s"], st["y"]))
        d = two_loop(g, pairs) if pairs else g
        w_new = w - group["lr"] * d
        st["t"] += 1
        st["w_sum"] += w_new
        if st["t"] % group["update_every"] == 0:
            w_bar = st["w_sum"] / group["update_every"]
            st["w_sum"] = torch.zeros_like(w)
            if st["w_bar_prev"] is not None:
                s = w_bar - st["w_bar_prev"]
                set_params(params, w_bar)
                _, g1 = eval_grad(closure, params)
                set_params(params, st["w_bar_prev"])
                _, g0 = eval_grad(closure, params)
                y = g1 - g0
                if float(s @ y) > 1e-10 * float(s @ s):
                    st["s"] = (st["s"] + [s])[-group["history_size"]:]
                    st["y"] = (st["y"] + [y])[-group["history_size"]:]
            st["w_bar_prev"] = w_bar
        set_params(params, w_new)
        return torch.tensor(loss)


@OPTIMIZERS.register("slbfgs", kind="second-order stochastic (quasi-Newton)",
                     paper="Byrd, Hansen, Nocedal & Singer 2016 (SQN)", full_batch=False,
                     needs_closure=True,
                     summary="stochastic L-BFGS: curvature pairs every L steps from averaged "
                             "iterates, gradient differences on one batch")
def slbfgs(params: Iterable[Any], lr: float = 0.1, history_size: int = 10,
           update_every: int = 10) -> StochasticLBFGS:
    """Stochastic L-BFGS (SQN); Byrd et al. 2016. See :class:`StochasticLBFGS`.

    Returns:
        a :class:`StochasticLBFGS` optimizer (``step`` needs a closure).

    Raises:
        ConfigError: a value out of range.
    """
    return StochasticLBFGS(params, lr=lr, history_size=history_size, update_every=update_every)
