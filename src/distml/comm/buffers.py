"""A model's buffers (BatchNorm running statistics, any registered buffer) across ranks.

The mechanics behind every algorithm's buffer policy (``Algorithm.buffers``,
docs/models.md): average them over a transport where models are averaged, and carry
them into the copy of the model that is evaluated and saved (a consensus or averaged
model receives parameters only, so without this its running statistics would stay at
their initial values). Floating buffers are averaged; integer ones (``num_batches_tracked``)
are counters and keep the trained model's value.
"""

from __future__ import annotations

import torch
from torch import nn

from distml.comm.buckets import flatten, unflatten_into


def floating_buffers(model: nn.Module) -> list[torch.Tensor]:
    """The buffers of ``model`` that can be averaged (floating point), in module order."""
    return [b for b in model.buffers() if b.is_floating_point()]


@torch.no_grad()
def copy_buffers(src: nn.Module, dst: nn.Module) -> None:
    """Copy every buffer of ``src`` into the same-named buffer of ``dst`` (same architecture;
    ``src`` may hold DTensors, e.g. a tensor-parallel model: ``dst`` gets the full tensor).

    Raises:
        ValueError: the two modules' buffers differ in names.
    """
    mine, theirs = dict(src.named_buffers()), dict(dst.named_buffers())
    if mine.keys() != theirs.keys():
        raise ValueError(f"copy_buffers: buffers differ: {sorted(mine)} vs {sorted(theirs)}")
    for name, b in theirs.items():
        v = mine[name]
        b.copy_(v.full_tensor() if hasattr(v, "full_tensor") else v)   # a DTensor: all of it


@torch.no_grad()
def average_buffers(model: nn.Module, transport, into: nn.Module | None = None) -> None:
    """Average ``model``'s floating buffers over every rank of ``transport`` (one all-reduce
    per dtype) and write the mean into ``into`` (default: ``model`` itself); integer buffers
    are copied from ``model``. Every rank must call it at the same point.
    """
    target = model if into is None else into
    if into is not None:
        copy_buffers(model, into)            # integer counters, and shapes to write into
    by_dtype: dict[torch.dtype, list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for b, t in zip(floating_buffers(model), floating_buffers(target)):
        by_dtype.setdefault(b.dtype, []).append((b, t))
    for pairs in by_dtype.values():
        mean = transport.all_reduce(flatten([b for b, _ in pairs]), op="avg")
        unflatten_into(mean, [t for _, t in pairs])
