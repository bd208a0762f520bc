"""Per-iteration learning-rate schedules, each a ``torch.optim.lr_scheduler.LambdaLR``.

Call ``scheduler.step()`` once after every ``optimizer.step()``. After ``t`` calls the
learning rate is ``base_lr · f(t)``; every schedule starts with an optional linear warm-up
``f(t) = (t + 1) / warmup_steps`` for ``t < warmup_steps`` (the first step already moves).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR

from distml.errors import ConfigError
from distml.optim.base import SCHEDULES, int_at_least, unit_interval


def _warmup(owner: str, warmup_steps: int, total_steps: int | None = None,
            needs_total: bool = False) -> int:
    w = int_at_least(owner, "warmup_steps", warmup_steps, 0)
    if needs_total or total_steps is not None:
        if total_steps is None:
            raise ConfigError(f"{owner} schedule needs the run's total number of steps")
        t = int_at_least(owner, "total_steps", total_steps, 1)
        if needs_total and w >= t:
            raise ConfigError(f"{owner}: warmup_steps must be < total_steps ({t}), got {w}")
    return w


def _ramp(w: int, t: int) -> float:
    return (t + 1) / w if t < w else 1.0


def _lambda(optimizer: torch.optim.Optimizer, f: Callable[[int], float]) -> LambdaLR:
    return LambdaLR(optimizer, f)


@SCHEDULES.register("constant", summary="the optimizer's learning rate throughout")
def constant(optimizer: torch.optim.Optimizer) -> LambdaLR:
    """Keep the learning rate constant.

    Returns:
        A ``LambdaLR`` with factor 1.
    """
    return _lambda(optimizer, lambda t: 1.0)


@SCHEDULES.register("warmup", paper="Goyal et al. 2017",
                    summary="linear warm-up over warmup_steps, then constant")
def warmup(optimizer: torch.optim.Optimizer, warmup_steps: int) -> LambdaLR:
    """Linear warm-up to the base learning rate, then constant; Goyal et al. 2017.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        warmup_steps: steps of the ramp (>= 0).

    Returns:
        A ``LambdaLR``.

    Raises:
        ConfigError: warmup_steps < 0.
    """
    w = _warmup("warmup", warmup_steps)
    return _lambda(optimizer, lambda t: _ramp(w, t))


@SCHEDULES.register("step", summary="multiply by gamma every step_size steps (after warm-up)")
def step(optimizer: torch.optim.Optimizer, step_size: int, gamma: float = 0.1,
         warmup_steps: int = 0) -> LambdaLR:
    """Step decay: ``f(t) = gamma ** (t // step_size)``, counted from step 0, after any warm-up.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        step_size: steps between decays (>= 1).
        gamma: decay factor in (0, 1].
        warmup_steps: linear warm-up steps (>= 0).

    Returns:
        A ``LambdaLR``.

    Raises:
        ConfigError: a value out of range.
    """
    s = int_at_least("step", "step_size", step_size, 1)
    g = unit_interval("step", "gamma", gamma, closed_right=True)
    if g == 0:
        raise ConfigError(f"step: gamma must be in (0, 1], got {gamma!r}")
    w = _warmup("step", warmup_steps)
    return _lambda(optimizer, lambda t: _ramp(w, t) * g ** (t // s))


@SCHEDULES.register("cosine", paper="Loshchilov & Hutter 2017",
                    summary="warm-up, then cosine decay to min_lr_ratio at total_steps")
def cosine(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
           min_lr_ratio: float = 0.0) -> LambdaLR:
    """Cosine decay (no restarts) after a linear warm-up; Loshchilov & Hutter 2017.

    ``f(t) = m + (1 − m)·(1 + cos(π·p))/2`` with ``p = (t − w)/(total_steps − w)``
    clipped to [0, 1], so ``f(total_steps) = min_lr_ratio`` and it stays there.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        total_steps: steps of the run (distml supplies it).
        warmup_steps: linear warm-up steps, in [0, total_steps).
        min_lr_ratio: final learning rate as a fraction of the base, in [0, 1].

    Returns:
        A ``LambdaLR``.

    Raises:
        ConfigError: a value out of range.
    """
    w = _warmup("cosine", warmup_steps, total_steps, needs_total=True)
    m = unit_interval("cosine", "min_lr_ratio", min_lr_ratio, closed_right=True)

    def f(t: int) -> float:
        if t < w:
            return _ramp(w, t)
        p = min(1.0, (t - w) / (total_steps - w))
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p))

    return _lambda(optimizer, f)


@SCHEDULES.register("linear", summary="warm-up, then linear decay to 0 at total_steps")
def linear(optimizer: torch.optim.Optimizer, total_steps: int,
           warmup_steps: int = 0) -> LambdaLR:
    """Linear warm-up, then linear decay to 0 at ``total_steps``.

    Args:
        optimizer: the optimizer whose learning rate is scheduled.
        total_steps: steps of the run (distml supplies it).
        warmup_steps: linear warm-up steps, in [0, total_steps).

    Returns:
        A ``LambdaLR``.

    Raises:
        ConfigError: a value out of range.
    """
    w = _warmup("linear", warmup_steps, total_steps, needs_total=True)

    def f(t: int) -> float:
        if t < w:
            return _ramp(w, t)
        return max(0.0, (total_steps - t) / (total_steps - w))

    return _lambda(optimizer, f)
