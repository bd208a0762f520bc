"""Parameter-server data parallelism: workers push gradients or model deltas and pull parameters.

References: Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012 (Downpour
SGD: asynchronous, asymmetric push/pull); Li et al., "Scaling Distributed Machine
Learning with the Parameter Server", OSDI 2014; Ho et al., NIPS 2013 (SSP); Chen et al.,
"Revisiting Distributed Synchronous SGD", 2016 (backup workers).

Ranks ``0 … workers−1`` train (rank 0 evaluates), ranks ``workers … workers+servers−1``
each serve one key range of the flat parameter vector (DESIGN.md §4). The server loop
(``comm/ps``) knows only messages, clocks and the pace; the update rule is injected
here: the configured optimizer stepping on the shard (gradient pushes) or averaging
(model-delta pushes). With ``[comm] codec`` (any Compressor) each shard of a push is
compressed on the worker (error feedback's residual stays there) and decoded on the
server. Subclasses change the rule (``_server_rule``) and the round policy
(``max_delay``), e.g. asynchronous ADMM (``admm_async.py``).
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

from distml.algorithms import ALGORITHMS
from distml.algorithms.base import Algorithm
from distml.comm.buckets import Bucket, flatten, unflatten_into
from distml.comm.pace import make_pace
from distml.comm.ps import PSClient, PushDecoder, PushEncoder, ServerLoop, shard_bounds
from distml.errors import ConfigError
from distml.optim import needs_closure
from distml.registry import split_spec


class _OptimizerRule:
    """Gradient pushes: the round's mean gradient feeds the configured optimizer, rebuilt
    over the shard (same class and hyperparameters). Applied asynchronously, each push
    counts ``1 / workers``: one push from every worker then moves the model as far as one
    synchronous round, so BSP, SSP and ASP compare at the same learning rate."""

    def __init__(self, shard: torch.Tensor, like: torch.optim.Optimizer, workers: int,
                 synchronous: bool):
        self.workers, self.synchronous = workers, synchronous
        self.param = nn.Parameter(shard)
        try:
            self.opt = type(like)([self.param], **like.defaults)
        except TypeError as e:
            raise ConfigError(f"optimizer {type(like).__name__} cannot run on a parameter server "
                              f"({e}); use sgd, momentum, nesterov, adam, adamw, adagrad or rmsprop")

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None:
        divisor = count if self.synchronous else self.workers
        self.param.grad = total if divisor == 1 else total / divisor
        if aux > 0:          # the workers' scheduled learning rate rides on the push
            for g in self.opt.param_groups:
                g["lr"] = aux
        self.opt.step()
        self.param.grad = None

    def state_dict(self) -> dict[str, Any]:
        return self.opt.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.opt.load_state_dict(state)


class _DeltaRule:
    """Model-delta pushes: the server adds the mean delta of a round (synchronous) or each
    delta over the number of workers (asynchronous) — model averaging through the PS."""

    def __init__(self, shard: torch.Tensor, workers: int, synchronous: bool):
        self.param, self.workers, self.synchronous = shard, workers, synchronous

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None:
        params.add_(total, alpha=1.0 / (count if self.synchronous else self.workers))

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@ALGORITHMS.register("ps", topology="parameter server", pace="bsp | asp | ssp | quorum",
                     codecs="compressor",
                     paper="Dean et al. 2012; Li et al. 2014; Ho et al. 2013; Chen et al. 2016",
                     summary="Parameter server: push gradients/deltas, pull parameters, BSP/ASP/SSP pace")
class ParameterServer(Algorithm):
    """Workers push to and pull from sharded parameter servers at a chosen pace.

    Args:
        servers: server processes (extra to the workers); parameters are split by key range.
        pace: ``"bsp"``, ``"asp"`` or ``{name = "ssp", staleness = s}``.
        push: ``"gradients"`` (the server runs the configured optimizer) or ``"deltas"``
            (workers step locally; the server averages their model changes).
        push_every: push every this many steps (gradients are summed in between).
        pull_every: pull every this many steps (the worker computes on its local copy,
            taking local optimizer steps, in between).
        quorum: backup workers: a round closes on the first ``quorum`` pushes; later
            pushes for it are dropped and counted. Needs the bsp pace.
        codec: set by distml from ``[comm] codec``: a Compressor applied to every push.

    Raises:
        ValueError: a value out of range (the valid range is named).
    """

    owns_loop = True
    synchronous_eval = False       # the pace, not an evaluation barrier, keeps workers in step
    #: bounded delay of the server's rounds (late pushes join the open round); None drops them
    max_delay: int | None = None

    def __init__(self, servers: int = 1, pace: str | dict = "bsp", push: str = "gradients",
                 push_every: int = 1, pull_every: int = 1, quorum: int | None = None,
                 codec=None):
        for name, v in (("servers", servers), ("push_every", push_every), ("pull_every", pull_every)):
            if int(v) != v or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v}")
        if push not in ("gradients", "deltas"):
            raise ValueError(f"push must be 'gradients' or 'deltas', got {push!r}")
        self.servers, self.push_kind = int(servers), push
        self.push_every, self.pull_every = int(push_every), int(pull_every)
        self.pace = make_pace(pace)
        if quorum is not None and (int(quorum) != quorum or quorum < 1):
            raise ValueError(f"quorum must be an integer >= 1, got {quorum}")
        if quorum is not None and not self.pace.synchronous:
            raise ValueError(f"quorum (backup workers) needs pace = 'bsp', got {self.pace.name!r}")
        self.quorum = None if quorum is None else int(quorum)
        self.codec = codec
        self._push_h = None
        self._finished = False
        self._stop_seen = False
        self.clock = self._since_push = self._next_step = self.pushes = 0
        self.stale = Counter()
        self.held_seconds = 0.0
        self._report: dict[str, Any] = {}

    def launch_size(self, workers: int) -> int:
        return workers + self.servers

    def check_config(self, config) -> None:
        """Refuse what does not compose with a parameter server (called when building)."""
        optim = split_spec(config.optim.spec(), "optimizer")[0]
        if self.push_kind == "gradients" and needs_closure(optim):   # the server runs it
            raise ConfigError(f"optimizer {optim!r} re-evaluates the loss inside its step and cannot "
                              "run on a parameter server; use sgd, momentum, adam, ...")
        if config.train.stop_at_target and config.train.checkpoint_every:
            # workers learn of the stop at different steps: a later checkpoint would wait
            # for a rank 0 that has already left the loop
            raise ConfigError("ps: train.stop_at_target and train.checkpoint_every do not compose "
                              "(workers stop at different steps); set one of them off")
        if self.quorum is not None and self.quorum > config.workers:
            raise ConfigError(f"algorithm.quorum must be in [1, {config.workers}] (the workers), "
                              f"got {self.quorum}")

    # ---- setup ------------------------------------------------------------------------
    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        self.workers = transport.world_size - self.servers
        if self.workers < 1:
            raise ConfigError(f"ps needs workers + {self.servers} server(s) processes, "
                              f"got a world of {transport.world_size}")
        self.is_server = transport.rank >= self.workers
        # every rank takes part in creating groups, in the same order
        self._workers_t = transport.subgroup(range(self.workers))
        self._ps_t = transport if transport.backend() == "gloo" else \
            transport.subgroup(range(transport.world_size), backend="gloo")
        self.params = [p for p in model.parameters() if p.requires_grad]
        numel = sum(p.numel() for p in self.params)
        try:
            self.bounds = shard_bounds(numel, self.servers)
        except ValueError as e:
            raise ConfigError(f"algorithm.{e}") from None
        if self.is_server:
            return
        flat = flatten(self.params)
        encoder = None if self.codec is None else PushEncoder(self.codec, self.bounds, flat)
        self.client = PSClient(self._ps_t, list(range(self.workers, transport.world_size)),
                               self.bounds, encoder=encoder)
        self.bucket = Bucket(self.params)
        self.flat = torch.empty_like(self.bucket.buffer)
        self.acc = torch.zeros_like(self.flat)
        self.ref = flat if self.push_kind == "deltas" else None

    # ---- worker hooks ---------------------------------------------------------------------
    def _pulls_at(self, step: int) -> bool:
        return (step + 1) % self.pull_every == 0

    def _push(self, payload: torch.Tensor) -> None:
        lr = float(self.optimizer.param_groups[0]["lr"])
        self._push_h = self.client.push(payload, self.clock, aux=lr)
        self.clock += 1
        self.pushes += 1
        self._since_push = 0

    def _wait_push(self) -> None:
        if self._push_h is not None:
            self._push_h.wait()
            self._push_h = None

    def after_backward(self, step: int) -> None:
        if self.push_kind != "gradients":
            return
        self._wait_push()                       # the buffers below may still be on the wire
        grads = self.bucket.fill_from_grads()
        if self.push_every == 1:
            payload = grads
        else:
            self.acc.copy_(grads) if self._since_push == 0 else self.acc.add_(grads)
            payload = self.acc
        self._since_push += 1
        if self._since_push == self.push_every:
            self._push(payload)
        if self._pulls_at(step):
            for p in self.params:               # the pull overwrites a local step: skip it
                p.grad = None

    def _push_delta(self) -> None:
        self._wait_push()
        current = flatten(self.params)
        torch.sub(current, self.ref, out=self.acc)
        self.ref = current
        self._push(self.acc)

    def after_step(self, step: int) -> None:
        self._next_step = step + 1
        if self.push_kind == "deltas":
            self._since_push += 1
            if self._since_push == self.push_every:
                self._push_delta()
        if self._pulls_at(step):
            self._pull()

    def _pull(self) -> None:
        self._fetch()
        unflatten_into(self.flat, self.params)
        if self.ref is not None:
            self.ref = self.flat.clone()

    def _fetch(self):
        """Pull the servers' parameters into ``self.flat`` (the pace decides when)."""
        res = self.client.pull(self.flat, self.clock).wait()
        if self.pace.synchronous:               # a backup worker that fell behind jumps ahead
            self.clock = max(self.clock, res.clock)
        self.stale[res.staleness] += 1
        self.held_seconds += res.held_seconds
        self._stop_seen = self._stop_seen or res.stop
        return res

    def agree_to_stop(self, mine: bool) -> bool:
        """Stop at the target without a barrier: rank 0 tells the servers, the others learn
        it from a pull reply and stop at their next evaluation point."""
        if mine:
            self.client.stop()
            return True
        return self._stop_seen

    def at_eval(self, step: int) -> dict[str, Any]:
        """This worker's staleness so far, added to rank 0's evaluation records."""
        if self.is_server:
            return {}
        return {"staleness_max": max(self.stale, default=0), "pull_held_seconds": self.held_seconds}

    def on_train_end(self, step: int) -> None:
        """Push what is left, tell the servers; rank 0 receives the final model."""
        if self._finished:
            return
        if self._since_push > 0:
            if self.push_kind == "deltas":
                self._push_delta()
            else:
                self._wait_push()
                self._push(self.acc if self.push_every > 1 else self.bucket.buffer)
        self._wait_push()
        final = self.transport.rank == 0
        res = self.client.done(self.flat if final else None)
        if final:
            unflatten_into(self.flat, self.params)
            self.held_seconds += res.held_seconds
        self._finished = True

    # ---- the two roles ----------------------------------------------------------------------
    def run(self, loop):
        if self.is_server:
            return self._serve(loop)
        # barriers, stop votes and checkpoint commits among the workers only
        loop.transport = self._workers_t
        result = loop.run(resume=loop.resume_requested, stop_after=loop.stop_after)
        if not self._finished:                  # stopped early (--stop-after): no final model
            self._wait_push()
            self.client.done()
            self._finished = True
        return result

    def _server_rule(self, shard: torch.Tensor, bounds: tuple[int, int]):
        """The update rule injected into the server of key range ``bounds``, and the tensor
        it updates in place (the shard the server sends to pulls)."""
        if self.push_kind == "gradients":
            rule = _OptimizerRule(shard, self.optimizer, self.workers, self.pace.synchronous)
            return rule, rule.param.data
        return _DeltaRule(shard, self.workers, self.pace.synchronous), shard

    def _serve(self, loop):
        index = self.transport.rank - self.workers
        a, b = self.bounds[index]
        rule, shard = self._server_rule(flatten(self.params)[a:b].clone(), (a, b))
        workers = list(range(self.workers))
        decoder = None if self.codec is None else PushDecoder(self.codec, shard, workers)
        server = ServerLoop(self._ps_t, index, shard, workers, self.pace, rule,
                            quorum=self.quorum, save=loop.checkpoints.write,
                            max_delay=self.max_delay, decoder=decoder)
        if loop.resume_requested:
            step = loop.checkpoints.latest_step()
            if step is not None:
                server.load_state_dict(loop.checkpoints.load(step))
        self._report = server.run()
        # the fields the worker entry reads from a LoopResult; a server trains no steps
        return SimpleNamespace(steps=0, steps_this_run=0, wall_seconds=0.0, time_to_target=None,
                               final_eval={}, train_loss=None, clock=loop.clock, completed=True)

    # ---- state and results ------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """A worker's PS state; asking for it makes every server save its shard at this step."""
        if getattr(self, "is_server", True):
            return {}
        self._wait_push()
        self.client.checkpoint(self._next_step)
        encoder = self.client.encoder
        return {"clock": self.clock, "since_push": self._since_push, "acc": self.acc.clone(),
                "ref": None if self.ref is None else self.ref.clone(), "pushes": self.pushes,
                "stale": dict(self.stale), "held_seconds": self.held_seconds,
                "codec": None if encoder is None else encoder.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        self.clock, self._since_push = int(state["clock"]), int(state["since_push"])
        self.acc.copy_(state["acc"])
        if state["ref"] is not None:
            self.ref = state["ref"].clone()
        self.pushes = int(state["pushes"])
        self.stale = Counter({int(k): int(v) for k, v in state["stale"].items()})
        self.held_seconds = float(state["held_seconds"])
        if self.client.encoder is not None and state.get("codec") is not None:
            self.client.encoder.load_state_dict(state["codec"])

    def rank_metrics(self) -> dict[str, Any]:
        """Per-rank results: staleness per pull and held time (workers), counters (servers)."""
        if self.is_server:
            return {"role": "server", **self._report}
        n = sum(self.stale.values())
        return {"role": "worker", "pushes": self.pushes, "pulls": n,
                "staleness_max": max(self.stale, default=0),
                "staleness_mean": sum(k * v for k, v in self.stale.items()) / n if n else 0.0,
                "staleness_hist": {str(k): v for k, v in sorted(self.stale.items())},
                "pull_held_seconds": self.held_seconds}

    def summary_extra(self, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        servers = [r for r in per_rank if r.get("role") == "server"]
        workers = [r for r in per_rank if r.get("role") == "worker"]
        hist: Counter = Counter()
        for w in workers:
            hist.update({int(k): v for k, v in w.get("staleness_hist", {}).items()})
        return {"ps": {"servers": len(servers), "pace": self.pace.describe(),
                       "quorum": self.quorum, "push": self.push_kind,
                       "codec": None if self.codec is None else self.codec.describe(),
                       "bytes_pushed": [s["bytes_pushed"] for s in servers],
                       "staleness_max": max((w["staleness_max"] for w in workers), default=0),
                       # per shard: every push reaches every shard
                       "pushes_applied": [s["pushes_applied"] for s in servers],
                       "pushes_dropped": [s["pushes_dropped"] for s in servers],
                       "wait_seconds_per_worker": [w["wait_seconds"] for w in workers],
                       "server_reports": servers},
                # pulls per staleness over all workers: `distml report` plots it
                "staleness_histogram": {str(k): v for k, v in sorted(hist.items())}}

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "ps", "servers": self.servers, "pace": self.pace.describe(),
                "push": self.push_kind, "push_every": self.push_every,
                "pull_every": self.pull_every, "quorum": self.quorum,
                "codec": None if self.codec is None else self.codec.describe()}

    def close(self) -> None:
        self._push_h = None
