"""Weighted and partial means of workers' tensors (model averaging, backup workers)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float] | None = None) -> torch.Tensor:
    """``Σ w_k x_k / Σ w_k`` (equal weights by default), e.g. weights = samples per worker.

    Reference: model averaging (McMahan et al. 2017, FedAvg weights by sample counts).

    Args:
        tensors: equally shaped tensors, one per worker (at least one).
        weights: non-negative weights with a positive sum, one per tensor.

    Returns:
        A new tensor, the weighted mean.

    Raises:
        ValueError: no tensors, a length mismatch, a negative weight or a zero sum.
    """
    if len(tensors) == 0:
        raise ValueError("weighted_mean needs at least one tensor, got 0")
    if weights is None:
        weights = [1.0] * len(tensors)
    if len(weights) != len(tensors):
        raise ValueError(f"weights must have one entry per tensor ({len(tensors)}), got {len(weights)}")
    w = [float(v) for v in weights]
    if any(v < 0 for v in w) or not sum(w) > 0:
        raise ValueError(f"weights must be >= 0 with a sum > 0, got {w}")
    total = sum(w)
    out = torch.zeros_like(tensors[0])
    for x, v in zip(tensors, w):
        if v:
            out.add_(x, alpha=v / total)
    return out


def partial_mean(tensors: Sequence[torch.Tensor], arrived: Sequence[bool],
                 weights: Sequence[float] | None = None) -> torch.Tensor:
    """The (weighted) mean over the workers that arrived: a partial model sum.

    Reference: synchronous SGD with backup workers (Chen et al. 2016) takes the first k of
    n; asynchronous ADMM (Zhang & Kwok 2014) updates from a subset.

    Args:
        tensors: one tensor per worker (the late ones' values are ignored).
        arrived: True for the workers whose tensor counts (at least one).
        weights: optional weights, as in :func:`weighted_mean`.

    Raises:
        ValueError: a length mismatch or no worker arrived.
    """
    if len(arrived) != len(tensors):
        raise ValueError(f"arrived must have one entry per tensor ({len(tensors)}), got {len(arrived)}")
    keep = [i for i, a in enumerate(arrived) if a]
    if not keep:
        raise ValueError("partial_mean needs at least one arrived worker, got none")
    w = None if weights is None else [weights[i] for i in keep]
    return weighted_mean([tensors[i] for i in keep], w)
