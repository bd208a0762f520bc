"""Feature-partitioned (model-parallel) linear models: each worker owns a block of columns.

The dimension partition of docs/design.md §2.1 (block coordinate descent as in the dmlc
parameter server, Li et al. 2014; proxCoCoA+, Smith et al. 2015): worker k holds only
the columns ``X[:, J_k]`` of the training set (:class:`~distml.partition.FeatureSplit`)
and the matching block ``W[:, J_k]`` of the weights. Each step the partial margins
``X_k W_kᵀ`` of the batch are summed with one all-reduce — a (batch × outputs) tensor,
never the model — and every worker takes the gradient step of its own block. With an
element-wise optimizer (SGD, Adam, ...) this is exactly the single-process step.

Memory: a worker stores n·d/K feature values and d/K weights; each rank writes
``feature_split-rank{r}.json`` with its columns and bytes.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.errors import ConfigError
from distml.models.layers import linear_layer
from distml.optim import build_optimizer, build_schedule
from distml.partition import PARTITIONS, FeatureSplit, make_loader
from distml.partition.steps import total_steps
from distml.registry import split_spec

#: optimizers whose update of a coordinate depends only on that coordinate's gradient
SEPARABLE = ("sgd", "momentum", "nesterov", "gd", "adam", "adamw", "adagrad", "rmsprop")


@ALGORITHMS.register("feature_split", topology="collective (partial margins)", pace="bsp",
                     paper="Li et al. 2014 (parameter server BCD); Smith et al. 2015 (proxCoCoA+)",
                     summary="model-parallel linear model: column blocks of X and w per worker, "
                             "partial margins all-reduced")
class FeatureSplitLinear(Algorithm):
    """Feature-partitioned training of a linear model (softmax, least_squares, linear_svm).

    Args:
        chunk_rows: rows read at a time while loading the column block (>= 1); only one
            chunk of full rows is ever in memory.

    Raises:
        ConfigError: chunk_rows < 1.
    """

    owns_loop = True
    mid_run_checkpoints = False     # run_steps: a restart starts over from step 0

    supports = Supports(wrap=False, precisions=("fp32",), models="linear")

    def __init__(self, chunk_rows: int = 4096):
        if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
            raise ConfigError(f"feature_split: chunk_rows must be an int >= 1, got {chunk_rows!r}")
        self.chunk_rows = chunk_rows
        self.block: nn.Parameter | None = None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        linear_layer("feature_split", model, tuple(range(1, 1 << 20)))
        return model

    def check_config(self, config) -> None:
        """Refuse optimizers that are not element-wise and online data (before any process starts)."""
        name, _ = split_spec(config.optim.spec(), "optimizer")
        if name not in SEPARABLE:
            raise ConfigError(f"feature_split needs an element-wise optimizer ({', '.join(SEPARABLE)}); "
                              f"got {name!r}")

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "FeatureSplitLinear", "partition": "feature columns (FeatureSplit)",
                "exchanged": "partial margins (batch x outputs) per step"}

    def _load_columns(self, data, cols: slice, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's columns of every training row, read ``chunk_rows`` rows at a time."""
        xs, ys = [], []
        for start in range(0, len(data), self.chunk_rows):
            x, y = data.take(torch.arange(start, min(start + self.chunk_rows, len(data))).numpy())
            xs.append(x.reshape(len(x), -1)[:, cols].to(dtype).clone())
            ys.append(y)
        y = torch.cat(ys)
        return torch.cat(xs), (y.to(dtype) if y.is_floating_point() else y)

    def run(self, loop):
        p, t, cfg = loop.parts, loop.transport, loop.config
        self.check_config(cfg)
        if p.source.online:
            raise ConfigError("feature_split needs a finite data set (an offline source)")
        layer = linear_layer("feature_split", p.model, tuple(range(1, 1 << 20)))
        split = FeatureSplit(layer.in_features, t.world_size)
        cols = split.columns(t.rank)
        data = p.source.train()
        self.x, self.y = self._load_columns(data, cols, loop.dtype)
        # every rank walks the same sample order: the partition as seen by a single worker
        order = make_loader(p.source, PARTITIONS.build(cfg.data.partition), 0, 1,
                            cfg.data.batch_size, cfg.seed)
        self.split, self.layer = split, layer
        self.block = nn.Parameter(layer.weight.detach()[:, cols].clone())
        params = [self.block]
        self.bias = None
        if layer.bias is not None and t.rank == 0:      # the intercept lives on rank 0
            self.bias = nn.Parameter(layer.bias.detach().clone())
            params.append(self.bias)
        opt = build_optimizer(cfg.optim.spec(), params)
        full = p.full_batch
        spe = 1 if full else order.steps_per_epoch
        total = total_steps(cfg.train.epochs, spe, cfg.train.max_steps)
        sched = build_schedule(cfg.optim.schedule, opt, total)
        self._write_memory(loop, cols)

        # full batch: the partition's whole order, as ShardLoader.full_batch reads it
        all_rows = torch.from_numpy(order.partition.indices(len(data), 0, 1, 0, cfg.seed, data.labels))

        def step(s: int) -> float:
            epoch, off = divmod(s, spe)
            if full:
                rows = all_rows
            else:
                b = order.batch_size
                rows = torch.from_numpy(order.indices(epoch)[off * b:(off + 1) * b])
            x, y = self.x[rows], self.y[rows]
            opt.zero_grad(set_to_none=True)
            part = x @ self.block.T
            if self.bias is not None:
                part = part + self.bias
            total_margin = t.all_reduce(part.detach().clone())
            # the sum is the full model's output; the gradient flows into our block only
            out = total_margin - part.detach() + part
            loss = p.loss_fn(out, y)
            loss.backward()
            opt.step()
            sched.step()
            return float(loss.detach())

        return loop.run_steps(step, total, steps_per_epoch=spe)

    def at_eval(self, step: int) -> dict[str, Any]:
        """Assemble the full weight matrix on every rank (for evaluation and model.pt)."""
        width = max(self.split.sizes)
        pad = torch.zeros(self.block.shape[0], width, dtype=self.block.dtype)
        pad[:, :self.block.shape[1]] = self.block.detach()
        blocks = self.transport.all_gather(pad)
        with torch.no_grad():
            for r, b in enumerate(blocks):
                c = self.split.columns(r)
                self.layer.weight[:, c] = b[:, :self.split.sizes[r]].to(self.layer.weight.dtype)
            if self.layer.bias is not None:
                bias = self.bias.detach().clone() if self.bias is not None \
                    else torch.zeros_like(self.layer.bias)
                self.transport.broadcast(bias, src=0)
                self.layer.bias.copy_(bias)
        return {}

    def _write_memory(self, loop, cols: slice) -> None:
        rec = {"rank": loop.rank, "world": self.transport.world_size,
               "columns": [cols.start, cols.stop], "rows": len(self.x),
               "data_bytes": self.x.numel() * self.x.element_size(),
               "param_bytes": sum(q.numel() * q.element_size() for q in
                                  [self.block] + ([self.bias] if self.bias is not None else []))}
        (loop.out_dir / f"feature_split-rank{loop.rank}.json").write_text(json.dumps(rec))

    def state_dict(self) -> dict[str, Any]:
        return {} if self.block is None else {"block": self.block.detach().clone()}
