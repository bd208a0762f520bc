"""Helpers the model-parallel algorithms share: find a model's layer sequence, gather params."""

from __future__ import annotations

import torch
from torch import nn

from distml.errors import ConfigError


def sequential_of(owner: str, model: nn.Module) -> nn.Sequential:
    """The ``nn.Sequential`` that carries all of ``model``'s parameters (itself or a child).

    Raises:
        ConfigError: no such sequence (e.g. a CNN with parameters outside one Sequential).
    """
    if isinstance(model, nn.Sequential):
        return model
    total = sum(p.numel() for p in model.parameters())
    for child in model.children():
        if isinstance(child, nn.Sequential) and sum(p.numel() for p in child.parameters()) == total:
            return child
    raise ConfigError(f"{owner} needs an nn.Sequential-like model (e.g. mlp) whose layers hold all "
                      f"parameters, got {type(model).__name__}")


def flat(tensors: list[torch.Tensor], width: int, dtype) -> torch.Tensor:
    """Concatenate ``tensors`` into one vector zero-padded to ``width``."""
    out = torch.zeros(width, dtype=dtype)
    i = 0
    for t in tensors:
        n = t.numel()
        out[i:i + n] = t.detach().reshape(-1)
        i += n
    return out


@torch.no_grad()
def unflat(vec: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    """Copy ``vec`` back into ``tensors`` (the inverse of :func:`flat`)."""
    i = 0
    for t in tensors:
        n = t.numel()
        t.copy_(vec[i:i + n].view_as(t))
        i += n
