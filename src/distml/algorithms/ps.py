"""Parameter-server data parallelism: workers push gradients or model deltas and pull parameters.

References: Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012 (Downpour
SGD: asynchronous, asymmetric push/pull); Li et al., "Scaling Distributed Machine
Learning with the Parameter Server", OSDI 2014; Ho et al., NIPS 2013 (SSP); Chen et al.,
"Revisiting Distributed Synchronous SGD", 2016 (backup workers).

Ranks ``0 … workers−1`` train (rank 0 evaluates), ranks ``workers … workers+servers−1``
each serve one key range of the flat parameter vector (docs/design.md §4). The server loop
(``comm/ps``) knows only messages, clocks and the pace; the update rule is injected
here: the configured optimizer stepping on the shard (gradient pushes) or averaging
(model-delta pushes). With ``[comm] codec`` (any Compressor) each shard of a push is
compressed on the worker (error feedback's residual stays there) and decoded on the
server. The update rules live in :mod:`distml.aggregate.server_rules`.

A rank plays one role, each a small class: :class:`PSWorker` (trains, pushes, pulls) or
:class:`PSServer` (serves one shard); the registered :class:`ParameterServer` builds the
rank's role at setup and hands it the runtime's calls, so the runtime sees one Algorithm.
Subclasses change the worker role (``worker_role``), the rule (``server_rule``) and the
round policy (``max_delay``), e.g. asynchronous ADMM (``admm_async.py``).

A worker lost (``[faults] on_worker_loss = "continue"``, BSP with one server): the server
drops it from the pace's count and tells the survivors to regroup through their pulls
(``comm/ps/server.py``); workers and server form the new group together
(runtime/elastic.py), the workers re-partition the data and go on from their in-memory
state. A dead server is not survived: its shard is gone.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace
from typing import Any

import torch

from distml.aggregate.server_rules import DeltaRule, OptimizerRule
from distml.algorithms.base import LOOP_STEP, Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import Bucket, flatten, unflatten_into
from distml.comm.pace import make_pace
from distml.comm.ps import PSClient, PushDecoder, PushEncoder, ServerLoop, shard_bounds
from distml.errors import ConfigError
from distml.optim import needs_closure
from distml.registry import split_spec


class PSWorker(Algorithm):
    """A worker rank: trains with the standard loop, pushes gradients or deltas, pulls.

    Args:
        plan: the registered :class:`ParameterServer` (its settings and groups).
        model, optimizer: this worker's.
    """

    def __init__(self, plan: "ParameterServer", model, optimizer):
        self.plan, self.model, self.optimizer = plan, model, optimizer
        self.transport = plan.transport
        self.push_kind, self.push_every, self.pull_every = plan.push_kind, plan.push_every, plan.pull_every
        self.pace = plan.pace
        self._push_h = None
        self._finished = False
        self._stop_seen = False
        self.clock = self._since_push = self._next_step = self.pushes = 0
        self.stale: Counter = Counter()
        self.held_seconds = 0.0
        self.params = [p for p in model.parameters() if p.requires_grad]
        flat = flatten(self.params)
        encoder = None if plan.codec is None else PushEncoder(plan.codec, plan.bounds, flat)
        self.client = PSClient(plan.ps_transport, plan.server_ranks, plan.bounds, encoder=encoder)
        self.bucket = Bucket(self.params)
        self.flat = torch.empty_like(self.bucket.buffer)
        self.acc = torch.zeros_like(self.flat)
        self.ref = flat if self.push_kind == "deltas" else None

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
        """This worker's staleness so far, added to rank 0's evaluation records. Rank 0, about
        to evaluate, tells the servers, so that they and the pulls they hold outwait it
        (after ``done`` the servers no longer listen; the final gather outwaits it)."""
        if self.transport.rank == 0 and not self._finished:
            self.client.evaluating()
        return {"staleness_max": max(self.stale, default=0), "pull_held_seconds": self.held_seconds}

    def on_train_end(self, steps: int) -> None:
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

    def run(self, loop):
        # barriers, stop votes and checkpoint commits among the workers only
        loop.transport = self.plan.workers_transport
        result = loop.run(resume=loop.resume_requested, stop_after=loop.stop_after)
        if not self._finished:                  # stopped early (--stop-after): no final model
            self._wait_push()
            self.client.done()
            self._finished = True
        return result

    def regroup(self, transport) -> None:
        """The survivors' new group (``transport``: the workers'; its parent, the world with
        the servers after them): talk to the servers under their new ranks. The push in
        flight reached the server before its pull was answered: nothing is resent."""
        super().regroup(transport)
        world, plan = transport.parent, self.plan
        plan.transport, plan.ps_transport, plan.workers_transport = world, world, transport
        plan.workers = transport.world_size
        plan.server_ranks = list(range(plan.workers, world.world_size))
        self.client = PSClient(world, plan.server_ranks, plan.bounds, encoder=self.client.encoder)
        self._push_h = None

    def state_dict(self) -> dict[str, Any]:
        """A worker's PS state; asking for it makes every server save its shard at this step."""
        self._wait_push()
        self.client.checkpoint(self._next_step)
        return self.transfer_state()

    def transfer_state(self) -> dict[str, Any]:
        """A worker's own PS state, without the servers' checkpoint (a survivor behind the
        others takes it while the servers are regrouping, not serving)."""
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
        """Staleness per pull and held time."""
        n = sum(self.stale.values())
        return {"role": "worker", "pushes": self.pushes, "pulls": n,
                "staleness_max": max(self.stale, default=0),
                "staleness_mean": sum(k * v for k, v in self.stale.items()) / n if n else 0.0,
                "staleness_hist": {str(k): v for k, v in sorted(self.stale.items())},
                "pull_held_seconds": self.held_seconds}

    def close(self) -> None:
        self._push_h = None


