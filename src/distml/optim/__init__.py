"""Local (single-machine) optimizers and learning-rate schedules, found by name.

:data:`OPTIMIZERS` covers torch.optim's methods — stochastic first-order (``sgd``,
``momentum``, ``nesterov``, ``adam``, ``adamw``, ``adagrad``, ``rmsprop``), deterministic
first-order (``gd``) and deterministic second-order (``lbfgs``); each entry's meta says
``kind``, ``paper``, ``summary``, ``full_batch`` and ``needs_closure``.
:data:`SCHEDULES` holds per-iteration schedules: ``constant``, ``warmup``, ``step``,
``cosine``, ``linear``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler

from distml.optim import schedules, torch_optim  # noqa: F401  (registers the entries)
from distml.optim import coordinate_descent, newton_cg, slbfgs  # noqa: F401,E402  (issue 6)
from distml.optim.base import OPTIMIZERS, SCHEDULES

__all__ = ["OPTIMIZERS", "SCHEDULES", "build_optimizer", "build_schedule", "needs_closure",
           "is_full_batch"]


def build_optimizer(spec: str | Mapping[str, Any], params: Iterable[Any]) -> torch.optim.Optimizer:
    """Build the optimizer a spec names over ``params``.

    The runtime removes a nested ``schedule`` entry before calling this.

    Args:
        spec: ``"name"`` or ``{"name": ..., **hyperparameters}``.
        params: ``model.parameters()`` or parameter groups.

    Returns:
        A ``torch.optim.Optimizer``.

    Raises:
        ConfigError: unknown optimizer (the message lists the registered ones), unknown
            parameter, or a value out of range.
    """
    return OPTIMIZERS.build(spec, params=params)


def build_schedule(spec: str | Mapping[str, Any] | None, optimizer: torch.optim.Optimizer,
                   total_steps: int | None) -> LRScheduler:
    """Build a per-iteration learning-rate schedule; None means ``constant``.

    Args:
        spec: None, ``"name"`` or ``{"name": ..., **params}``.
        optimizer: the optimizer whose learning rate it drives.
        total_steps: optimizer steps in the run (needed by ``cosine`` and ``linear``).

    Returns:
        A scheduler; call its ``step()`` after every ``optimizer.step()``.

    Raises:
        ConfigError: unknown schedule or parameter, or a value out of range.
    """
    return SCHEDULES.build("constant" if spec is None else spec, optimizer=optimizer,
                           total_steps=total_steps)


def needs_closure(name: str) -> bool:
    """Whether the optimizer's ``step`` needs a closure that re-evaluates the loss (L-BFGS).

    Raises:
        ConfigError: unknown optimizer.
    """
    return bool(OPTIMIZERS.meta(name).get("needs_closure", False))


def is_full_batch(name: str) -> bool:
    """Whether the optimizer is deterministic: fed the worker's whole shard every step.

    Raises:
        ConfigError: unknown optimizer.
    """
    return bool(OPTIMIZERS.meta(name).get("full_batch", False))
