"""Layer-wise model parallelism: pipeline stages with micro-batches (GPipe, 1F1B).

Huang et al. 2019, "GPipe" (all forwards, then all backwards) and Narayanan et al.
2019, "PipeDream" (1F1B: one forward, one backward in the steady state, so at most K
micro-batches are in flight). The layers of an ``nn.Sequential``-like model are cut
into K contiguous stages (one per rank) balanced by parameter count or by measured
time (``balance = "time"``: each layer's forward + backward timed on one micro-batch of
the first batch, by rank 0, broadcast so every rank cuts alike); each global batch
is cut into M micro-batches; torch.distributed.pipelining runs the schedule over the
Transport's process group. The communicated content is activations (forward) and
their gradients (backward). Every send and receive the schedule posts is counted on
the transport as op ``pipeline_p2p`` from the point-to-point operations themselves
(:func:`counted_stage`: the stage's ``get_*_ops`` return them), and the schedule's
time outside this stage's forward, backward and loss (posting, waiting for the
neighbouring stages, their bubbles) is booked as that op's communication time. Only
torch's one-off warm-up vote (two 4-byte tensors per neighbour at the first step)
is not counted. Gradients are averaged over micro-batches, so a step equals the
single-process step on the whole batch.

Tied weights across stages (``transformer_lm``'s token embedding, which is also its
output layer: first stage and last stage hold one copy each) are kept tied as in
Megatron-LM (Shoeybi et al. 2019): after each step's backward, the stages that hold a
copy sum its gradients (an all-reduce on the transport, op ``all_reduce``), so every
copy takes the same update as the single tied weight would. BatchNorm statistics and
other buffers live on the stage that owns their layer and are gathered with the
parameters at every evaluation, so the evaluated and saved model is the trained one.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Any

import torch
from torch import nn

from distml.algorithms._sequential import flat, sequential_of, unflat
from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.transport import is_send
from distml.errors import ConfigError
from distml.optim import build_optimizer, build_schedule, needs_closure
from distml.partition import PARTITIONS, make_loader
from distml.partition.blocks import balance as balance_blocks
from distml.partition.steps import batches, total_steps
from distml.registry import split_spec

#: the transport counter of the pipeline stages' sends and receives
P2P_OP = "pipeline_p2p"


def counted_stage(stats, *args, **kwargs):
    """A ``torch.distributed.pipelining.PipelineStage`` that accounts for its traffic.

    The schedule asks the stage for the point-to-point operations of each micro-batch
    (``get_fwd_recv_ops`` and the three others) and posts exactly those, so their
    tensors' sizes are the bytes on the wire: each is recorded in ``stats`` as
    :data:`P2P_OP` (sent for an ``isend``, received for an ``irecv``). The stage also
    adds up the seconds of its own forward, backward and loss (``compute_seconds``), so
    the step can book the rest of the schedule's time as communication.
    """
    from torch.distributed.pipelining import PipelineStage

    class CountedStage(PipelineStage):
        compute_seconds = 0.0

        def _count(self, ops):
            for op in ops:
                n = op.tensor.numel() * op.tensor.element_size()
                sent = is_send(op)
                stats.record(P2P_OP, n if sent else 0, 0 if sent else n)
            return ops

        def _computing(self, fn, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.compute_seconds += time.perf_counter() - t0

        def timed(self, loss_fn):
            """``loss_fn`` with its seconds counted as this stage's compute."""
            return lambda *a, **kw: self._computing(loss_fn, *a, **kw)

        def get_fwd_recv_ops(self, chunk):
            return self._count(super().get_fwd_recv_ops(chunk))

        def get_fwd_send_ops(self, chunk):
            return self._count(super().get_fwd_send_ops(chunk))

        def get_bwd_recv_ops(self, chunk):
            return self._count(super().get_bwd_recv_ops(chunk))

        def get_bwd_send_ops(self, chunk):
            return self._count(super().get_bwd_send_ops(chunk))

        def forward_one_chunk(self, *a, **kw):
            return self._computing(super().forward_one_chunk, *a, **kw)

        def backward_one_chunk(self, *a, **kw):
            return self._computing(super().backward_one_chunk, *a, **kw)

        def backward_weight_one_chunk(self, *a, **kw):
            return self._computing(super().backward_weight_one_chunk, *a, **kw)

    return CountedStage(*args, **kwargs)