class PSServer(Algorithm):
    """A server rank: serves key range ``index`` with the injected rule until the workers
    are done; it trains no steps.

    Args:
        plan: the registered :class:`ParameterServer` (its settings and groups).
        index: the shard this rank serves.
        rule: the update rule (:mod:`distml.aggregate.server_rules`), holding the shard.
    """

    def __init__(self, plan: "ParameterServer", index: int, rule):
        self.plan, self.index, self.rule = plan, index, rule
        self._report: dict[str, Any] = {}

    def run(self, loop):
        plan = self.plan
        workers = list(range(plan.workers))
        shard = self.rule.params
        decoder = None if plan.codec is None else PushDecoder(plan.codec, shard, workers)
        membership = None if loop.survivors is None else ServerMembership(loop)
        server = ServerLoop(plan.ps_transport, self.index, shard, workers, plan.pace, self.rule,
                            quorum=plan.quorum, save=loop.checkpoints.write,
                            max_delay=plan.max_delay, decoder=decoder, membership=membership)
        if loop.resume_requested:
            step = loop.checkpoints.latest_step()
            if step is not None:
                server.load_state_dict(loop.checkpoints.load(step))
        self._report = server.run()
        # the fields the worker entry reads from a LoopResult; a server trains no steps
        return SimpleNamespace(steps=0, steps_this_run=0, wall_seconds=0.0, time_to_target=None,
                               final_eval={}, train_loss=None, clock=loop.clock, completed=True)

    def rank_metrics(self) -> dict[str, Any]:
        """The server's counters (``comm/ps``)."""
        return {"role": "server", **self._report}


