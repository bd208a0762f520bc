"""Ensemble of the workers' models: independent local training, combined outputs.

Reference: Dietterich 2000, "Ensemble methods in machine learning"; docs/design.md §2.5
(output average and majority voting). Workers train on their own shards without
communicating; at every evaluation point they all-gather their models once and the
ensemble (:class:`~distml.aggregate.ensemble.Ensemble`: probability average, or
majority vote with ties broken by the mean probability; voting needs 3+ workers to
differ from averaging) is the run's model: it is evaluated and saved as ``model.pt``
(``members.k.*``; ``distml evaluate`` rebuilds the container through ``saved_model``).
Set ``train.eval_every`` to choose how often the models are gathered.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distml.aggregate.ensemble import MODES, Ensemble
from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import flatten, unflatten_into


def _state_tensors(model: nn.Module) -> list[torch.Tensor]:
    # parameters and floating buffers (e.g. BatchNorm statistics) define a member
    return [t for t in model.state_dict(keep_vars=True).values() if t.is_floating_point()]


def gather_members(model: nn.Module, transport) -> list[nn.Module]:
    """Every worker's copy of ``model`` (same architecture), in rank order, by one all-gather.

    Must be called by every rank at the same point.
    """
    flats = transport.all_gather(flatten(_state_tensors(model)))
    members = []
    for flat in flats:
        m = copy.deepcopy(model)
        unflatten_into(flat, _state_tensors(m))
        members.append(m.eval())
    return members


@ALGORITHMS.register("ensemble", topology="collective", pace="bsp at evaluations",
                     paper="Dietterich 2000 (ensembles: output averaging, majority voting)",
                     summary="independent local models; their ensemble (average or vote) is the result")
class EnsembleAlgorithm(Algorithm):
    """Train independently; evaluate and save the ensemble of all workers' models.

    Args:
        mode: "average" (mean of the members' probabilities) or "vote" (majority vote,
            ties to the highest mean probability).

    Raises:
        ValueError: an unknown mode.
    """

    buffers = "members"     # every member keeps its own (gathered with its parameters)
    supports = Supports(wrap=False, **LOOP_STEP)   # wrap: eval_model

    def __init__(self, mode: str = "average"):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        self.mode = mode
        self._ensemble: Ensemble | None = None

    def at_eval(self, step: int) -> dict[str, Any]:
        members = gather_members(self.model, self.transport)
        self._ensemble = Ensemble(members, self.mode)
        return {"ensemble_members": len(members)}

    def eval_model(self) -> nn.Module:
        return self.model if self._ensemble is None else self._ensemble

    def saved_model(self, model: nn.Module, workers: int) -> nn.Module:
        return Ensemble([copy.deepcopy(model) for _ in range(workers)], self.mode)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "ensemble", "mode": self.mode}
