"""L2-regularized linear models in primal and dual form: the losses SDCA and CoCoA share.

Problem (binary labels ``y ∈ {−1, +1}``, or real targets for ``squared``)::

    P(w) = 1/n Σ_i φ(x_i·w, y_i) + λ/2 ‖w‖²
    D(α) = 1/n Σ_i −φ*(−α_i) − λ/2 ‖w(α)‖²,   w(α) = 1/(λn) Σ_i α_i x_i

with φ the hinge ``max(0, 1 − yz)``, the logistic ``log(1 + e^{−yz})`` or the squared
``½(z − y)²`` loss (Shalev-Shwartz & Zhang 2013, §2 and §6). ``P(w(α)) − D(α) ≥ 0`` is
the duality gap, the certificate SDCA stops on.
"""

from __future__ import annotations

import math

import numpy as np

from distml.errors import ConfigError

LOSSES = ("hinge", "logistic", "squared")


def check_loss(owner: str, loss: str) -> str:
    """Return ``loss`` if it is one of :data:`LOSSES`.

    Raises:
        ConfigError: otherwise, listing the valid names.
    """
    if loss not in LOSSES:
        raise ConfigError(f"{owner}: loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    return loss


def primal_loss(loss: str, z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ(z_i, y_i) per sample for margins ``z = Xw``."""
    if loss == "hinge":
        return np.maximum(0.0, 1.0 - y * z)
    if loss == "logistic":
        return np.logaddexp(0.0, -y * z)
    return 0.5 * (z - y) ** 2


def conjugate(loss: str, alpha: np.ndarray, y: np.ndarray) -> np.ndarray:
    """φ*(−α_i) per sample (finite on SDCA's feasible set: ``yα ∈ [0, 1]`` for hinge/logistic)."""
    if loss == "hinge":
        return -y * alpha
    if loss == "logistic":
        b = np.clip(y * alpha, 0.0, 1.0)
        return _xlogx(b) + _xlogx(1.0 - b)
    return 0.5 * alpha ** 2 - alpha * y


def _xlogx(b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, b * np.log(np.where(b > 0, b, 1.0)), 0.0)


def dual_step(loss: str, alpha: float, y: float, z: float, q: float) -> float:
    """The exact (or, for logistic, Newton-solved) maximizer Δα of one SDCA coordinate.

    Maximizes ``−φ*(−(α+Δ)) − zΔ − qΔ²/2`` where ``z = x_i·w`` and ``q = σ‖x_i‖²/(λn)``
    (Shalev-Shwartz & Zhang 2013, Options I; Ma et al. 2015 add the factor σ).

    Returns:
        Δα.
    """
    if q <= 0:                               # an all-zero row: its dual variable is free
        return 0.0
    if loss == "hinge":
        b = y * alpha
        return y * min(1.0, max(0.0, b + (1.0 - y * z) / q)) - alpha
    if loss == "squared":
        return (y - z - alpha) / (1.0 + q)
    # logistic: with b = y(α+Δ) ∈ (0, 1), solve log(b/(1−b)) + yz + q(b − yα) = 0, which
    # is increasing in b: Newton steps kept inside a shrinking bracket
    b0, m = y * alpha, y * z
    lo, hi = 0.0, 1.0
    b = min(max(b0, 1e-12), 1 - 1e-12)
    for _ in range(50):
        f = math.log(b / (1.0 - b)) + m + q * (b - b0)
        if f > 0:
            hi = b
        else:
            lo = b
        step = f / (1.0 / (b * (1.0 - b)) + q)
        nb = b - step
        if not lo < nb < hi:
            nb = 0.5 * (lo + hi)
        if abs(nb - b) < 1e-15:
            b = nb
            break
        b = nb
    return y * b - alpha


def primal_objective(loss: str, x: np.ndarray, y: np.ndarray, w: np.ndarray, lam: float) -> float:
    """P(w) on the samples ``x``, ``y``."""
    return float(primal_loss(loss, x @ w, y).mean() + 0.5 * lam * w @ w)
