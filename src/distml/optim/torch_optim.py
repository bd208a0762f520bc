"""Registrations over ``torch.optim``: the first- and second-order methods torch already has.

Every factory takes ``params`` (supplied by distml) plus torch's hyperparameters, checks
their ranges, and returns torch's optimizer unchanged. Meta: ``kind``, ``paper``,
``summary``, ``full_batch`` (the runtime feeds the worker's whole shard each step) and
``needs_closure`` (``step`` needs a closure that re-evaluates the loss).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch

from distml.errors import ConfigError
from distml.optim.base import OPTIMIZERS, int_at_least, non_negative, positive, unit_interval

STOCHASTIC_1 = "first-order stochastic"
DETERMINISTIC_1 = "first-order deterministic"
DETERMINISTIC_2 = "second-order deterministic (quasi-Newton)"


def _sgd(owner: str, params: Iterable[Any], lr: float, momentum: float, dampening: float,
         weight_decay: float, nesterov: bool) -> torch.optim.SGD:
    positive(owner, "lr", lr)
    unit_interval(owner, "momentum", momentum)
    unit_interval(owner, "dampening", dampening, closed_right=True)
    non_negative(owner, "weight_decay", weight_decay)
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ConfigError(f"{owner}: nesterov needs momentum in (0, 1) and dampening = 0, "
                          f"got momentum={momentum!r}, dampening={dampening!r}")
    return torch.optim.SGD(params, lr=lr, momentum=momentum, dampening=dampening,
                           weight_decay=weight_decay, nesterov=bool(nesterov))


def _betas(owner: str, betas: Sequence[float]) -> tuple[float, float]:
    if isinstance(betas, (str, bytes)) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise ConfigError(f"{owner}: betas must be two numbers in [0, 1), got {betas!r}")
    return (unit_interval(owner, "betas[0]", betas[0]), unit_interval(owner, "betas[1]", betas[1]))


@OPTIMIZERS.register("sgd", kind=STOCHASTIC_1, paper="Robbins & Monro 1951", full_batch=False,
                     needs_closure=False, summary="stochastic gradient descent (torch.optim.SGD)")
def sgd(params: Iterable[Any], lr: float = 0.01, momentum: float = 0.0, dampening: float = 0.0,
        weight_decay: float = 0.0, nesterov: bool = False) -> torch.optim.SGD:
    """Stochastic gradient descent, optionally with (Nesterov) momentum; Robbins & Monro 1951.

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: step size (> 0).
        momentum: heavy-ball momentum factor in [0, 1).
        dampening: momentum dampening in [0, 1].
        weight_decay: L2 coefficient (>= 0).
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).

    Returns:
        ``torch.optim.SGD``.

    Raises:
        ConfigError: a value out of range.
    """
    return _sgd("sgd", params, lr, momentum, dampening, weight_decay, nesterov)


@OPTIMIZERS.register("momentum", kind=STOCHASTIC_1, paper="Polyak 1964", full_batch=False,
                     needs_closure=False, summary="SGD with heavy-ball momentum 0.9")
def momentum(params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9,
             dampening: float = 0.0, weight_decay: float = 0.0) -> torch.optim.SGD:
    """SGD with heavy-ball momentum (default 0.9); Polyak 1964.

    Args: as :func:`sgd`, without ``nesterov``.

    Returns:
        ``torch.optim.SGD``.

    Raises:
        ConfigError: a value out of range.
    """
    return _sgd("momentum", params, lr, momentum, dampening, weight_decay, False)


@OPTIMIZERS.register("nesterov", kind=STOCHASTIC_1, paper="Nesterov 1983; Sutskever et al. 2013",
                     full_batch=False, needs_closure=False,
                     summary="SGD with Nesterov momentum 0.9")
def nesterov(params: Iterable[Any], lr: float = 0.01, momentum: float = 0.9,
             weight_decay: float = 0.0) -> torch.optim.SGD:
    """SGD with Nesterov accelerated momentum (default 0.9); Nesterov 1983.

    Args: as :func:`sgd`; momentum must be in (0, 1).

    Returns:
        ``torch.optim.SGD`` with ``nesterov=True``.

    Raises:
        ConfigError: a value out of range.
    """
    return _sgd("nesterov", params, lr, momentum, 0.0, weight_decay, True)


@OPTIMIZERS.register("gd", kind=DETERMINISTIC_1, paper="Cauchy 1847", full_batch=True,
                     needs_closure=False,
                     summary="full-batch gradient descent (optionally Nesterov's accelerated GD)")
def gd(params: Iterable[Any], lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
       weight_decay: float = 0.0) -> torch.optim.SGD:
    """Deterministic full-batch gradient descent; Cauchy 1847.

    The runtime feeds the worker's whole shard as one batch every step (meta
    ``full_batch``). With ``momentum`` and ``nesterov=True`` it is Nesterov's
    accelerated gradient method (Nesterov 1983) in torch's formulation.

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: step size (> 0); for an L-smooth objective, <= 1/L converges.
        momentum: momentum factor in [0, 1).
        nesterov: Nesterov acceleration (needs momentum > 0).
        weight_decay: L2 coefficient (>= 0).

    Returns:
        ``torch.optim.SGD``.

    Raises:
        ConfigError: a value out of range.
    """
    return _sgd("gd", params, lr, momentum, 0.0, weight_decay, nesterov)


@OPTIMIZERS.register("adam", kind=STOCHASTIC_1, paper="Kingma & Ba 2015", full_batch=False,
                     needs_closure=False, summary="adaptive moment estimation (torch.optim.Adam)")
def adam(params: Iterable[Any], lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
         eps: float = 1e-8, weight_decay: float = 0.0, amsgrad: bool = False) -> torch.optim.Adam:
    """Adam; Kingma & Ba 2015 (AMSGrad variant: Reddi et al. 2018).

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: step size (> 0).
        betas: decay rates of the first and second moment estimates, each in [0, 1).
        eps: denominator term (> 0).
        weight_decay: L2 coefficient added to the gradient (>= 0).
        amsgrad: use the running maximum of the second moment.

    Returns:
        ``torch.optim.Adam``.

    Raises:
        ConfigError: a value out of range.
    """
    positive("adam", "lr", lr)
    positive("adam", "eps", eps)
    non_negative("adam", "weight_decay", weight_decay)
    return torch.optim.Adam(params, lr=lr, betas=_betas("adam", betas), eps=eps,
                            weight_decay=weight_decay, amsgrad=bool(amsgrad))


@OPTIMIZERS.register("adamw", kind=STOCHASTIC_1, paper="Loshchilov & Hutter 2019",
                     full_batch=False, needs_closure=False,
                     summary="Adam with decoupled weight decay (torch.optim.AdamW)")
def adamw(params: Iterable[Any], lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999),
          eps: float = 1e-8, weight_decay: float = 0.01, amsgrad: bool = False) -> torch.optim.AdamW:
    """AdamW, Adam with decoupled weight decay; Loshchilov & Hutter 2019.

    Args: as :func:`adam`; ``weight_decay`` (default 0.01) shrinks the weights directly.

    Returns:
        ``torch.optim.AdamW``.

    Raises:
        ConfigError: a value out of range.
    """
    positive("adamw", "lr", lr)
    positive("adamw", "eps", eps)
    non_negative("adamw", "weight_decay", weight_decay)
    return torch.optim.AdamW(params, lr=lr, betas=_betas("adamw", betas), eps=eps,
                             weight_decay=weight_decay, amsgrad=bool(amsgrad))


@OPTIMIZERS.register("adagrad", kind=STOCHASTIC_1, paper="Duchi et al. 2011", full_batch=False,
                     needs_closure=False,
                     summary="per-coordinate step sizes from accumulated squared gradients")
def adagrad(params: Iterable[Any], lr: float = 0.01, lr_decay: float = 0.0,
            weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
            eps: float = 1e-10) -> torch.optim.Adagrad:
    """AdaGrad; Duchi, Hazan & Singer 2011.

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: step size (> 0).
        lr_decay: step-size decay (>= 0).
        weight_decay: L2 coefficient (>= 0).
        initial_accumulator_value: starting sum of squared gradients (>= 0).
        eps: denominator term (> 0).

    Returns:
        ``torch.optim.Adagrad``.

    Raises:
        ConfigError: a value out of range.
    """
    positive("adagrad", "lr", lr)
    non_negative("adagrad", "lr_decay", lr_decay)
    non_negative("adagrad", "weight_decay", weight_decay)
    non_negative("adagrad", "initial_accumulator_value", initial_accumulator_value)
    positive("adagrad", "eps", eps)
    return torch.optim.Adagrad(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                               initial_accumulator_value=initial_accumulator_value, eps=eps)


@OPTIMIZERS.register("rmsprop", kind=STOCHASTIC_1, paper="Tieleman & Hinton 2012",
                     full_batch=False, needs_closure=False,
                     summary="gradient scaled by a running RMS of past gradients")
def rmsprop(params: Iterable[Any], lr: float = 0.01, alpha: float = 0.99, eps: float = 1e-8,
            weight_decay: float = 0.0, momentum: float = 0.0,
            centered: bool = False) -> torch.optim.RMSprop:
    """RMSprop; Tieleman & Hinton 2012 (Coursera lecture 6.5).

    Args:
        params: the parameters (or parameter groups) to optimize.
        lr: step size (> 0).
        alpha: smoothing constant of the squared-gradient average, in [0, 1).
        eps: denominator term (> 0).
        weight_decay: L2 coefficient (>= 0).
        momentum: momentum factor in [0, 1).
        centered: normalize by the estimated gradient variance instead.

    Returns:
        ``torch.optim.RMSprop``.

    Raises:
        ConfigError: a value out of range.
    """
    positive("rmsprop", "lr", lr)
    unit_interval("rmsprop", "alpha", alpha)
    positive("rmsprop", "eps", eps)
    non_negative("rmsprop", "weight_decay", weight_decay)
    unit_interval("rmsprop", "momentum", momentum)
    return torch.optim.RMSprop(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                               momentum=momentum, centered=bool(centered))


@OPTIMIZERS.register("lbfgs", kind=DETERMINISTIC_2, paper="Liu & Nocedal 1989", full_batch=True,
                     needs_closure=True,
                     summary="limited-memory BFGS with strong-Wolfe line search (torch.optim.LBFGS)")
def lbfgs(params: Iterable[Any], lr: float = 1.0, max_iter: int = 20, history_size: int = 10,
          line_search: str | None = "strong_wolfe", tolerance_grad: float = 1e-7,
          tolerance_change: float = 1e-9) -> torch.optim.LBFGS:
    """L-BFGS; Liu & Nocedal 1989.

    Full batch, and ``step(closure)`` needs a closure that zeroes the gradients,
    recomputes the loss, calls ``backward`` and returns the loss. One ``step`` runs up
    to ``max_iter`` iterations.

    Args:
        params: the parameters to optimize (one group; torch's restriction).
        lr: step size (> 0); 1.0 with the line search.
        max_iter: iterations per ``step`` (>= 1).
        history_size: number of curvature pairs kept (>= 1).
        line_search: "strong_wolfe", or None / "none" for fixed steps of ``lr``.
        tolerance_grad: stop when the max-abs gradient is below this (>= 0).
        tolerance_change: stop when the loss or step changes less than this (>= 0).

    Returns:
        ``torch.optim.LBFGS``.

    Raises:
        ConfigError: a value out of range.
    """
    positive("lbfgs", "lr", lr)
    int_at_least("lbfgs", "max_iter", max_iter, 1)
    int_at_least("lbfgs", "history_size", history_size, 1)
    non_negative("lbfgs", "tolerance_grad", tolerance_grad)
    non_negative("lbfgs", "tolerance_change", tolerance_change)
    if line_search == "none":
        line_search = None
    if line_search not in ("strong_wolfe", None):
        raise ConfigError(f"lbfgs: line_search must be 'strong_wolfe' or 'none', got {line_search!r}")
    return torch.optim.LBFGS(params, lr=lr, max_iter=max_iter, history_size=history_size,
                             line_search_fn=line_search, tolerance_grad=tolerance_grad,
                             tolerance_change=tolerance_change)
