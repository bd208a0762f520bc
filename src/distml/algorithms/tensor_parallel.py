"""Width-split model parallelism: column/row tensor-parallel MLP blocks (Megatron-LM style).

Shoeybi et al. 2019, "Megatron-LM": in a block ``Linear(a→h) → activation → Linear(h→b)``
the first weight is split by output columns (each rank computes h/K hidden units from
the replicated input, no communication) and the second by input rows (each rank's
partial output is summed by one all-reduce) — one all-reduce forward, one backward
(for the block's input gradient). Built with torch.distributed.tensor.parallel
(``ColwiseParallel`` / ``RowwiseParallel`` over a DeviceMesh of the Transport's ranks);
Linear layers not in a pair stay replicated (every rank computes them identically).
A transformer (``transformer_lm``, or any model with a ``tp_plan(degree)`` method) is
split the same way per block: q, k, v and the MLP's first Linear by columns — whole
attention heads per rank — and the attention output and the MLP's second Linear by
rows; embeddings, LayerNorms and the tied head stay replicated. Every rank reads the
same batch. The collectives are torch's (DTensor); the training step runs inside
:class:`CountedCollectives`, which counts each of them on the
transport as op ``tensor_parallel`` with its time as communication (forward: the
row-parallel outputs' all-reduces; backward: the column-parallel inputs' gradients,
where the input needs one).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from distml.algorithms._sequential import sequential_of
from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buffers import copy_buffers
from distml.comm.transport import nbytes
from distml.errors import ConfigError
from distml.optim import build_optimizer, build_schedule, needs_closure
from distml.partition import PARTITIONS, make_loader
from distml.partition.steps import batches, total_steps
from distml.registry import split_spec


def linear_pairs(seq: nn.Sequential) -> list[tuple[str, str]]:
    """Names of consecutive Linear layers paired into (column, row) blocks, in order."""
    names = [n for n, m in seq.named_children() if isinstance(m, nn.Linear)]
    return [(names[i], names[i + 1]) for i in range(0, len(names) - 1, 2)]


def tp_plan(model: nn.Module, degree: int) -> tuple[nn.Module, dict[str, str]]:
    """Where to split ``model`` over ``degree`` ranks: ``(root, {path: "colwise" | "rowwise"})``.

    A model that offers ``tp_plan(degree)`` (e.g. ``transformer_lm``: q/k/v and the MLP's
    first Linear by columns, the attention output and the MLP's second by rows) gives
    its own plan, paths relative to itself; any other model must be a Sequential whose
    consecutive Linear layers pair into column/row blocks.

    Raises:
        ConfigError: no plan fits, or a split width not divisible by ``degree``.
    """
    own = getattr(model, "tp_plan", None)
    if callable(own):
        plan = own(degree)
        if not plan:
            raise ConfigError(f"tensor_parallel: {type(model).__name__}.tp_plan() split nothing")
        return model, plan
    seq = sequential_of("tensor_parallel", model)
    pairs = linear_pairs(seq)
    if not pairs:
        raise ConfigError("tensor_parallel needs at least two Linear layers in the model's "
                          "sequence (e.g. mlp with a hidden layer), or a model with a tp_plan() "
                          "(e.g. transformer_lm)")
    plan = {}
    for col, row in pairs:
        h = getattr(seq, col).out_features
        if h % degree:
            raise ConfigError(f"tensor_parallel: hidden width {h} of layer {col} must be "
                              f"divisible by the {degree} workers")
        plan[col], plan[row] = "colwise", "rowwise"
    return seq, plan


_FUNCOL = torch.ops._c10d_functional


class CountedCollectives(TorchDispatchMode):
    """Count the functional collectives run inside the ``with`` block on ``stats`` as ``op``.

    Bytes follow the transport's convention (docs/design.md §5): an all-reduce sends and
    receives its input; an all-gather sends its shard and receives the others'
    (``world - 1`` shards); a reduce-scatter sends its input and receives one
    ``1/world`` share; an all-to-all sends and receives its input. Time is the time
    inside the collective calls and inside the waits on their results
    (``wait_tensor``): with gloo the collective runs on a background thread and the wait
    is where the step blocks on it.

    DTensor lowers a sharded layer's redistributions to these ops, so a mode entered
    around the training step sees every byte tensor parallelism moves, forward and
    backward (dispatch modes follow the autograd engine into the backward pass). Build
    one per run and enter it at every step.
    """

    def __init__(self, stats, op: str, world_size: int):
        from torch.distributed.tensor import DTensor   # half a second: only where it is used

        super().__init__()
        self.stats, self.op, self._dtensor = stats, op, DTensor
        w = world_size           # (sent, received) for an input of n bytes
        self._sizes = {
            _FUNCOL.all_reduce.default: lambda n: (n, n),
            _FUNCOL.all_reduce_.default: lambda n: (n, n),
            _FUNCOL.all_gather_into_tensor.default: lambda n: (n, n * (w - 1)),
            _FUNCOL.reduce_scatter_tensor.default: lambda n: (n, n // w),
            _FUNCOL.all_to_all_single.default: lambda n: (n, n),
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._dtensor in types:
            # let DTensor lower the op first (a mode runs before tensor subclasses); the
            # collectives it lowers to come back through this mode
            return NotImplemented
        size = self._sizes.get(func)
        if size is None and func is not _FUNCOL.wait_tensor.default:
            return func(*args, **kwargs)
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        sent, received = size(nbytes(args[0])) if size is not None else (0, 0)
        self.stats.record(self.op, sent, received, time.perf_counter() - t0,
                          calls=1 if size is not None else 0)
        return out


@ALGORITHMS.register("tensor_parallel", topology="collective (all-reduce of activations)",
                     pace="bsp", paper="Shoeybi et al. 2019 (Megatron-LM)",
                     summary="width-split MLP blocks and transformer heads: column- then "
                             "row-parallel Linear pairs (torch.distributed.tensor.parallel)")
class TensorParallel(Algorithm):
    """Column/row tensor parallelism over all workers (one replica of the model)."""

    owns_loop = True
    mid_run_checkpoints = False     # run_steps: a restart starts over from step 0

    buffers = "owner"
    supports = Supports(wrap=False, precisions=("fp32",), models="sequential")

    def __init__(self):
        self.plain: nn.Module | None = None
        self.degree = 1                 # the TP degree (= workers), known once check_config ran

    def check_config(self, config) -> None:
        """Refuse optimizers that need a closure (before any process starts)."""
        if needs_closure(split_spec(config.optim.spec(), "optimizer")[0]):
            raise ConfigError("tensor_parallel: the optimizer must not need a closure (e.g. not lbfgs)")
        self.degree = config.workers

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Refuse a model no plan splits over the workers (runs after :meth:`check_config`)."""
        tp_plan(model, self.degree)
        return model

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "TensorParallel", "style": "column then row parallel Linear pairs"}

    def run(self, loop):
        from torch.distributed.device_mesh import DeviceMesh
        from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                       parallelize_module)

        p, t, cfg = loop.parts, loop.transport, loop.config
        root, plan = tp_plan(p.model, t.world_size)
        self.plain = copy.deepcopy(p.model)          # the evaluated / saved full model
        device = torch.device(loop.device)
        if t.group is None:
            mesh = DeviceMesh(device.type, list(range(t.world_size)))
        else:
            mesh = DeviceMesh.from_group(t.group, device.type)
        styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
        parallelize_module(root, mesh, {path: styles[style]() for path, style in plan.items()})
        self.tp_model = p.model
        opt = build_optimizer(cfg.optim.spec(), p.model.parameters())
        order = make_loader(p.source, PARTITIONS.build(cfg.data.partition), 0, 1,
                            cfg.data.batch_size, cfg.seed, samples_per_epoch=cfg.data.samples_per_epoch)
        spe = 1 if p.full_batch else order.steps_per_epoch
        total = total_steps(cfg.train.epochs, spe, cfg.train.max_steps)
        lr_sched = build_schedule(cfg.optim.schedule, opt, total)
        it = batches(order, spe, total, full_batch=p.full_batch)

        counted = CountedCollectives(t.stats, "tensor_parallel", t.world_size)

        def step(s: int) -> float:
            _, x, y = next(it)
            opt.zero_grad(set_to_none=True)
            with counted:
                loss = p.loss_fn(p.model(loop.to_device(x)), loop.to_device(y))
                loss.backward()
            opt.step()
            lr_sched.step()
            return float(loss.detach())

        return loop.run_steps(step, total, steps_per_epoch=spe)

    @torch.no_grad()
    def at_eval(self, step: int) -> dict[str, Any]:
        """Assemble full weights from the shards into the plain copy (a collective).

        Buffers (BatchNorm statistics) are replicated — every rank computes the
        unsplit layers on the same batch — so rank 0's are copied as they are.
        """
        full = dict(self.plain.named_parameters())
        for name, q in self.tp_model.named_parameters():
            v = q.full_tensor() if hasattr(q, "full_tensor") else q
            full[name].copy_(v.detach())
        copy_buffers(self.tp_model, self.plain)   # replicated layers: every rank's are equal
        return {}

    def eval_model(self) -> nn.Module:
        return self.plain if self.plain is not None else self.model
