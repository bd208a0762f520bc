"""Random block coordinate descent: each step updates one randomly chosen block of coordinates.

Nesterov 2012, "Efficiency of coordinate descent methods on huge-scale optimization
problems" (SIAM J. Optim. 22): pick block ``i`` uniformly, ``w_i ← w_i − lr ∇_i f(w)``.
The coordinates of all parameters, flattened, are cut into ``blocks`` contiguous blocks.
Autograd computes the whole gradient anyway, so the saving of a true coordinate method
is not there for dense models; for separable-in-blocks problems (the feature-split
linear path) the block step is the natural local update.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from distml.optim._flat import flat_grad, flat_params, params_of, set_params
from distml.optim.base import OPTIMIZERS, int_at_least, positive


class RandomCoordinateDescent(torch.optim.Optimizer):
    """Random block coordinate descent; the block sequence is a function of (seed, step).

    Args:
        params: the parameters to optimize.
        lr: step size (> 0); for block-Lipschitz constant L_i, <= 1/L_i converges.
        blocks: number of coordinate blocks (>= 1; 1 is gradient descent).
        seed: seeds the block choice (checkpointable: the step count is in the state).

    Raises:
        ConfigError: a value out of range.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.1, blocks: int = 4, seed: int = 0):
        positive("cd", "lr", lr)
        int_at_least("cd", "blocks", blocks, 1)
        int_at_least("cd", "seed", seed, 0)
        super().__init__(params, dict(lr=lr, blocks=blocks, seed=seed))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        """Update one random block with the gradients in ``p.grad``."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        params = params_of(self)
        st = self.state[params[0]]
        t = st.get("t", 0)
        w, g = flat_params(params), flat_grad(params)
        k = min(group["blocks"], w.numel())
        gen = torch.Generator().manual_seed(group["seed"] * 1_000_003 + t)
        i = int(torch.randint(k, (1,), generator=gen))
        bounds = torch.linspace(0, w.numel(), k + 1).round().long()
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        w[lo:hi] -= group["lr"] * g[lo:hi]
        set_params(params, w)
        st["t"] = t + 1
        return loss


@OPTIMIZERS.register("cd", kind="first-order stochastic (random coordinates)",
                     paper="Nesterov 2012", full_batch=True, needs_closure=False,
                     summary="random block coordinate descent on the full-batch gradient")
def cd(params: Iterable[Any], lr: float = 0.1, blocks: int = 4, seed: int = 0) -> RandomCoordinateDescent:
    """Random block coordinate descent; Nesterov 2012. See :class:`RandomCoordinateDescent`.

    Returns:
        a :class:`RandomCoordinateDescent` optimizer (fed full batches).

    Raises:
        ConfigError: a value out of range.
    """
    return RandomCoordinateDescent(params, lr=lr, blocks=blocks, seed=seed)
