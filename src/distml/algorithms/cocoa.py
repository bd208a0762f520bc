"""CoCoA / CoCoA+: communication-efficient distributed dual coordinate ascent.

Jaggi et al. 2014, "Communication-Efficient Distributed Dual Coordinate Ascent" (NIPS);
Ma et al. 2015, "Adding vs. Averaging in Distributed Primal-Dual Optimization" (ICML).
Samples are partitioned over K workers; each round every worker runs H SDCA steps on
its local dual subproblem (:class:`~distml.optim.sdca.SDCA`), then the primal updates
Δw_k are summed with one all-reduce of a (d+2)-vector and combined by averaging
(``variant = "cocoa"``: γ = 1/K, σ' = 1) or adding (``"cocoa+"``: γ = 1, σ' = K). The two
extra entries carry the gap terms of the iterate the round began at, so the duality
gap is known every round at no extra message; it is logged and stops the run.

Model: a linear model without intercept from the ``[model]`` section: ``linear_svm``
(hinge), ``softmax`` (logistic) with 2 classes, or ``least_squares`` (squared); its
weights are set to ``w`` for evaluation. The ``[optim]`` section is not used.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import nn

from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.errors import ConfigError
from distml.models.layers import linear_layer
from distml.optim.glm import LOSSES, primal_loss
from distml.optim.sdca import SDCA
from distml.partition.steps import total_steps

VARIANTS = ("cocoa", "cocoa+")
_LOSS_OF_MODEL = {"hinge": "hinge", "cross_entropy": "logistic", "mse": "squared"}


@ALGORITHMS.register("cocoa", topology="collective", pace="bsp every round",
                     paper="Jaggi et al. 2014 (CoCoA); Ma et al. 2015 (CoCoA+)",
                     summary="distributed SDCA: H local dual steps per round, Δw averaged or added")
class CoCoA(Algorithm):
    """CoCoA / CoCoA+ with SDCA as the local solver.

    Args:
        lam: the L2 coefficient λ of ``1/n Σ φ(x_i·w) + λ/2 ‖w‖²`` (> 0).
        local_steps: H, SDCA steps per worker per round (>= 1; default: one pass over
            the local samples).
        variant: "cocoa" (average the updates) or "cocoa+" (add them).
        loss: "auto" (from the model: hinge for linear_svm, logistic for softmax,
            squared for least_squares) or one of hinge, logistic, squared.
        gap_tol: stop when the duality gap is <= this (>= 0; 0 runs every round).
        rounds: communication rounds (>= 1; default: ``train.epochs`` passes of H).

    Raises:
        ConfigError: a value out of range or an unknown name.
    """

    owns_loop = True
    mid_run_checkpoints = False     # run_steps: a restart starts over from step 0

    supports = Supports(wrap=False, precisions=("fp32",), models="linear")

    def __init__(self, lam: float = 1e-3, local_steps: int | None = None, variant: str = "cocoa+",
                 loss: str = "auto", gap_tol: float = 1e-6, rounds: int | None = None):
        if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam > 0:
            raise ConfigError(f"cocoa: lam must be > 0, got {lam!r}")
        for name, v in (("local_steps", local_steps), ("rounds", rounds)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ConfigError(f"cocoa: {name} must be an int >= 1, got {v!r}")
        if variant not in VARIANTS:
            raise ConfigError(f"cocoa: variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if loss != "auto" and loss not in LOSSES:
            raise ConfigError(f"cocoa: loss must be auto or one of {', '.join(LOSSES)}, got {loss!r}")
        if not isinstance(gap_tol, (int, float)) or not gap_tol >= 0:
            raise ConfigError(f"cocoa: gap_tol must be >= 0, got {gap_tol!r}")
        self.lam, self.local_steps, self.variant = float(lam), local_steps, variant
        self.loss, self.gap_tol, self.rounds = loss, float(gap_tol), rounds
        self.solver: SDCA | None = None
        self.w: np.ndarray | None = None
        self.certified: tuple[float, float] | None = None   # (P(w), gap) of the current w

    def prepare_model(self, model: nn.Module) -> nn.Module:
        layer = linear_layer("cocoa", model, (1, 2))
        implied = _LOSS_OF_MODEL.get(getattr(model, "default_loss", ""), None)
        if self.loss == "auto":
            if implied is None:
                raise ConfigError("cocoa: loss = 'auto' needs model softmax, linear_svm or "
                                  "least_squares; set algorithm.loss")
            self.loss = implied
        if (layer.out_features == 1) != (self.loss == "squared"):
            raise ConfigError(f"cocoa: loss {self.loss!r} does not fit a model with "
                              f"{layer.out_features} output(s)")
        return model

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "CoCoA", "variant": self.variant, "local_solver": "sdca",
                "loss": self.loss, "lam": self.lam, "local_steps": self.local_steps or "one pass"}

    def run(self, loop):
        """Train round by round; every rank returns the loop's result."""
        p, t = loop.parts, loop.transport
        self.prepare_model(p.model)
        if p.source.online:
            raise ConfigError("cocoa needs a finite data set (an offline source): SDCA keeps one "
                              "dual variable per sample")
        # a disjoint split that keeps every sample (the sample partitions drop the n mod K
        # remainder): the partition's shuffled order over all rows, cut into K parts
        data = p.source.train()
        order = p.loader.partition.indices(len(data), 0, 1, 0, loop.config.seed, data.labels)
        x, y = data.take(np.array_split(order, t.world_size)[t.rank])
        x = x.reshape(len(x), -1).double().numpy()
        y = y.double().numpy()
        if self.loss != "squared":
            y = 2.0 * y - 1.0                # class ids {0, 1} → labels {−1, +1}
        n_total = int(t.all_reduce(torch.tensor([float(len(y))], dtype=torch.float64))[0])
        k = t.world_size
        sigma, self.gamma = (float(k), 1.0) if self.variant == "cocoa+" else (1.0, 1.0 / k)
        self.solver = SDCA(x, y, self.lam, self.loss, n_total=n_total, sigma=sigma,
                           seed=loop.config.seed * 1009 + t.rank)
        self.w = np.zeros(x.shape[1])
        self.n_total = n_total
        h = self.local_steps or len(y)
        rounds = self.rounds or total_steps(loop.config.train.epochs, len(y) / h,
                                            loop.config.train.max_steps)
        if self.rounds and loop.config.train.max_steps is not None:
            rounds = min(rounds, loop.config.train.max_steps)

        def one_round(step: int) -> dict[str, float] | None:
            # one all-reduce per round carries Σ Δw_k and the gap terms of the current
            # iterate, so the certificate costs no extra message
            dalpha, dw = self.solver.local_steps(self.w, h)
            total = t.all_reduce(torch.from_numpy(np.concatenate([dw, self._gap_sums()])))
            objective, gap = self._certify(total[-2:])
            if gap <= self.gap_tol:
                return None                   # the iterate is certified: keep it, stop
            self.solver.apply(dalpha, self.gamma)
            self.w = self.w + self.gamma * total[:-2].numpy()
            self.certified = None
            return {"loss": objective, "duality_gap": gap}   # of the iterate this round began at

        self.certified = None
        return loop.run_steps(one_round, rounds, steps_per_epoch=max(1, math.ceil(len(y) / h)))

    def _gap_sums(self) -> np.ndarray:
        """This worker's Σφ(x_i·w) and Σ[φ(x_i·w) + φ*(−α_i)] (summed over workers, then /n)."""
        s = self.solver
        return np.array([primal_loss(self.loss, s.x @ self.w, s.y).sum(), s.gap_terms(self.w)])

    def _certify(self, sums: torch.Tensor) -> tuple[float, float]:
        """P(w) and the duality gap P(w) − D(α) from the all-reduced sums; remembered."""
        ww = float(self.w @ self.w)
        objective = float(sums[0]) / self.n_total + 0.5 * self.lam * ww
        gap = float(sums[1]) / self.n_total + self.lam * ww
        self.certified = (objective, gap)
        return objective, gap

    def at_eval(self, step: int) -> dict[str, Any]:
        """The current iterate's objective and duality gap (every rank; all-reduces if unknown)."""
        if self.solver is None:
            return {}
        if self.certified is None:
            self._certify(self.transport.all_reduce(torch.from_numpy(self._gap_sums())))
        return {"primal_objective": self.certified[0], "duality_gap": self.certified[1]}

    def eval_model(self) -> nn.Module:
        if self.w is not None:
            layer = linear_layer("cocoa", self.model, (1, 2))
            with torch.no_grad():
                layer.weight.zero_()
                layer.weight[-1].copy_(torch.from_numpy(self.w))
                if layer.bias is not None:
                    layer.bias.zero_()
        return self.model

    def state_dict(self) -> dict[str, Any]:
        return {} if self.solver is None else {"w": self.w.copy(), "sdca": self.solver.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state:
            self.w = np.asarray(state["w"]).copy()
            self.solver.load_state_dict(state["sdca"])
