"""The run's length in steps and the one batch iterator every training loop uses.

One formula (``epochs × steps per epoch``, capped by ``max_steps``) and one iterator that
resumes mid-epoch exactly, shared by the worker loop and the algorithms that own their
loop (pipeline, tensor and feature parallelism, CoCoA), so their runs have the same length
and see the same batches in the same order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch


def total_steps(epochs: float, steps_per_epoch: float, max_steps: int | None = None) -> int:
    """``ceil(epochs × steps_per_epoch)`` (at least 1), capped by ``max_steps`` when set
    (``steps_per_epoch`` may be fractional, e.g. CoCoA's rounds of H of n samples)."""
    total = max(1, math.ceil(epochs * steps_per_epoch))
    return total if max_steps is None else min(total, max_steps)


def batches(loader, steps_per_epoch: int, total: int, start: int = 0,
            full_batch: bool = False) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield ``(step, x, y)`` for steps ``start … total−1`` from ``loader``'s epochs
    (``loader.full_batch()`` every step when ``full_batch``); step s is batch
    ``s mod steps_per_epoch`` of epoch ``s div steps_per_epoch``, so a resumed run
    continues mid-epoch exactly."""
    step = start
    while step < total:
        if full_batch:
            x, y = loader.full_batch()
            yield step, x, y
            step += 1
            continue
        epoch, offset = divmod(step, steps_per_epoch)
        for x, y in loader.batches(epoch, start=offset):
            yield step, x, y
            step += 1
            if step >= total:
                return
