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

from distml.algorithms._fragments import Fragment
from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import broadcast_module
from distml.comm.buffers import average_buffers
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
    joinable = True       # a replacement joins right after an averaging (is_join_point)

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
        self.peak_sync_bytes = 0
        self.hidden_seconds = self.blocked_seconds = 0.0

    # -- what a variant changes (Streaming DiLoCo: fragments, their schedules, the merge) --

    def split(self, params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
        """The groups of parameter tensors averaged on their own: the whole model, here."""
        return [params]

    def due(self, done: int) -> list[int]:
        """The fragments whose averaging starts after ``done`` steps."""
        return [0] if done <= self.warmup_steps or (done - self.warmup_steps) % self.period == 0 \
            else []

    def merge_step(self, done: int) -> int | None:
        """After how many steps an averaging started after ``done`` steps is merged; None:
        at once (no overlap). Pipelined: when the next averaging starts (Overlap Local-SGD)."""
        if not self.pipeline:
            return None
        nxt = done + 1
        while not self.due(nxt):
            nxt += 1
        return nxt

    def merge(self, x: torch.Tensor, sent_point: torch.Tensor, anchor: torch.Tensor,
              progressed: bool) -> tuple[torch.Tensor, bool]:
        """The parameters after an averaging lands, and whether they are the anchor (the
        same on every rank): the new anchor plus the local progress made since the delta
        was sent (none without overlap: ``x`` is ``sent_point``)."""
        return anchor + (x - sent_point), not progressed

    # -- the mechanism --

    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)
        params = [p for p in model.parameters() if p.requires_grad]
        self.fragments = [Fragment(group, self.outer_spec, self.codec)
                          for group in self.split(params)]
        self.done = 0                                          # steps done (after_step calls)

    def check_config(self, config) -> None:
        # an averaging that lands steps after it started (pipeline, Streaming DiLoCo's
        # overlap) would be half-done on the survivors of a worker loss
        if config.faults.on_worker_loss == "continue" and \
                self.merge_step(self.warmup_steps + 1) is not None:
            name = self.describe()["algorithm"]
            raise ConfigError(f"{name}: an averaging in flight across steps (pipeline = true or "
                              "overlap_steps > 0) cannot continue after a worker loss; turn the "
                              "overlap off or set faults.on_worker_loss = 'stop'")

    def is_join_point(self, done: int, workers: int) -> bool:
        return bool(self.due(done))       # every rank just took part in an averaging

    def is_sync_step(self, step: int) -> bool:
        return bool(self.due(step + 1))

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        if self.transport.world_size == 1:
            return
        self.done = step + 1
        for f in self.fragments:
            f.in_agreement = False                             # this step moved them
        for f in self.fragments:                               # first land what is due ...
            if f.pending is not None and f.merge_at <= self.done:
                self._land(f)
        due = [self.fragments[i] for i in self.due(self.done)]  # ... then start what is due
        if due:
            self._sync(due, self.merge_step(self.done))

    def _sync(self, fragments: list[Fragment], merge_at: int | None, final: bool = False) -> None:
        """Average ``fragments`` (and the buffers): now, or in the background until ``merge_at``.
        ``final``: every rank ends on the new anchor (the end of training)."""
        sent = lambda: self.transport.stats.bytes_sent          # noqa: E731
        if merge_at is None:
            sizes = []
            for f in fragments:
                before = sent()
                sent_point, anchor = f.reduce(self.transport)
                sizes.append(sent() - before)
                x, f.in_agreement = (anchor, True) if final else \
                    self.merge(sent_point, sent_point, anchor, progressed=False)
                f.write(x)
            before = sent()
            average_buffers(self.model, self.transport)
            # each fragment's reduction is one synchronization, counted with the buffers
            # (several fragments at once only in the warm-up and at the end)
            self._count(max(sizes) + sent() - before)
        else:
            before = sent()
            # buffers now: no other collective may run while the reduce is in flight
            average_buffers(self.model, self.transport)
            (f,) = fragments             # the schedules never put two reductions in flight
            f.start(self.transport, self.done, merge_at, sent() - before)
        self.syncs += 1

    def _land(self, f: Fragment) -> None:
        """Finish ``f``'s averaging in flight and merge it into the parameters."""
        sent_point, anchor, pending = f.finish()
        self.hidden_seconds += pending.hidden_seconds
        self.blocked_seconds += pending.blocked_seconds
        x, f.in_agreement = self.merge(f.current(), sent_point, anchor,
                                       progressed=self.done > f.started_at)
        f.write(x)
        self._count(f.extra_bytes + pending.bytes_sent)

    def _count(self, sync_bytes: int) -> None:
        self.peak_sync_bytes = max(self.peak_sync_bytes, int(sync_bytes))

    @torch.no_grad()
    def drain(self) -> None:
        """Merge the averagings in flight (before anything else talks on the group)."""
        for f in self.fragments:
            if f.pending is not None:
                self._land(f)

    @torch.no_grad()
    def on_train_end(self, steps: int) -> None:
        """Finish with one model: merge the averagings in flight, and average once more every
        fragment that moved since its last averaging (local progress would stay on each rank)."""
        self.drain()
        behind = [f for f in self.fragments if not f.in_agreement]
        if self.transport.world_size > 1 and behind:
            self._sync(behind, None, final=True)

    def at_eval(self, step: int) -> dict[str, Any]:
        self.drain()
        return {"syncs": self.syncs, "comm_hidden_seconds": self.hidden_seconds}

    def rank_metrics(self) -> dict[str, Any]:
        return {"syncs": self.syncs, "comm_hidden_seconds": self.hidden_seconds,
                "comm_blocked_seconds": self.blocked_seconds,
                "peak_sync_bytes": self.peak_sync_bytes}

    def summary_extra(self, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """``peak_sync_bytes``: the largest payload one worker handed the transport in one
        averaging (parameters and buffers), over every worker."""
        return {"peak_sync_bytes": max((r.get("peak_sync_bytes", 0) for r in per_rank), default=0)}

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "local_sgd", "period": self.period, "warmup_steps": self.warmup_steps,
                "bmuf": self.bmuf, "outer_optimizer": self.outer_spec, "pipeline": self.pipeline,
                "codec": None if self.codec is None else self.codec.describe(),
                "peak_sync_bytes": self.peak_sync_bytes or None}   # measured while training

    def state_dict(self) -> dict[str, Any]:
        self.drain()
        return {"fragments": [f.state_dict() for f in self.fragments], "syncs": self.syncs,
                "peak_sync_bytes": self.peak_sync_bytes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "fragments" not in state:
            raise ConfigError("this local_sgd checkpoint predates fragments (Streaming DiLoCo); "
                              "start the run again without --resume")
        saved = state["fragments"]
        if len(saved) != len(self.fragments):
            raise ConfigError(f"the checkpoint has {len(saved)} fragments and this run "
                              f"{len(self.fragments)}; resume with the configuration the "
                              "checkpoint was written with")
        if (saved[0]["outer"] is None) != (self.outer_spec is None):
            raise ConfigError("the checkpoint and this run disagree on the outer optimizer "
                              "(outer_optimizer / bmuf); resume with the configuration the "
                              "checkpoint was written with")
        for f, s in zip(self.fragments, saved):
            f.load_state_dict(s)
        self.syncs, self.peak_sync_bytes = int(state["syncs"]), int(state["peak_sync_bytes"])

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