SCHEDULES = ("gpipe", "1f1b")
BALANCES = ("params", "time")


def balance(weights: list[float], k: int) -> list[int]:
    """Cut ``weights`` (one per layer) into ``k`` stages: :func:`distml.partition.blocks.balance`.

    Raises:
        ConfigError: fewer layers than stages.
    """
    if len(weights) < k:
        raise ConfigError(f"pipeline: {len(weights)} layers cannot make {k} stages; use at most "
                          f"{len(weights)} workers")
    return balance_blocks(weights, k)


def layer_times(layers: list[nn.Module], x: torch.Tensor, repeats: int = 5) -> list[float]:
    """Median seconds of each layer's forward + backward on the input ``x`` (a micro-batch).

    The layers run in sequence (layer i gets layer i−1's output as an input that requires
    grad, so its backward includes the input gradient a pipeline stage sends); each is
    timed ``repeats`` times after one warm-up. The timing runs on copies of the layers
    with the RNG state restored afterwards, so parameters, gradients, buffers (e.g.
    batch-norm statistics) and random streams are left as they were.
    """
    out: list[float] = []
    a = x.detach()
    with torch.random.fork_rng(devices=[]):
        for layer in layers:
            m = copy.deepcopy(layer)
            inp = a.detach().requires_grad_(a.is_floating_point())
            runs = []
            for r in range(repeats + 1):
                t0 = time.perf_counter()
                y = m(inp)
                if y.requires_grad:
                    y.backward(torch.ones_like(y))
                if r:                            # the first run is a warm-up
                    runs.append(time.perf_counter() - t0)
            out.append(statistics.median(runs))
            a = y.detach()
    return out


@ALGORITHMS.register("pipeline", topology="dataflow (pipeline stages, p2p)", pace="bsp",
                     paper="Huang et al. 2019 (GPipe); Narayanan et al. 2019 (PipeDream 1F1B)",
                     summary="layer-wise model parallelism: stages balanced by parameters "
                             "or measured time, micro-batches, GPipe or 1F1B schedule")
