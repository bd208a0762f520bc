"""Local SGD / periodic model averaging, with post-local warm-up, outer optimizers
(DiLoCo, BMUF) and pipelining.

References: Stich 2019 ("Local SGD Converges Fast and Communicates Little"); Lin et al.
2020 ("Don't Use Large Mini-Batches, Use Local SGD": post-local SGD, i.e. average every
step first, then every H steps); Chen & Huo 2016 (BMUF: block momentum on the averaged
update); Douillard et al. 2023 ("DiLoCo: Distributed Low-Communication Training of
Language Models": inner AdamW, outer Nesterov SGD on the averaged pseudo-gradient);
Wang et al. 2020 ("Overlap Local-SGD": round t's averaging runs while round t+1
computes, and its result is merged one round late).

Each worker runs H optimizer steps on its own, then the workers average their model
*deltas* since the last agreed model (the anchor) through the run's codec. The anchor
then moves by the mean delta, or — with an *outer optimizer* — takes one step of any
registered optimizer whose gradient is the pseudo-gradient ``anchor − mean(θ_i)``
(minus the mean delta). BMUF is that mechanism with Nesterov SGD (lr ζ, momentum η):
torch's Nesterov form keeps its parameter at the look-ahead point ``W + ηΔ`` where BMUF
starts each block, so the two give the same anchors (tested).
"""

from __future__ import annotations

from typing import Any

import torch

from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import broadcast_module, flatten, unflatten_into
from distml.comm.buffers import average_buffers
from distml.comm.compress import init_state, reduce_mean, start_reduce
from distml.errors import ConfigError
from distml.optim import build_optimizer, needs_closure
from distml.registry import split_spec


@ALGORITHMS.register("local_sgd", topology="collective", pace="bsp every H",
                     paper="Stich 2019; Lin et al. 2020 (post-local SGD); Chen & Huo 2016 (BMUF); "
                           "Douillard et al. 2023 (DiLoCo); Wang et al. 2020 (Overlap Local-SGD)",
                     summary="average model deltas every H local steps (warm-up, outer optimizer, BMUF, "
                             "pipelining, codecs)")
