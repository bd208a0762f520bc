"""Stochastic dual coordinate ascent for L2-regularized linear models.

Shalev-Shwartz & Zhang 2013, "Stochastic Dual Coordinate Ascent Methods for Regularized
Loss Minimization" (JMLR 14). One dual variable per sample; a step maximizes the dual
in one coordinate in closed form (hinge, squared) or by a 1-D Newton solve (logistic).
The primal iterate ``w = 1/(λn) Σ α_i x_i`` is kept in step, and the duality gap
``P(w) − D(α)`` certifies the suboptimality, so it is the stopping rule.

This is a standalone solver, not a ``torch.optim.Optimizer``: it owns per-sample dual
state. :meth:`SDCA.local_steps` runs steps on CoCoA's local subproblem (Ma et al. 2015)
from a given global ``w``, which is how :mod:`distml.algorithms.cocoa` uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from distml.errors import ConfigError
from distml.optim.base import positive
from distml.optim.glm import check_loss, conjugate, dual_step, primal_loss


class SDCA:
    """SDCA over the samples ``x`` (a dense block of rows), with dual state ``alpha``.

    Args:
        x: features, shape (n_local, d), dense (numpy or tensor).
        y: labels in {−1, +1} (hinge, logistic) or real targets (squared), shape (n_local,).
        lam: the L2 coefficient λ (> 0).
        loss: "hinge", "logistic" or "squared".
        n_total: n in ``1/(λn)`` — all samples over all workers (default: ``len(x)``).
        sigma: CoCoA+'s subproblem factor σ' (>= 1; 1 for plain SDCA and CoCoA).
        seed: seeds the sampling order.

    Raises:
        ConfigError: λ <= 0, sigma < 1, an unknown loss, mismatched shapes, or labels not
            in {−1, +1} for a classification loss.
    """

    def __init__(self, x: Any, y: Any, lam: float, loss: str = "hinge",
                 n_total: int | None = None, sigma: float = 1.0, seed: int = 0):
        self.x = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
        self.y = np.asarray(y, dtype=np.float64).reshape(-1)
        if self.x.ndim != 2 or len(self.x) != len(self.y) or len(self.y) == 0:
            raise ConfigError(f"sdca: x must be (n, d) with one label per row, got x {self.x.shape}, "
                              f"y {self.y.shape}")
        self.loss = check_loss("sdca", loss)
        if loss != "squared" and not np.isin(self.y, (-1.0, 1.0)).all():
            raise ConfigError(f"sdca: {loss} loss needs labels in {{-1, +1}}")
        self.lam = positive("sdca", "lam", lam)
        self.n_total = len(self.y) if n_total is None else int(n_total)
        if self.n_total < len(self.y):
            raise ConfigError(f"sdca: n_total must be >= {len(self.y)} (the local samples), "
                              f"got {n_total}")
        if not sigma >= 1:
            raise ConfigError(f"sdca: sigma must be >= 1, got {sigma!r}")
        self.sigma = float(sigma)
        self.alpha = np.zeros(len(self.y))
        self.sq_norms = np.einsum("ij,ij->i", self.x, self.x)
        self.rng = np.random.default_rng(seed)
        self._order = np.empty(0, dtype=np.int64)
        self._pos = 0

    def _next(self) -> int:
        # sampling without replacement, a fresh permutation per pass (SDCA-Perm)
        if self._pos >= len(self._order):
            self._order = self.rng.permutation(len(self.y))
            self._pos = 0
        i = int(self._order[self._pos])
        self._pos += 1
        return i

    def local_steps(self, w: np.ndarray, steps: int) -> tuple[np.ndarray, np.ndarray]:
        """Run ``steps`` dual coordinate steps from the global ``w``; state is not changed.

        Returns:
            ``(Δα, Δw)`` with ``Δw = 1/(λn) Σ Δα_i x_i``; apply them with :meth:`apply`.
        """
        scale = 1.0 / (self.lam * self.n_total)
        dalpha = np.zeros_like(self.alpha)
        dw = np.zeros_like(w)
        x, y, alpha, sq = self.x, self.y, self.alpha, self.sq_norms
        for _ in range(steps):
            i = self._next()
            # the subproblem sees w + σ Δw (Ma et al. 2015, eq. 9); σ = 1 is plain SDCA
            z = float(x[i] @ w) + self.sigma * float(x[i] @ dw)
            d = dual_step(self.loss, alpha[i] + dalpha[i], y[i], z, self.sigma * sq[i] * scale)
            if d != 0.0:
                dalpha[i] += d
                dw += (d * scale) * x[i]
        return dalpha, dw

    def apply(self, dalpha: np.ndarray, gamma: float = 1.0) -> None:
        """α ← α + γ Δα (γ = 1/K for CoCoA's averaging, 1 for CoCoA+ and plain SDCA)."""
        self.alpha += gamma * dalpha

    def primal_w(self) -> np.ndarray:
        """This block's share of ``w(α) = 1/(λn) Σ α_i x_i`` (sum the shares over workers)."""
        return self.x.T @ self.alpha / (self.lam * self.n_total)

    def gap_terms(self, w: np.ndarray) -> float:
        """Σ_i [φ(x_i·w) + φ*(−α_i)] over the local samples (sum over workers, then /n)."""
        return float(np.sum(primal_loss(self.loss, self.x @ w, self.y)
                            + conjugate(self.loss, self.alpha, self.y)))

    def duality_gap(self, w: np.ndarray) -> float:
        """P(w) − D(α) on a single machine (``w`` must be :meth:`primal_w`)."""
        return self.gap_terms(w) / self.n_total + self.lam * float(w @ w)

    def fit(self, epochs: int = 100, tol: float = 1e-4) -> tuple[np.ndarray, float]:
        """Single-machine SDCA: passes over the data until the duality gap is <= ``tol``.

        Returns:
            ``(w, gap)``.

        Raises:
            ConfigError: epochs < 1 or tol < 0.
        """
        if epochs < 1 or tol < 0:
            raise ConfigError(f"sdca: epochs must be >= 1 and tol >= 0, got {epochs}, {tol}")
        w = self.primal_w()
        gap = self.duality_gap(w)
        for _ in range(epochs):
            if gap <= tol:
                break
            dalpha, dw = self.local_steps(w, len(self.y))
            self.apply(dalpha)
            w = w + dw
            gap = self.duality_gap(w)
        return w, gap

    def state_dict(self) -> dict[str, Any]:
        return {"alpha": self.alpha.copy(), "rng": self.rng.bit_generator.state,
                "order": self._order.copy(), "pos": self._pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.alpha = np.asarray(state["alpha"], dtype=np.float64).copy()
        self.rng.bit_generator.state = state["rng"]
        self._order = np.asarray(state["order"], dtype=np.int64)
        self._pos = int(state["pos"])