class Pipeline(Algorithm):
    """Pipeline parallelism with one stage per worker.

    Args:
        schedule: "gpipe" or "1f1b".
        microbatches: M, micro-batches per batch (>= 1; must divide data.batch_size).
        balance: "params" (equalise parameter counts) or "time" (equalise each stage's
            forward + backward time, measured per layer on one micro-batch by rank 0).

    Raises:
        ConfigError: an unknown schedule or balance, or microbatches < 1.
    """

    owns_loop = True
    mid_run_checkpoints = False     # run_steps: a restart starts over from step 0

    buffers = "owner"
    supports = Supports(wrap=False, precisions=("fp32",), models="sequential")

    def __init__(self, schedule: str = "gpipe", microbatches: int = 4, balance: str = "params"):
        if schedule not in SCHEDULES:
            raise ConfigError(f"pipeline: schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
        if isinstance(microbatches, bool) or not isinstance(microbatches, int) or microbatches < 1:
            raise ConfigError(f"pipeline: microbatches must be an int >= 1, got {microbatches!r}")
        if balance not in BALANCES:
            raise ConfigError(f"pipeline: balance must be one of {', '.join(BALANCES)}, got {balance!r}")
        self.schedule_name, self.microbatches, self.balance = schedule, microbatches, balance
        self.bounds: list[int] | None = None
        self.tied: list[nn.Parameter] = []      # weights held by several stages (run() sets)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        sequential_of("pipeline", model)
        return model

    def check_config(self, config) -> None:
        """Refuse closure optimizers, batch sizes the micro-batches do not divide, and 1F1B
        with fewer micro-batches than stages."""
        if needs_closure(split_spec(config.optim.spec(), "optimizer")[0]):
            raise ConfigError("pipeline: the optimizer must not need a closure (e.g. not lbfgs)")
        if self.schedule_name == "1f1b" and self.microbatches < config.workers:
            raise ConfigError(f"pipeline: 1f1b needs microbatches >= stages (workers = "
                              f"{config.workers}), got {self.microbatches}; or use schedule 'gpipe'")
        if config.data.batch_size % self.microbatches:
            raise ConfigError(f"pipeline: microbatches ({self.microbatches}) must divide "
                              f"data.batch_size ({config.data.batch_size})")

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "Pipeline", "schedule": self.schedule_name,
                "microbatches": self.microbatches,
                "balance": "parameter count" if self.balance == "params" else "measured time"}

    def run(self, loop):
        from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe

        p, t, cfg = loop.parts, loop.transport, loop.config
        self.check_config(cfg)
        layers = list(sequential_of("pipeline", p.model))
        k = t.world_size
        if self.balance == "time":
            self.bounds = balance(self._measured_times(loop, layers), k)
        else:
            self.bounds = balance([sum(q.numel() for q in m.parameters()) for m in layers], k)
        self.layers = layers
        lo, hi = self.bounds[t.rank], self.bounds[t.rank + 1]
        stage_mod = nn.Sequential(*layers[lo:hi])    # shares the layers with p.model
        self.tied = shared_parameters(layers, self.bounds)
        mine = {id(q) for q in stage_mod.parameters()}
        order = make_loader(p.source, PARTITIONS.build(cfg.data.partition), 0, 1,
                            cfg.data.batch_size, cfg.seed, samples_per_epoch=cfg.data.samples_per_epoch)
        first_x, _ = next(iter(order.batches(0)))
        micro = loop.to_device(first_x[: cfg.data.batch_size // self.microbatches])
        inp, out = stage_io(layers, self.bounds, micro)[t.rank]
        # static shapes: without them torch infers them by running every stage once more
        # in training mode, which would update BatchNorm statistics with a fake batch
        stage = counted_stage(t.stats, stage_mod, t.rank, k, torch.device(loop.device),
                              input_args=inp, output_args=out, group=t.group)
        kind = ScheduleGPipe if self.schedule_name == "gpipe" else Schedule1F1B
        sched = kind(stage, self.microbatches, loss_fn=stage.timed(p.loss_fn))
        opt = build_optimizer(cfg.optim.spec(), stage_mod.parameters())
        spe = order.steps_per_epoch
        total = total_steps(cfg.train.epochs, spe, cfg.train.max_steps)
        lr_sched = build_schedule(cfg.optim.schedule, opt, total)
        it = batches(order, spe, total)
        last = k - 1

        def step(s: int) -> float:
            _, x, y = next(it)
            opt.zero_grad(set_to_none=True)
            losses: list[torch.Tensor] = []
            started, computed = time.perf_counter(), stage.compute_seconds
            if t.rank == 0:
                sched.step(loop.to_device(x), target=loop.to_device(y) if k == 1 else None,
                           losses=losses if k == 1 else None)
            elif t.rank == last:
                sched.step(target=loop.to_device(y), losses=losses)
            else:
                sched.step()
            if k > 1:     # the schedule's time beyond this stage's own arithmetic
                outside = time.perf_counter() - started - (stage.compute_seconds - computed)
                t.stats.record(P2P_OP, seconds=max(outside, 0.0), calls=0)
            self._sum_tied_grads(mine)
            opt.step()
            lr_sched.step()
            # the loss lives on the last stage; every rank logs it
            loss = torch.tensor([float(torch.stack(losses).detach().mean()) if t.rank == last else 0.0],
                                dtype=torch.float64)
            return float(t.broadcast(loss, src=last)[0])

        return loop.run_steps(step, total, steps_per_epoch=spe)

    def _measured_times(self, loop, layers: list[nn.Module]) -> list[float]:
        """Per-layer forward + backward seconds on one micro-batch of the first batch, timed
        by rank 0 and broadcast (every rank must cut the model at the same places)."""
        t, cfg = loop.transport, loop.config
        times = torch.zeros(len(layers), dtype=torch.float64)
        if t.rank == 0:
            first = make_loader(loop.parts.source, PARTITIONS.build(cfg.data.partition), 0, 1,
                                cfg.data.batch_size, cfg.seed,
                                samples_per_epoch=cfg.data.samples_per_epoch)
            x, _ = next(iter(first.batches(0)))
            x = loop.to_device(x[: cfg.data.batch_size // self.microbatches])
            times = torch.tensor(layer_times(layers, x), dtype=torch.float64)
        self.layer_seconds = [float(v) for v in t.broadcast(times, src=0)]
        return self.layer_seconds

    def _sum_tied_grads(self, mine: set[int]) -> None:
        """Sum the gradients of the copies of a weight that several stages hold (every rank
        joins the all-reduce; a rank without a copy adds zeros)."""
        t = self.transport
        for q in self.tied:
            held = id(q) in mine and q.grad is not None
            g = t.all_reduce(q.grad if held else torch.zeros_like(q))
            if id(q) in mine:
                q.grad = g

    def at_eval(self, step: int) -> dict[str, Any]:
        """Every rank gets every stage's parameters and buffers (rank 0 evaluates and saves
        the model; buffers such as BatchNorm statistics travel as floats and are cast back)."""
        t = self.transport
        stages = [[q for m in self.layers[a:b] for q in (*m.parameters(), *m.buffers())]
                  for a, b in zip(self.bounds, self.bounds[1:])]
        width = max(max(sum(q.numel() for q in s) for s in stages), 1)
        dtype = next(self.model.parameters()).dtype
        got = t.all_gather(flat(stages[t.rank], width, dtype))
        for r, s in enumerate(stages):
            if r != t.rank:
                unflat(got[r], s)
        return {}


def stage_io(layers: list[nn.Module], bounds: list[int],
             micro: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each stage's (input, output) example tensors for one micro-batch ``micro``.

    The shapes come from a forward of copies of the layers on the meta device (no
    arithmetic, the real layers and their buffers untouched); the examples are empty
    tensors on ``micro``'s device, floating ones (activations) requiring grad.
    """
    shadow = [copy.deepcopy(m).to("meta") for m in layers]    # one real copy at a time
    a = micro.to("meta")
    shapes = []
    with torch.no_grad():
        for lo, hi in zip(bounds, bounds[1:]):
            first = a
            for m in shadow[lo:hi]:
                a = m(a)
            shapes.append((first, a))

    def example(meta: torch.Tensor) -> torch.Tensor:
        e = torch.empty(meta.shape, dtype=meta.dtype, device=micro.device)
        return e.requires_grad_(e.is_floating_point())

    return [(micro if i == 0 else example(x), example(y)) for i, (x, y) in enumerate(shapes)]


def shared_parameters(layers: list[nn.Module], bounds: list[int]) -> list[nn.Parameter]:
    """The parameters that more than one stage holds (tied weights), in model order."""
    seen: dict[int, tuple[nn.Parameter, set[int]]] = {}
    for stage, (a, b) in enumerate(zip(bounds, bounds[1:])):
        for m in layers[a:b]:
            for q in m.parameters():
                seen.setdefault(id(q), (q, set()))[1].add(stage)
    return [q for q, stages in seen.values() if len(stages) > 1]
