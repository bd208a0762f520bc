"""Keep your own training loop: Horovod's ``DistributedOptimizer`` convention.

``dopt = distml.wrap(model, optimizer, algorithm="sync_sgd")`` returns an optimizer whose
``step()`` runs the algorithm's hooks around yours; start the script with
``distml launch -n N script.py`` (or torchrun). As in Horovod (Sergeev & Del Balso 2018),
``dopt.synchronize()`` puts the averaged gradients into ``p.grad`` before ``step()``, so
gradient clipping and ``GradScaler.unscale_`` see them::

    scaler.scale(loss).backward()
    dopt.synchronize()              # p.grad = the average over ranks (still scaled)
    scaler.unscale_(dopt)
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    scaler.step(dopt)               # no second reduction
    scaler.update()
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from distml.algorithms import ALGORITHMS
from distml.comm.transport import Transport
from distml.errors import UserError


def init(backend: str = "auto", timeout_s: float = 60.0) -> Transport:
    """Join the world described by ``distml launch`` / torchrun (RANK, WORLD_SIZE, MASTER_*).

    Raises:
        UserError: the script was not started by ``distml launch`` or torchrun.
    """
    missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise UserError(f"{', '.join(missing)} not set: start this script with "
                        "`distml launch -n N script.py` or torchrun")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    return Transport.connect(None, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                             backend=backend, timeout_s=timeout_s)


class DistributedOptimizer:
    """Wraps a ``torch.optim.Optimizer`` so ``step()`` runs a distml algorithm's hooks.

    Args:
        model: the module being trained (its parameters are synchronised at construction).
        optimizer: the user's optimizer.
        algorithm: a built Algorithm.
        transport: from :func:`init`.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, algorithm, transport):
        self.model = model
        self.optimizer = optimizer
        self.algorithm = algorithm
        self.transport = transport
        self._step = 0
        self._synchronized = False
        if algorithm.prepare_model(model) is not model:
            raise UserError("this algorithm replaces modules (e.g. sync_batchnorm); convert the "
                            "model before building the optimizer and pass the converted model")
        algorithm.setup(model, optimizer, transport)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Start a step (also after one that ``GradScaler`` skipped without calling ``step()``)."""
        self.optimizer.zero_grad(set_to_none=set_to_none)
        self._synchronized = False

    def synchronize(self) -> None:
        """Run the algorithm's ``after_backward`` now: for sync_sgd, ``p.grad`` becomes the
        average over ranks. Call it between backward and anything that reads or rescales
        the gradients (``clip_grad_norm_``, ``GradScaler.unscale_``); ``step()`` then does
        not reduce again. Every rank must call it (it communicates)."""
        if self._synchronized:
            raise UserError("synchronize() was already called for this step; call step() next "
                            "(or opt.zero_grad() to start a new step)")
        self.algorithm.after_backward(self._step)
        self._synchronized = True

    def no_sync(self):
        """A context for every backward but a step's last: gradients accumulate locally
        and nothing is communicated until the backward outside it (gradient accumulation)."""
        return self.algorithm.no_sync()

    def step(self, closure=None):
        """Run ``after_backward`` (unless :meth:`synchronize` ran), the optimizer step,
        then ``after_step``.

        With a ``GradScaler``, ``scaler.step(dopt)`` calls this only when the (averaged)
        gradients are finite, the same decision on every rank after :meth:`synchronize`
        (a skipped step runs no ``after_step`` on any rank; ``zero_grad()`` starts the
        next); call :meth:`synchronize` before ``scaler.unscale_``/``scaler.step``, else
        each rank checks its own local gradients and the ranks may disagree.
        """
        if closure is not None:
            raise UserError("DistributedOptimizer.step() takes no closure; call backward first")
        if not self._synchronized:
            self.algorithm.after_backward(self._step)
        out = self.optimizer.step()
        self._end_step()
        return out

    def _end_step(self) -> None:
        self.algorithm.after_step(self._step)
        self._step += 1
        self._synchronized = False

    def finish(self) -> None:
        """After the last step, on every rank: the algorithm's end of training (local_sgd's
        final average, so every rank ends with one model)."""
        self.algorithm.on_train_end(self._step)

    def state_dict(self):
        return {"optimizer": self.optimizer.state_dict(), "algorithm": self.algorithm.state_dict(),
                "step": self._step}

    def load_state_dict(self, state) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.algorithm.load_state_dict(state["algorithm"])
        self._step = int(state["step"])


def wrap(model: nn.Module, optimizer: torch.optim.Optimizer, algorithm="sync_sgd",
         transport: Transport | None = None) -> DistributedOptimizer:
    """Horovod-style: return an optimizer that runs ``algorithm`` around ``optimizer``.

    Args:
        algorithm: a registered name, a ``{name=..., ...}`` spec, or an Algorithm.
        transport: defaults to the world this process joined, else :func:`init`.
    """
    algo = ALGORITHMS.build(algorithm) if isinstance(algorithm, (str, dict)) else algorithm
    if not algo.supports.wrap:      # the declaration (algorithms/base.py Supports.wrap)
        raise UserError(f"algorithm {type(algo).__name__} cannot wrap a user optimizer: "
                        f"{why_not_wrappable(algo)}; use distml.run instead")
    return DistributedOptimizer(model, optimizer, algo, transport or Transport.joined() or init())


# hooks a wrapped optimizer cannot run for the user's loop, and what skipping them would break
_UNHONOURED: dict[str, str] = {
    "loss_terms": "a term added to the loss, e.g. ADMM's proximal term",
    "eval_model": "the model to evaluate is not the trained one, e.g. an ensemble or a consensus",
    "saved_model": "the saved model is built differently",
}


def _overrides(algo: Any, hook: str) -> bool:
    from distml.algorithms.base import Algorithm
    return getattr(type(algo), hook, None) is not getattr(Algorithm, hook)


def why_not_wrappable(algo: Any) -> str:
    """What a user's loop would skip for ``algo`` (empty when nothing): the reason
    ``wrap`` gives, and what a test checks each ``Supports.wrap`` declaration against."""
    if algo.owns_loop:
        return "it runs its own loop"
    return "; ".join(f"it needs {hook} ({why}), which a user's loop does not call"
                     for hook, why in _UNHONOURED.items() if _overrides(algo, hook))
