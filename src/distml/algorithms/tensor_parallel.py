"""Width-split model parallelism: column/row tensor-parallel MLP blocks (Megatron-LM style).

Shoeybi et al. 2019, "Megatron-LM": in a block ``Linear(a→h) → activation → Linear(h→b)``
the first weight is split by output columns (each rank computes h/K hidden units from
the replicated input, no communication) and the second by input rows (each rank's
partial output is summed by one all-reduce) — one all-reduce forward, one backward
(for the block's input gradient). Built with torch.distributed.tensor.parallel
(``ColwiseParallel`` / ``RowwiseParallel`` over a DeviceMesh of the Transport's ranks);
Linear layers not in a pair stay replicated (every rank computes them identically).
Every rank reads the same batch. The collectives are torch's (DTensor); their payload
is counted on the transport as op ``tensor_parallel`` (the row-parallel outputs, and
the block inputs' gradients where the input needs one).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distml.algorithms._sequential import sequential_of
from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buffers import copy_buffers
from distml.errors import ConfigError
from distml.optim import build_optimizer, build_schedule, needs_closure
from distml.partition import PARTITIONS, make_loader
from distml.partition.steps import batches, total_steps
from distml.registry import split_spec


def linear_pairs(seq: nn.Sequential) -> list[tuple[str, str]]:
    """Names of consecutive Linear layers paired into (column, row) blocks, in order."""
    names = [n for n, m in seq.named_children() if isinstance(m, nn.Linear)]
    return [(names[i], names[i + 1]) for i in range(0, len(names) - 1, 2)]


@ALGORITHMS.register("tensor_parallel", topology="collective (all-reduce of activations)",
                     pace="bsp", paper="Shoeybi et al. 2019 (Megatron-LM)",
                     summary="width-split MLP blocks: column- then row-parallel Linear pairs "
                             "(torch.distributed.tensor.parallel)")
class TensorParallel(Algorithm):
    """Column/row tensor parallelism over all workers (one replica of the model)."""

    owns_loop = True
    mid_run_checkpoints = False     # run_steps: a restart starts over from step 0

    buffers = "owner"
    supports = Supports(wrap=False, precisions=("fp32",), models="sequential")

    def __init__(self):
        self.plain: nn.Module | None = None

    def check_config(self, config) -> None:
        """Refuse optimizers that need a closure (before any process starts)."""
        if needs_closure(split_spec(config.optim.spec(), "optimizer")[0]):
            raise ConfigError("tensor_parallel: the optimizer must not need a closure (e.g. not lbfgs)")

    def prepare_model(self, model: nn.Module) -> nn.Module:
        if not linear_pairs(sequential_of("tensor_parallel", model)):
            raise ConfigError("tensor_parallel needs at least two Linear layers in the model's "
                              "sequence (e.g. mlp with a hidden layer)")
        return model

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "TensorParallel", "style": "column then row parallel Linear pairs"}

    def run(self, loop):
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)

        p, t, cfg = loop.parts, loop.transport, loop.config
        seq = sequential_of("tensor_parallel", p.model)
        pairs = linear_pairs(seq)
        for col, row in pairs:
            h = getattr(seq, col).out_features
            if h % t.world_size:
                raise ConfigError(f"tensor_parallel: hidden width {h} of layer {col} must be "
                                  f"divisible by the {t.world_size} workers")
        self.plain = copy.deepcopy(p.model)          # the evaluated / saved full model
        device = torch.device(loop.device)
        if t.group is None:
            mesh = DeviceMesh(device.type, list(range(t.world_size)))
        else:
            mesh = DeviceMesh.from_group(t.group, device.type)
        plan = {}
        for col, row in pairs:
            plan[col], plan[row] = ColwiseParallel(), RowwiseParallel()
            self._count_bytes(getattr(seq, col), getattr(seq, row))
        parallelize_module(seq, mesh, plan)
        self.tp_model = p.model
        opt = build_optimizer(cfg.optim.spec(), p.model.parameters())
        order = make_loader(p.source, PARTITIONS.build(cfg.data.partition), 0, 1,
                            cfg.data.batch_size, cfg.seed, samples_per_epoch=cfg.data.samples_per_epoch)
        spe = 1 if p.full_batch else order.steps_per_epoch
        total = total_steps(cfg.train.epochs, spe, cfg.train.max_steps)
        lr_sched = build_schedule(cfg.optim.schedule, opt, total)
        it = batches(order, spe, total, full_batch=p.full_batch)

        def step(s: int) -> float:
            _, x, y = next(it)
            opt.zero_grad(set_to_none=True)
            loss = p.loss_fn(p.model(loop.to_device(x)), loop.to_device(y))
            loss.backward()
            opt.step()
            lr_sched.step()
            return float(loss.detach())

        return loop.run_steps(step, total, steps_per_epoch=spe)

    def _count_bytes(self, col: nn.Module, row: nn.Module) -> None:
        stats = self.transport.stats

        def row_out(_m, _inp, out):          # the forward all-reduce of partial outputs
            n = out.numel() * out.element_size()
            stats.record("tensor_parallel", n, n, 0.0)

        def col_in(_m, inp):                 # the backward all-reduce of the input gradient
            if inp[0].requires_grad:
                n = inp[0].numel() * inp[0].element_size()
                stats.record("tensor_parallel", n, n, 0.0)

        row.register_forward_hook(row_out)
        col.register_forward_pre_hook(col_in)

    @torch.no_grad()
    def at_eval(self, step: int) -> dict[str, Any]:
        """Assemble full weights from the shards into the plain copy (a collective)."""
        full = dict(self.plain.named_parameters())
        for name, q in self.tp_model.named_parameters():
            v = q.full_tensor() if hasattr(q, "full_tensor") else q
            full[name].copy_(v.detach())
        copy_buffers(self.tp_model, self.plain)   # replicated layers: every rank's are equal
        return {}

    def eval_model(self) -> nn.Module:
        return self.plain if self.plain is not None else self.model
