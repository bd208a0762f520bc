"""Consensus ADMM, the aggregation half: z- and dual updates, residuals, ρ balancing.

Reference: Boyd, Parikh, Chu, Peleato & Eckstein 2011, "Distributed Optimization and
Statistical Learning via the Alternating Direction Method of Multipliers", §7.1
(global variable consensus with regularization, scaled form) and §3.4.1 (residual
balancing). The problem is ``min (1/N) Σ_i f_i(x_i) + (l2/2)‖z_pen‖²  s.t. x_i = z``,
where ``z_pen`` are the penalized entries of z (weights, not biases, as scikit-learn).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


def penalty_mask(named_sizes: Iterable[tuple[str, int]], penalize_bias: bool = False) -> torch.Tensor:
    """A flat 0/1 mask over the flattened parameters: 1 where the L2 term applies.

    Args:
        named_sizes: ``(name, numel)`` in flattening order (``model.named_parameters()``).
        penalize_bias: also penalize parameters whose name ends in ``bias``.
    """
    parts = [torch.full((n,), 0.0 if (name.endswith("bias") and not penalize_bias) else 1.0,
                        dtype=torch.float64) for name, n in named_sizes]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)


def z_update(mean_x_plus_u: torch.Tensor, rho: float, l2: float = 0.0,
             mask: torch.Tensor | None = None) -> torch.Tensor:
    """``z = argmin_z (l2/2)‖z_pen‖² + (ρ/2) Σ_i ‖x_i + u_i − z‖² / N``.

    Per entry: ``ρ/(ρ + l2) · mean_i(x_i + u_i)`` where penalized, the plain mean elsewhere
    (Boyd et al. §7.1.1 with g = ℓ2).

    Args:
        mean_x_plus_u: the all-reduced mean of ``x_i + u_i``.
        rho: the penalty parameter (> 0).
        l2: the L2 coefficient of the objective (>= 0).
        mask: 1 where the L2 term applies (default: everywhere).

    Raises:
        ValueError: rho <= 0 or l2 < 0.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if not l2 >= 0:
        raise ValueError(f"l2 must be >= 0, got {l2}")
    if l2 == 0:
        return mean_x_plus_u.clone()
    shrink = rho / (rho + l2)
    if mask is None:
        return mean_x_plus_u * shrink
    factor = 1.0 - mask.to(mean_x_plus_u.dtype) * (1.0 - shrink)
    return mean_x_plus_u * factor


def dual_update(u: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """The scaled dual ascent ``u_i ← u_i + x_i − z`` (in place; returns ``u``)."""
    return u.add_(x - z)


def admm_residuals(sum_sq_primal: float, z: torch.Tensor, z_prev: torch.Tensor, rho: float,
                   workers: int) -> tuple[float, float]:
    """Primal and dual residual norms (Boyd et al. §7.1, eq. 7.6).

    Args:
        sum_sq_primal: ``Σ_i ‖x_i − z‖²`` (one scalar all-reduce).
        z, z_prev: the consensus variable after and before this round.
        rho: the penalty used in this round.
        workers: N.

    Returns:
        ``(r, s)``: ``r = sqrt(Σ_i ‖x_i − z‖²)``, ``s = ρ·sqrt(N)·‖z − z_prev‖``.
    """
    r = max(sum_sq_primal, 0.0) ** 0.5
    s = rho * workers ** 0.5 * float((z - z_prev).norm())
    return r, s


def balance_rho(rho: float, primal: float, dual: float, mu: float = 10.0,
                tau: float = 2.0) -> float:
    """Residual balancing (Boyd et al. §3.4.1): grow ρ when r ≫ s, shrink it when s ≫ r.

    With the scaled dual, a caller that changes ρ must rescale ``u ← u · ρ_old/ρ_new``.

    Args:
        rho: the current penalty (> 0).
        primal, dual: the residual norms of the last round.
        mu: the imbalance ratio that triggers a change (> 1).
        tau: the factor ρ changes by (> 1).

    Raises:
        ValueError: a parameter out of range.
    """
    if not rho > 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    if not mu > 1 or not tau > 1:
        raise ValueError(f"mu and tau must be > 1, got mu={mu}, tau={tau}")
    if primal > mu * dual:
        return rho * tau
    if dual > mu * primal:
        return rho / tau
    return rho
