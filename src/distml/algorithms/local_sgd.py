"""Local SGD / periodic model averaging, with post-local warm-up, BMUF and pipelining.

References: Stich 2019 ("Local SGD Converges Fast and Communicates Little"); Lin et al.
2020 ("Don't Use Large Mini-Batches, Use Local SGD": post-local SGD, i.e. average every
step first, then every H steps); Chen & Huo 2016 (BMUF: block momentum on the averaged
update); Wang et al. 2020 ("Overlap Local-SGD": round t's averaging runs while round
t+1 computes, and its result is merged one round late).

Each worker runs H optimizer steps on its own, then the workers average their model
*deltas* since the last agreed model (the anchor) through the run's codec.
"""

from __future__ import annotations

from typing import Any

import torch

from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import broadcast_module, flatten, unflatten_into
from distml.comm.buffers import average_buffers
from distml.comm.compress import init_state, reduce_mean, start_reduce


@ALGORITHMS.register("local_sgd", topology="collective", pace="bsp every H",
                     paper="Stich 2019; Lin et al. 2020 (post-local SGD); Chen & Huo 2016 (BMUF); "
                           "Wang et al. 2020 (Overlap Local-SGD)",
                     summary="average model deltas every H local steps (warm-up, BMUF, pipelining, codecs)")
class LocalSGD(Algorithm):
    """Average the workers' models every ``period`` local steps (buffers too: BatchNorm
    statistics are averaged at every averaging).

    Args:
        period: H, the local steps between averagings (≥ 1; 1 = average every step).
        warmup_steps: average after every step for the first ``warmup_steps`` steps, then
            every H (post-local SGD switches at, e.g., the first learning-rate decay).
        bmuf: apply block momentum to the averaged delta (BMUF) instead of taking it.
        block_momentum: BMUF's η in [0, 1).
        block_lr: BMUF's ζ > 0 (the step on the averaged delta).
        nesterov: BMUF with Nesterov look-ahead (start each block at w + η·Δ).
        pipeline: overlap each averaging with the next H local steps (two model
            buffers; the result is merged one round late).
        codec: set by distml from ``[comm] codec`` (applied to the model delta).

    Raises:
        ValueError: an argument outside its range.
    """

    buffers = "average"
    supports = Supports(wrap=True, **LOOP_STEP)   # wrap: finish() runs on_train_end

    def __init__(self, period: int = 8, warmup_steps: int = 0, bmuf: bool = False,
                 block_momentum: float = 0.9, block_lr: float = 1.0, nesterov: bool = True,
                 pipeline: bool = False, codec=None):
        if period < 1:
            raise ValueError(f"period must be >= 1, got {period}")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= block_momentum < 1:
            raise ValueError(f"block_momentum must be in [0, 1), got {block_momentum}")
        if not block_lr > 0:
            raise ValueError(f"block_lr must be > 0, got {block_lr}")
        self.period, self.warmup_steps = int(period), int(warmup_steps)
        self.bmuf, self.block_momentum = bool(bmuf), float(block_momentum)
        self.block_lr, self.nesterov, self.pipeline = float(block_lr), bool(nesterov), bool(pipeline)
        self.codec = codec
        self.syncs = 0
        self._pending = None
        self.hidden_seconds = self.blocked_seconds = 0.0

    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # the point every block starts from (deltas are relative to it), BMUF's global
        # model W (without the Nesterov look-ahead) and its block momentum Δ
        self.anchor = flatten(self.params).clone()
        self.block_w = self.anchor.clone()
        self.velocity = torch.zeros_like(self.anchor)
        self.codec_state = init_state(self.codec, self.anchor, [p.shape for p in self.params])
        self._sent: torch.Tensor | None = None                 # the delta in flight (pipeline)

    def is_sync_step(self, step: int) -> bool:
        done = step + 1
        return done <= self.warmup_steps or (done - self.warmup_steps) % self.period == 0

    def _target(self, mean: torch.Tensor) -> torch.Tensor:
        """Move the anchor (the next block's start) by the averaged delta and return it.

        BMUF (Chen & Huo 2016): G = mean delta from the block's start, Δ = η Δ + ζ G,
        W = W + Δ, and the next block starts at W + η Δ (Nesterov) or W.
        """
        if not self.bmuf:
            self.anchor += mean
            return self.anchor
        self.velocity.mul_(self.block_momentum).add_(mean, alpha=self.block_lr)
        self.block_w += self.velocity
        self.anchor.copy_(self.block_w)
        if self.nesterov:
            self.anchor.add_(self.velocity, alpha=self.block_momentum)
        return self.anchor

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self.transport.world_size == 1 or not self.is_sync_step(step):
            return
        x = flatten(self.params)
        if not self.pipeline:
            mean, self.codec_state = reduce_mean(x - self.anchor, self.codec, self.codec_state,
                                                 self.transport)
            unflatten_into(self._target(mean), self.params)
            average_buffers(self.model, self.transport)
        else:
            x = self._merge(x)
            # buffers now: no other collective may run while the reduce is in flight
            average_buffers(self.model, self.transport)
            self._sent = x - self.anchor
            self._pending = start_reduce(self._sent, self.codec, self.codec_state, self.transport)
        self.syncs += 1

    def _merge(self, x: torch.Tensor) -> torch.Tensor:
        """Finish the averaging in flight: swap this worker's sent delta for the mean,
        keeping the local progress made meanwhile."""
        if self._pending is None:
            return x
        mean, self.codec_state = self._pending.wait()
        self.hidden_seconds += self._pending.hidden_seconds
        self.blocked_seconds += self._pending.blocked_seconds
        self._pending = None
        sent_point = self.anchor + self._sent
        x = self._target(mean) + (x - sent_point)
        unflatten_into(x, self.params)
        self._sent = None
        return x

    @torch.no_grad()
    def drain(self) -> None:
        """Merge the averaging in flight (before anything else talks on the group)."""
        if self._pending is not None:
            self._merge(flatten(self.params))

    @torch.no_grad()
    def on_train_end(self, steps: int) -> None:
        """Finish with one model: merge the averaging in flight, and average once more if
        the last step was not an averaging step (local progress would stay on each rank)."""
        self.drain()
        if self.transport.world_size == 1 or steps == 0 or self.is_sync_step(steps - 1):
            return
        x = flatten(self.params)
        mean, self.codec_state = reduce_mean(x - self.anchor, self.codec, self.codec_state,
                                             self.transport)
        unflatten_into(self._target(mean), self.params)
        average_buffers(self.model, self.transport)
        self.syncs += 1

    def at_eval(self, step: int) -> dict[str, Any]:
        self.drain()
        return {"syncs": self.syncs, "comm_hidden_seconds": self.hidden_seconds}

    def rank_metrics(self) -> dict[str, Any]:
        return {"syncs": self.syncs, "comm_hidden_seconds": self.hidden_seconds,
                "comm_blocked_seconds": self.blocked_seconds}

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "local_sgd", "period": self.period, "warmup_steps": self.warmup_steps,
                "bmuf": self.bmuf, "pipeline": self.pipeline,
                "codec": None if self.codec is None else self.codec.describe()}

    def state_dict(self) -> dict[str, Any]:
        self.drain()
        return {"anchor": self.anchor.clone(), "block_w": self.block_w.clone(),
                "velocity": self.velocity.clone(),
                "codec_state": self.codec_state, "syncs": self.syncs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor.copy_(state["anchor"])
        self.block_w.copy_(state["block_w"])
        self.velocity.copy_(state["velocity"])
        self.codec_state, self.syncs = state["codec_state"], int(state["syncs"])

    def close(self) -> None:
        self.drain()
