"""Decentralized mixing: ``x_i ← Σ_j W_ij x_j`` and the spread of the replicas.

Reference: D-PSGD (Lian et al. 2017); gossip averaging (Boyd et al. 2006, "Randomized
gossip algorithms"). The mixing matrices come from :mod:`distml.comm.topology`.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch


def mix_step(own: torch.Tensor, self_weight: float,
             neighbours: Mapping[int, torch.Tensor], weights: Mapping[int, float]) -> torch.Tensor:
    """One worker's mixing step: ``W_ii x_i + Σ_j W_ij x_j`` over the received neighbours.

    Args:
        own: this worker's flat parameters ``x_i``.
        self_weight: ``W_ii``.
        neighbours: ``{j: x_j}`` as received.
        weights: ``{j: W_ij}``; must name exactly the received neighbours.

    Returns:
        A new tensor (``own`` is not modified).

    Raises:
        ValueError: the neighbours and the weights name different workers, or the row
            (self weight included) does not sum to 1 (the mean would drift).
    """
    if set(neighbours) != set(weights):
        raise ValueError(f"weights name workers {sorted(weights)} but neighbours are {sorted(neighbours)}")
    total = self_weight + sum(weights.values())
    if abs(total - 1.0) > 1e-9:
        raise ValueError(f"a mixing row must sum to 1, got {total}")
    out = own * self_weight
    for j, x in neighbours.items():
        out.add_(x, alpha=weights[j])
    return out


def mix_all(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """All workers at once (one process, for analysis and tests): ``W @ X``.

    Args:
        x: (n, d), row i is worker i's parameters.
        w: (n, n) mixing matrix.
    """
    if w.ndim != 2 or w.shape[0] != w.shape[1] or w.shape[1] != x.shape[0]:
        raise ValueError(f"w must be ({x.shape[0]}, {x.shape[0]}), got {tuple(w.shape)}")
    return w.to(x.dtype) @ x


def consensus_distance(x: torch.Tensor) -> float:
    """``sqrt((1/n) Σ_i ‖x_i − x̄‖²)``: how far the replicas are from their mean.

    Reference: Kong et al. 2021, "Consensus control for decentralized deep learning".

    Args:
        x: (n, d), one row per worker.
    """
    centred = x - x.mean(dim=0, keepdim=True)
    return float(centred.pow(2).sum(dim=1).mean().sqrt())


def consensus_distance_from_sums(sq_dist_sum: float, workers: int) -> float:
    """The same from ``Σ_i ‖x_i − x̄‖²`` (what one all-reduce of a scalar gives)."""
    return (max(sq_dist_sum, 0.0) / workers) ** 0.5


def choco_step(x: torch.Tensor, hat_self: torch.Tensor, hat_neighbours: Mapping[int, torch.Tensor],
               weights: Mapping[int, float], gamma: float) -> torch.Tensor:
    """CHOCO-Gossip's consensus step: ``x_i + γ Σ_j W_ij (x̂_j − x̂_i)``.

    Reference: Koloskova, Stich & Jaggi 2019, "Decentralized Stochastic Optimization and
    Gossip Algorithms with Compressed Communication" (ICML), Algorithm 1. ``x̂_j`` are the
    public copies every neighbour of j rebuilds from j's compressed differences
    ``Q(x_j − x̂_j)``; with a symmetric W the step keeps the mean of the x_i exactly.

    Args:
        x: this worker's parameters (after its local step).
        hat_self: its public copy ``x̂_i`` (already updated with its own message).
        hat_neighbours: ``{j: x̂_j}`` (already updated with j's message).
        weights: ``{j: W_ij}``.
        gamma: consensus step size in (0, 1].

    Raises:
        ValueError: gamma outside (0, 1] or weights without a copy.
    """
    if not 0 < gamma <= 1:
        raise ValueError(f"gamma must be in (0, 1], got {gamma}")
    if set(weights) - set(hat_neighbours):
        raise ValueError(f"no public copy for neighbours {sorted(set(weights) - set(hat_neighbours))}")
    out = x.clone()
    for j, w in weights.items():
        out.add_(hat_neighbours[j] - hat_self, alpha=gamma * w)
    return out
