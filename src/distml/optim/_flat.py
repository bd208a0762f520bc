"""Flat views of an optimizer's parameters and gradients, for the solvers that need vectors."""

from __future__ import annotations

import torch


def params_of(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def flat_params(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def flat_grad(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                      for p in params])


@torch.no_grad()
def set_params(params: list[torch.Tensor], flat: torch.Tensor) -> None:
    i = 0
    for p in params:
        n = p.numel()
        p.copy_(flat[i:i + n].view_as(p))
        i += n


def eval_grad(closure, params: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """Call the closure (it zeroes, forwards and backwards) and return (loss, flat gradient)."""
    with torch.enable_grad():
        loss = closure()
    return float(loss), flat_grad(params)