class LocalSGD(Algorithm):
    """Average the workers' models every ``period`` local steps (buffers too: BatchNorm
    statistics are averaged at every averaging).

    Args:
        period: H, the local steps between averagings (≥ 1; 1 = average every step).
        warmup_steps: average after every step for the first ``warmup_steps`` steps, then
            every H (post-local SGD switches at, e.g., the first learning-rate decay).
        outer_optimizer: an optimizer spec (``"name"`` or ``{name = ..., lr = ...}``, any
            registered optimizer) stepped on the pseudo-gradient ``anchor − mean(θ_i)`` at
            every averaging; the new anchor is its result. None: the anchor moves by the
            mean delta (outer SGD with lr 1). DiLoCo: ``{name = "sgd", lr = 0.7,
            momentum = 0.9, nesterov = true}`` with AdamW as ``[optim]``.
        bmuf: BMUF (block momentum), a preset of the outer optimizer: Nesterov SGD with
            ``lr = block_lr`` and ``momentum = block_momentum`` (plain momentum without
            ``nesterov``).
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
    elastic = True        # a lost worker: the survivors average among themselves (regroup)

    def __init__(self, period: int = 8, warmup_steps: int = 0, outer_optimizer=None,
                 bmuf: bool = False, block_momentum: float = 0.9, block_lr: float = 1.0,
                 nesterov: bool = True, pipeline: bool = False, codec=None):
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
        if self.bmuf and outer_optimizer is not None:
            raise ConfigError("local_sgd: bmuf = true is a preset of outer_optimizer; give one of "
                              "them, not both")
        if self.bmuf:
            outer_optimizer = {"name": "sgd", "lr": self.block_lr, "momentum": self.block_momentum,
                               "nesterov": self.nesterov and self.block_momentum > 0}
        self.outer_spec = outer_optimizer
        if outer_optimizer is not None:      # a bad spec fails here, before any process starts
            build_optimizer(outer_optimizer, [torch.zeros(1, requires_grad=True)])
            if needs_closure(split_spec(outer_optimizer)[0]):
                raise ConfigError("local_sgd: the outer optimizer steps on one pseudo-gradient and "
                                  "cannot re-evaluate a loss; choose one without a closure "
                                  "(sgd, adam, ...)")
        self.codec = codec
        self.syncs = 0
        self._pending = None
        self.hidden_seconds = self.blocked_seconds = 0.0

    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)
        self.params = [p for p in model.parameters() if p.requires_grad]
        # the point every block starts from (deltas are relative to it), and the outer
        # optimizer's own copy of it (its parameter; its state holds e.g. the momentum)
        self.start_from(flatten(self.params))
        self.codec_state = init_state(self.codec, self.anchor, [p.shape for p in self.params])
        self._sent: torch.Tensor | None = None                 # the delta in flight (pipeline)

    def check_config(self, config) -> None:
        if self.pipeline and config.faults.on_worker_loss == "continue":
            raise ConfigError("local_sgd: pipeline = true cannot continue after a worker loss "
                              "(an averaging stays in flight across steps); set pipeline = false "
                              "or faults.on_worker_loss = 'stop'")

    def start_from(self, x: torch.Tensor) -> None:
        """Make ``x`` the anchor (the agreed model) and the outer optimizer's parameter."""
        self.anchor = x.detach().clone()
        self.outer_w = self.outer = None
        if self.outer_spec is not None:
            self.outer_w = torch.nn.Parameter(self.anchor.clone(), requires_grad=False)
            self.outer = build_optimizer(self.outer_spec, [self.outer_w])

    def is_sync_step(self, step: int) -> bool:
        done = step + 1
        return done <= self.warmup_steps or (done - self.warmup_steps) % self.period == 0

    def _target(self, mean: torch.Tensor) -> torch.Tensor:
        """Move the anchor (the next block's start) by the averaged delta and return it.

        With an outer optimizer, one step of it on the pseudo-gradient ``-mean`` (DiLoCo's
        outer step; BMUF's Δ = η Δ + ζ G, W = W + Δ, next block at W + η Δ).
        """
        if self.outer is None:
            self.anchor += mean
            return self.anchor
        self.outer_w.grad = -mean
        self.outer.step()
        self.anchor.copy_(self.outer_w)
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
                "bmuf": self.bmuf, "outer_optimizer": self.outer_spec, "pipeline": self.pipeline,
                "codec": None if self.codec is None else self.codec.describe()}

    def state_dict(self) -> dict[str, Any]:
        self.drain()
        return {"anchor": self.anchor.clone(),
                "outer": None if self.outer is None else {"w": self.outer_w.detach().clone(),
                                                          "optimizer": self.outer.state_dict()},
                "codec_state": self.codec_state, "syncs": self.syncs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "outer" not in state:
            raise ConfigError("this local_sgd checkpoint predates outer optimizers; "
                              "start the run again without --resume")
        if (state["outer"] is None) != (self.outer is None):
            raise ConfigError("the checkpoint and this run disagree on the outer optimizer "
                              "(outer_optimizer / bmuf); resume with the configuration the "
                              "checkpoint was written with")
        self.anchor.copy_(state["anchor"])
        if self.outer is not None:
            self.outer_w.data.copy_(state["outer"]["w"])
            self.outer.load_state_dict(state["outer"]["optimizer"])
        self.codec_state, self.syncs = state["codec_state"], int(state["syncs"])

    def close(self) -> None:
        self.drain()


#: DiLoCo's outer step (Douillard et al. 2023, section 3): Nesterov SGD, lr 0.7, momentum 0.9
DILOCO_OUTER = {"name": "sgd", "lr": 0.7, "momentum": 0.9, "nesterov": True}


@ALGORITHMS.register("diloco", topology="collective", pace="bsp every H",
                     paper="Douillard et al. 2023 (DiLoCo)",
                     summary="local_sgd with H = 50 and an outer Nesterov step on the averaged "
                             "pseudo-gradient (use adamw as [optim])")
class DiLoCo(LocalSGD):
    """DiLoCo (Douillard et al. 2023): ``local_sgd`` with its paper's defaults — H inner
    steps of the run's optimizer (the paper's is AdamW), then an outer Nesterov SGD step
    (lr 0.7, momentum 0.9) on the averaged pseudo-gradient. Same mechanism and arguments
    as :class:`LocalSGD` (``bmuf`` excepted), other defaults.
    """

    def __init__(self, period: int = 50, warmup_steps: int = 0, outer_optimizer=None,
                 pipeline: bool = False, codec=None):
        super().__init__(period=period, warmup_steps=warmup_steps,
                         outer_optimizer=DILOCO_OUTER if outer_optimizer is None else outer_optimizer,
                         pipeline=pipeline, codec=codec)

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "algorithm": "diloco"}
