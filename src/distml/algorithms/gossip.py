"""Decentralized SGD (D-PSGD): local steps, then mix models with the graph's neighbours.

Reference: Lian, Zhang, Zhang, Hsieh, Zhang & Liu 2017, "Can Decentralized Algorithms
Outperform Centralized Algorithms? A Case Study for Decentralized Parallel Stochastic
Gradient Descent" (NeurIPS). Every ``every`` optimizer steps, worker i replaces its
parameters by ``Σ_j W_ij x_j`` over its neighbours in a graph from
:mod:`distml.comm.topology` (Metropolis–Hastings weights, or the time-varying one-peer
exponential graph), exchanging flat parameter vectors with point-to-point messages
(all receives and sends are posted before any wait, so no pair can deadlock). This is
the adapt-then-combine order (step, then mix); ``W`` is doubly stochastic, so mixing
preserves the mean of the replicas. At every evaluation the workers all-reduce their
parameters (and buffers, e.g. BatchNorm statistics) once to measure the consensus
distance and to evaluate the replicas' mean (the model D-PSGD's analysis is about, and
the one saved); those bytes are counted. Buffers are not mixed during training: each
replica keeps its own statistics, as its own data gives them.

With ``[comm] codec``, mixing follows CHOCO-SGD (Koloskova, Stich & Jaggi 2019): each
worker sends ``Q(x_i − x̂_i)`` (a Compressor from :mod:`distml.comm.compress`), every
holder of a public copy ``x̂_j`` adds the decompressed message, and
``x_i += γ Σ_j W_ij (x̂_j − x̂_i)``; the copies act as the error memory, and the mean of
the replicas is kept exactly. It needs a static graph (the copies of a neighbour must
see all its messages) and fixed-size payloads.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from distml.aggregate.mixing import choco_step, consensus_distance_from_sums, mix_step
from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import broadcast_module, flatten, unflatten_into
from distml.comm.buffers import average_buffers
from distml.comm.topology import GRAPHS, build_graph
from distml.errors import ConfigError
from distml.models.layers import reinitialize
from distml.registry import split_spec


@ALGORITHMS.register("gossip", topology="decentralized", pace="sync", codecs="compressor",
                     paper="Lian et al. 2017 (D-PSGD); Xiao & Boyd 2004 (Metropolis-Hastings "
                     "weights); Koloskova et al. 2019 (CHOCO-SGD, with a codec)",
                     summary="decentralized SGD: mix models with graph neighbours every H steps")
class Gossip(Algorithm):
    """D-PSGD over a graph.

    Args:
        graph: ring | torus | complete | exponential | random, or a table with the graph's
            parameters (``{name = "torus", rows = 2}``, ``{name = "random", degree = 3}``).
        every: optimizer steps between mixing rounds (H >= 1).
        local_init_seed: None: every worker starts from rank 0's model; an int: worker r
            re-draws its own initial model from ``local_init_seed + r`` (diverse replicas,
            e.g. to watch consensus form).
        gamma: CHOCO's consensus step size in (0, 1], used with a codec (sparser codecs
            need smaller steps; 1 with an exact codec is plain D-PSGD mixing).
        codec: set by distml from ``[comm] codec``.

    Raises:
        ValueError: every < 1 or gamma outside (0, 1].
        ConfigError: an unknown graph (the message lists the valid ones).
    """

    buffers = "average"    # the evaluated mean of the replicas carries their mean buffers
    supports = Supports(wrap=False, **LOOP_STEP)   # wrap: the evaluated model is the mean
    elastic = True         # a lost worker: the graph is rebuilt over the survivors (regroup)
    joinable = True        # a replacement joins every every·(workers−1) steps (is_join_point)

    def __init__(self, graph: str | dict = "ring", every: int = 1, local_init_seed: int | None = None,
                 gamma: float = 0.2, codec=None):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1, got {every!r}")
        if not 0 < gamma <= 1:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        GRAPHS.get(split_spec(graph, "graph")[0])     # unknown names fail before any process starts
        self.graph_spec, self.every, self.local_init_seed = graph, every, local_init_seed
        self.gamma, self.codec = float(gamma), codec
        self.round = 0
        self._average: nn.Module | None = None
        self._hat: dict[int, torch.Tensor] | None = None   # CHOCO's public copies x̂ (self, neighbours)
        self._codec_state = None

    def check_config(self, config) -> None:
        """Refuse what does not compose before any process starts (called when building)."""
        if config.workers < 2:
            raise ConfigError("gossip needs at least 2 workers (a single worker has no neighbour "
                              "to average with); set workers >= 2 or use sync_sgd")
        graph = build_graph(self.graph_spec, config.workers)    # its parameters fit the world
        if self.codec is None:
            return
        if config.faults.on_worker_loss == "continue":
            raise ConfigError("compressed gossip (CHOCO-SGD) cannot continue after a worker loss "
                              "(every neighbour's public copy x̂ would have to be rebuilt); remove "
                              "comm.codec or set faults.on_worker_loss = 'stop'")
        if config.comm.error_feedback:
            raise ConfigError("gossip with a codec (CHOCO-SGD) keeps its own error memory (the "
                              "public copies x̂); remove comm.error_feedback")
        if not graph.static:
            raise ConfigError("compressed gossip (CHOCO-SGD) needs a static graph: ring, torus, "
                              "complete or random, not the time-varying exponential graph")
        if not self.codec.fixed_size:
            raise ConfigError(f"compressed gossip needs fixed-size payloads; {self.codec.describe()} "
                              "varies in length (use topk, randomk, qsgd, sign, fp16 or bf16)")

    def setup(self, model: nn.Module, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        if self.local_init_seed is None:
            broadcast_module(model, transport)
        else:
            reinitialize(model, int(self.local_init_seed) + transport.rank)
        self.graph = build_graph(self.graph_spec, transport.world_size)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self._buffers: dict[int, Any] = {}
        if self.codec is not None and self._hat is None:
            x = flatten(self.params)
            self._codec_state = self.codec.init(x)
            # equal starting replicas: every copy is exact already; else the paper's x̂ = 0
            start = x if self.local_init_seed is None else torch.zeros_like(x)
            holders = [transport.rank, *self.graph.receives_from(transport.rank)]
            self._hat = {j: start.clone() for j in holders}

    def regroup(self, transport) -> None:
        """Rebuild the graph over the survivors (new ranks, new neighbours). A graph whose
        parameters do not fit the new size (a torus of 2 rows for 3 workers) becomes a
        ring."""
        super().regroup(transport)
        try:
            self.graph = build_graph(self.graph_spec, transport.world_size)
        except (ConfigError, ValueError):
            self.graph = build_graph("ring", transport.world_size)
        self._buffers = {}

    def is_join_point(self, done: int, workers: int) -> bool:
        """A rank waits only for its neighbours, so one can run ahead of rank 0 by as many
        mixing rounds as the graph's diameter (at most workers − 1): join points are that
        many rounds apart."""
        return done % (self.every * max(1, workers - 1)) == 0

    def after_step(self, step: int) -> None:
        if (step + 1) % self.every or self.transport.world_size == 1:
            return
        if self.codec is not None:
            self._choco_round()
            return
        t, rank = self.transport, self.transport.rank
        x = flatten(self.params)
        weights = self.graph.receives_from(rank, self.round)
        handles = []
        for j in weights:
            buf = self._buffers.setdefault(j, torch.empty_like(x))
            handles.append(t.irecv(buf, src=j))
        for j in self.graph.sends_to(rank, self.round):
            handles.append(t.isend(x, j))
        for h in handles:
            h.wait()
        w_ii = float(self.graph.matrix(self.round)[rank, rank])
        mixed = mix_step(x, w_ii, {j: self._buffers[j] for j in weights}, weights)
        unflatten_into(mixed, self.params)
        self.round += 1

    def _choco_round(self) -> None:
        t, rank, codec = self.transport, self.transport.rank, self.codec
        x = flatten(self.params)
        payload, self._codec_state = codec.compress(x - self._hat[rank], self._codec_state)
        payload = tuple(p.contiguous() for p in payload)
        weights = self.graph.receives_from(rank)
        handles = []
        for j in weights:      # fixed-size payloads: a neighbour's looks like ours
            bufs = self._buffers.setdefault(j, tuple(torch.empty_like(p) for p in payload))
            handles += [t.irecv(b, src=j, tag=i) for i, b in enumerate(bufs)]
        for j in self.graph.sends_to(rank):
            handles += [t.isend(p, j, tag=i) for i, p in enumerate(payload)]
        for h in handles:
            h.wait()
        self._hat[rank] += codec.decompress(payload, x, self._codec_state)
        for j in weights:
            self._hat[j] += codec.decompress(self._buffers[j], x, self._codec_state)
        mixed = choco_step(x, self._hat[rank], self._hat, weights, self.gamma)
        unflatten_into(mixed, self.params)
        self.round += 1

    def at_eval(self, step: int) -> dict[str, Any]:
        x = flatten(self.params)
        mean = self.transport.all_reduce(x.clone(), op="avg")
        sq = (x - mean).double().pow(2).sum().reshape(1)     # on x's device (NCCL takes no CPU tensor)
        self.transport.all_reduce(sq, op="sum")
        if self._average is None:
            self._average = copy.deepcopy(self.model)
        unflatten_into(mean, [p for p in self._average.parameters() if p.requires_grad])
        average_buffers(self.model, self.transport, into=self._average)
        return {"gossip_round": self.round,
                "consensus_distance": consensus_distance_from_sums(float(sq[0]), self.transport.world_size)}

    def eval_model(self) -> nn.Module:
        return self.model if self._average is None else self._average

    def describe(self) -> dict[str, Any]:
        out = {"algorithm": "gossip", "graph": self.graph_spec, "every": self.every,
               "local_init_seed": self.local_init_seed}
        if self.codec is not None:
            out.update(mixing="choco", codec=self.codec.describe(), gamma=self.gamma)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "hat": self._hat, "codec_state": self._codec_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = int(state["round"])
        if state.get("hat") is not None:
            self._hat = {int(j): v.clone() for j, v in state["hat"].items()}
            self._codec_state = state["codec_state"]