class ServerMembership:
    """A server's view of the worker group under ``on_worker_loss = "continue"``: the
    :class:`~distml.comm.ps.server.Membership` the server loop takes, over the loop's
    ``survivors`` (runtime/elastic.py), which knows the launch ranks and the store.

    Args:
        loop: the server's loop (its ``transport`` and ``rank`` become the new group's).
    """

    def __init__(self, loop):
        self.loop = loop

    def lost(self, error=None) -> list[int]:
        s = self.loop.survivors
        dead = s.dead_now() if error is None else s.wait_dead(error)
        s.check_servers(dead)           # a dead server: its shard is gone, stop
        return [s.members.index(r) for r in dead]

    def regroup(self, error):
        s = self.loop.survivors
        before = list(s.members)
        world, _, _, _ = s.rejoin(self.loop.transport, error)
        workers = [r for r in s.members if r not in s.servers]
        self.loop.transport, self.loop.rank = world, world.rank
        return world, {before.index(r): s.members.index(r) for r in workers}


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

    At setup the rank takes its role (:class:`PSWorker` or :class:`PSServer`); the hooks
    below hand the runtime's calls to it.
    """

    owns_loop = True
    synchronous_eval = False       # the pace, not an evaluation barrier, keeps workers in step
    elastic = True                 # BSP with one server: check_config refuses the rest
    #: bounded delay of the server's rounds (late pushes join the open round); None drops them
    max_delay: int | None = None

    buffers = "rank0"       # pulls carry parameters; rank 0 evaluates with its own buffers
    # workers train in the standard loop (autocast applies); pushes happen in after_backward,
    # so neither accumulation nor clipping could act on what is pushed
    supports = Supports(wrap=False, precisions=LOOP_STEP["precisions"])   # wrap: own loop

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
        self.role: Algorithm = Algorithm()      # no role before setup: every hook a no-op

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
        if self.pace.name == "ssp" and self.push_every % self.pull_every:
            # the pace is checked at pulls: a push step without one would advance this
            # worker's clock unchecked, up to s + pull_every - 1 clocks ahead (issue 14)
            raise ConfigError(f"ps: the ssp pace bounds staleness only when every push is followed "
                              f"by a pull: pull_every ({self.pull_every}) must divide push_every "
                              f"({self.push_every})")
        if config.faults.on_worker_loss == "continue" and self.elastic:
            self._check_continue(config)
        if self.quorum is not None and self.quorum > config.workers:
            raise ConfigError(f"algorithm.quorum must be in [1, {config.workers}] (the workers), "
                              f"got {self.quorum}")

    def _check_continue(self, config) -> None:
        """``on_worker_loss = "continue"``: the configurations whose recovery is exact."""
        why = None
        if self.pace.name != "bsp" or self.quorum is not None or self.max_delay is not None:
            why = ("only the bsp pace without a quorum regroups (ssp/asp workers are at "
                   "different steps; a quorum's closed rounds count workers)")
        elif self.servers != 1:
            why = ("only one server (a worker dying between its pushes to two servers would "
                   "leave its last gradient on some shards only)")
        elif self.push_kind != "gradients" or self.push_every != 1 or self.pull_every != 1:
            why = ("only push = 'gradients' with push_every = pull_every = 1 (a step's pull "
                   "is then its only communication after the push)")
        elif self.codec is not None:
            why = "not with comm.codec (the server's decoding state is kept per worker rank)"
        elif config.train.checkpoint_every:
            why = ("not with train.checkpoint_every (a checkpoint's barrier among the workers "
                   "would wait for the dead one)")
        if why is not None:
            raise ConfigError(f"ps with faults.on_worker_loss = 'continue': {why}; change it or "
                              "set faults.on_worker_loss = 'stop'")

    # ---- setup: the rank's role -------------------------------------------------------------
    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        self.workers = transport.world_size - self.servers
        if self.workers < 1:
            raise ConfigError(f"ps needs workers + {self.servers} server(s) processes, "
                              f"got a world of {transport.world_size}")
        # every rank takes part in creating groups, in the same order
        self.workers_transport = transport.subgroup(range(self.workers))
        self.ps_transport = transport if transport.backend() == "gloo" else \
            transport.subgroup(range(transport.world_size), backend="gloo")
        self.server_ranks = list(range(self.workers, transport.world_size))
        numel = sum(p.numel() for p in model.parameters() if p.requires_grad)
        try:
            self.bounds = shard_bounds(numel, self.servers)
        except ValueError as e:
            raise ConfigError(f"algorithm.{e}") from None
        if transport.rank < self.workers:
            self.role = self.worker_role()
        else:
            index = transport.rank - self.workers
            self.role = PSServer(self, index, self.server_rule(index))

    def worker_role(self) -> PSWorker:
        """The worker rank's role (a subclass may extend it)."""
        return PSWorker(self, self.model, self.optimizer)

    def server_rule(self, index: int):
        """The update rule injected into the server of shard ``index`` (it holds the shard)."""
        a, b = self.bounds[index]
        params = [p for p in self.model.parameters() if p.requires_grad]
        shard = flatten(params)[a:b].clone()
        if self.push_kind == "gradients":
            return OptimizerRule(shard, self.optimizer, self.workers, self.pace.synchronous,
                                 params=params, start=a)
        return DeltaRule(shard, self.workers, self.pace.synchronous)

    # ---- the runtime's calls, handed to the role ---------------------------------------------
    def run(self, loop):
        return self.role.run(loop)

    def regroup(self, transport) -> None:
        self.role.regroup(transport)

    def loss_terms(self, model):
        return self.role.loss_terms(model)

    def after_backward(self, step: int) -> None:
        self.role.after_backward(step)

    def after_step(self, step: int) -> None:
        self.role.after_step(step)

    def on_train_end(self, steps: int) -> None:
        self.role.on_train_end(steps)

    def agree_to_stop(self, mine: bool) -> bool | None:
        return self.role.agree_to_stop(mine)

    def at_eval(self, step: int) -> dict[str, Any]:
        return self.role.at_eval(step)

    def eval_model(self):
        return self.role.eval_model()

    def state_dict(self) -> dict[str, Any]:
        return self.role.state_dict()

    def transfer_state(self) -> dict[str, Any]:
        return self.role.transfer_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.role.load_state_dict(state)

    def rank_metrics(self) -> dict[str, Any]:
        return self.role.rank_metrics()

    # ---- results ----------------------------------------------------------------------------
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
        self.role.close()
