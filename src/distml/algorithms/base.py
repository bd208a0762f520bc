"""The contract between the worker loop and an algorithm (DESIGN.md §3).

Data-parallel algorithms implement hooks that the loop calls explicitly around its
"forward, backward, optimizer step"; algorithms whose step has another shape set
``owns_loop = True`` and implement ``run(ctx)`` on the same context instead.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class Algorithm:
    """Base class: every hook is a no-op, so an algorithm overrides only what it needs.

    Lifecycle: ``setup`` once (after the model is built and before the first step), then
    per step ``loss_terms`` → backward → ``after_backward`` → optimizer step →
    ``after_step``. ``state_dict``/``load_state_dict`` make it checkpointable.
    """

    owns_loop = False
    #: a run can resume from a checkpoint taken mid-run (``--resume``, ``--max-restarts``);
    #: algorithms that drive their own steps (``TrainLoop.run_steps``) start over instead
    mid_run_checkpoints = True
    #: rank 0 evaluates while the others wait at a barrier (collective algorithms).
    synchronous_eval = True
    #: what the worker loop's step may add around the hooks ([train] precision,
    #: accumulate_steps, clip_grad_norm); ``owns_loop`` algorithms run their own step,
    #: which adds none of them (distml refuses them before any process starts)
    supports_precision: tuple[str, ...] = ("fp32", "bf16", "fp16")
    supports_accumulation = True
    supports_clipping = True

    def launch_size(self, workers: int) -> int:
        """How many processes the launcher starts for ``workers`` workers (servers are extra)."""
        return workers

    def run(self, loop) -> Any:
        """``owns_loop`` algorithms: train with ``loop`` (a :class:`~distml.runtime.loop.TrainLoop`
        giving the parts, transport, evaluation, checkpoints and metrics) and return its
        ``LoopResult``."""
        raise NotImplementedError(f"{type(self).__name__} sets owns_loop but has no run()")

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, transport) -> None:
        self.model = model
        self.optimizer = optimizer
        self.transport = transport

    def loss_terms(self, model: nn.Module) -> torch.Tensor | None:
        """Extra loss added before backward (e.g. ADMM's proximal term)."""
        return None

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss that line-searching optimizers (L-BFGS) must see identically on every rank."""
        return loss

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Around every backward pass but an optimizer step's last (``accumulate_steps``):
        gradients accumulate locally and nothing is communicated (DDP's ``no_sync``)."""
        return contextlib.nullcontext()

    def after_backward(self, step: int) -> None:
        """Gradient-level hook: gradients are in ``p.grad``; e.g. all-reduce them."""

    def after_step(self, step: int) -> None:
        """Model-level hook: after the optimizer step; e.g. average models every H steps."""

    def eval_model(self) -> nn.Module:
        """The model to evaluate and save (an ensemble, the consensus variable, ...)."""
        return self.model

    def at_eval(self, step: int) -> dict[str, Any]:
        """Called on every rank at every evaluation point, before rank 0 evaluates
        ``eval_model()``; it may communicate (e.g. gather the ensemble's members, measure
        the consensus distance). Returns figures that rank 0 adds to the evaluation record
        (``eval.jsonl``) and, from the last one, to ``summary.json["algorithm_metrics"]``."""
        return {}

    def saved_model(self, model: nn.Module, workers: int) -> nn.Module:
        """The module ``model.pt`` was saved from, built around a fresh ``model`` of the
        run's architecture (e.g. an ensemble of ``workers`` copies); ``distml evaluate``
        loads the state dict into it."""
        return model

    def describe(self) -> dict[str, Any]:
        """The resolved plan shown by ``distml run --dry-run``."""
        return {"algorithm": type(self).__name__}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        """Drop hooks and buffers before the process group is destroyed."""
