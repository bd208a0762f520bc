"""Line-search Newton–CG (truncated Newton): deterministic second-order optimization.

Nocedal & Wright 2006, *Numerical Optimization*, Algorithm 7.1: conjugate gradients
solve ``H d = −g`` inexactly (forcing term ``η = min(0.5, √‖g‖)``, stopped at negative
curvature), then a backtracking Armijo line search. Hessian-vector products are finite
differences of gradients, ``Hv ≈ (∇f(w + εv) − ∇f(w)) / ε`` (the "Hessian-free" form,
Martens 2010): it needs only the closure the worker loop already passes to L-BFGS, so
in a data-parallel run every gradient — hence every product — is the global one.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from distml.optim._flat import eval_grad, flat_params, params_of, set_params
from distml.optim.base import OPTIMIZERS, int_at_least, positive, unit_interval


class NewtonCG(torch.optim.Optimizer):
    """One Newton–CG iteration per ``step(closure)``.

    Args:
        params: the parameters to optimize.
        lr: the first step length the line search tries (> 0; 1 is the Newton step).
        cg_max_iter: CG iterations per Newton step (>= 1).
        max_backtracks: line-search halvings before giving up on the step (>= 1).
        c1: Armijo sufficient-decrease constant, in (0, 1).

    Raises:
        ConfigError: a value out of range.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1.0, cg_max_iter: int = 20,
                 max_backtracks: int = 20, c1: float = 1e-4):
        positive("newton_cg", "lr", lr)
        int_at_least("newton_cg", "cg_max_iter", cg_max_iter, 1)
        int_at_least("newton_cg", "max_backtracks", max_backtracks, 1)
        if unit_interval("newton_cg", "c1", c1) == 0:
            positive("newton_cg", "c1", c1)
        super().__init__(params, dict(lr=lr, cg_max_iter=cg_max_iter,
                                      max_backtracks=max_backtracks, c1=c1))

    @torch.no_grad()
    def step(self, closure):  # type: ignore[override]
        """Take one Newton–CG step; ``closure`` zeroes grads, computes the loss and backwards."""
        if closure is None:
            raise RuntimeError("newton_cg needs a closure that re-evaluates the loss")
        group = self.param_groups[0]
        params = params_of(self)
        w = flat_params(params)
        f0, g = eval_grad(closure, params)
        gnorm = float(g.norm())
        if gnorm == 0.0:
            return torch.tensor(f0)
        eps_base = (torch.finfo(w.dtype).eps ** 0.5) * (1.0 + float(w.norm()))

        def hvp(v: torch.Tensor) -> torch.Tensor:
            eps = eps_base / max(float(v.norm()), 1e-30)
            set_params(params, w + eps * v)
            _, gv = eval_grad(closure, params)
            return (gv - g) / eps

        # CG on H d = −g (Nocedal & Wright Alg. 7.1)
        d = torch.zeros_like(w)
        r, p = g.clone(), -g
        tol = min(0.5, gnorm ** 0.5) * gnorm
        for j in range(group["cg_max_iter"]):
            hp = hvp(p)
            curv = float(p @ hp)
            if curv <= 0:
                d = -g if j == 0 else d      # negative curvature: keep what we have
                break
            a = float(r @ r) / curv
            d = d + a * p
            r_new = r + a * hp
            if float(r_new.norm()) < tol:
                break
            p = -r_new + (float(r_new @ r_new) / float(r @ r)) * p
            r = r_new
        # backtracking Armijo line search
        t, slope = group["lr"], float(g @ d)
        if slope >= 0:                        # not a descent direction (numerical trouble)
            d, slope = -g, -gnorm ** 2
        f = f0
        for _ in range(group["max_backtracks"]):
            set_params(params, w + t * d)
            with torch.enable_grad():
                f = float(closure().detach())
            if f <= f0 + group["c1"] * t * slope:
                break
            t *= 0.5
        else:
            set_params(params, w)             # no decrease found: stay put
            with torch.enable_grad():
                f = float(closure().detach())
        return torch.tensor(f)


@OPTIMIZERS.register("newton_cg", kind="second-order deterministic (Newton)",
                     paper="Nocedal & Wright 2006, Alg. 7.1 (line-search Newton-CG)",
                     full_batch=True, needs_closure=True,
                     summary="truncated Newton: CG on finite-difference Hessian-vector products, "
                             "Armijo line search")
def newton_cg(params: Iterable[Any], lr: float = 1.0, cg_max_iter: int = 20,
              max_backtracks: int = 20, c1: float = 1e-4) -> NewtonCG:
    """Line-search Newton–CG; Nocedal & Wright 2006. See :class:`NewtonCG`.

    Returns:
        a :class:`NewtonCG` optimizer (``step`` needs a closure; fed full batches).

    Raises:
        ConfigError: a value out of range.
    """
    return NewtonCG(params, lr=lr, cg_max_iter=cg_max_iter, max_backtracks=max_backtracks, c1=c1)
