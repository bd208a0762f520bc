"""Keep your own training loop: Horovod's ``DistributedOptimizer`` convention.

``dopt = distml.wrap(model, optimizer, algorithm="sync_sgd")`` returns an optimizer whose
``step()`` runs the algorithm's hooks around yours; start the script with
``distml launch -n N script.py`` (or torchrun).
"""

from __future__ import annotations

import os

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
        if algorithm.prepare_model(model) is not model:
            raise UserError("this algorithm replaces modules (e.g. sync_batchnorm); convert the "
                            "model before building the optimizer and pass the converted model")
        algorithm.setup(model, optimizer, transport)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure=None):
        """Run ``after_backward`` (e.g. average gradients), the optimizer step, then ``after_step``."""
        if closure is not None:
            raise UserError("DistributedOptimizer.step() takes no closure; call backward first")
        self.algorithm.after_backward(self._step)
        out = self.optimizer.step()
        self.algorithm.after_step(self._step)
        self._step += 1
        return out

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
    if algo.owns_loop:
        raise UserError(f"algorithm {type(algo).__name__} runs its own loop and cannot wrap a "
                        "user optimizer; use distml.run instead")
    return DistributedOptimizer(model, optimizer, algo, transport or Transport.joined() or init())
