"""The server loop of one parameter shard: messages, clocks and the pace — nothing about learning.

Reference: Li et al., "Scaling Distributed Machine Learning with the Parameter Server",
OSDI 2014 (ps-lite): the update rule is a handler the algorithm injects
(``set_request_handle``), so ``comm/`` never imports ``optim/`` or ``aggregate/``.

The loop is single-threaded: it blocks in an any-source receive (no spinning) and
keeps pulls that the pace does not allow yet in a list, answering them when a push or
a finishing worker moves the progress. Synchronous paces apply one round (all pushes of
a clock, summed in rank order, so the result does not depend on arrival order) through
the handler; asynchronous ones apply each push at once. Under a quorum, pushes for a
closed round are dropped and counted: every push is applied exactly once or counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from distml.comm.pace import Pace, Quorum
from distml.comm.ps.wire import (ACK, CHECKPOINT, DONE, FLAG_STOP, PULL, PUSH, REPLY, STOP,
                                 TAG_HEADER, TAG_PAYLOAD, TAG_REPLY, TAG_REPLY_PAYLOAD, Header,
                                 empty_header)
from distml.errors import PeerError

_NEVER = 1 << 62


class UpdateRule(Protocol):
    """What the algorithm injects: apply ``total`` (the sum of ``count`` pushes) to ``params``.

    ``aux`` is the float the pushes carried (e.g. the learning rate). The rule owns its
    state (optimizer moments) and makes it checkpointable.
    """

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ServerLoop:
    """Serve one shard until every worker said it is done.

    Args:
        transport: the PS transport (a gloo group with every worker and server).
        shard: this shard's index (echoed in replies).
        params: the shard's parameters (updated in place by ``rule``).
        workers: the workers' ranks in ``transport``.
        pace: when pulls are answered (and whether pushes are applied per round).
        rule: the injected update rule.
        quorum: pushes that close a round (backup workers); None means every worker.
        save: ``save(step, state)`` writes a checkpoint once every active worker asked.

    Raises:
        ValueError: a quorum with an asynchronous pace.
    """

    def __init__(self, transport, shard: int, params: torch.Tensor, workers: list[int], pace: Pace,
                 rule: UpdateRule, quorum: int | None = None,
                 save: Callable[[int, dict], None] | None = None):
        if quorum is not None and not pace.synchronous:
            raise ValueError(f"a quorum needs the bsp pace, got {pace.name}")
        self.t, self.shard, self.params, self.pace, self.rule = transport, shard, params, pace, rule
        self.workers = list(workers)
        self.quorum = Quorum(quorum if quorum is not None else len(workers), len(workers))
        self.save = save
        self.active = set(self.workers)
        self.clocks = {w: 0 for w in self.workers}     # pushes received from each worker
        self.round = 0                                 # closed rounds (synchronous paces)
        self.rounds: dict[int, dict[int, torch.Tensor]] = {}   # open rounds: clock -> worker -> push
        self.aux: dict[int, float] = {}
        self.applied = 0
        self.dropped = {w: 0 for w in self.workers}
        self.pulls = 0
        self.max_staleness = 0
        self.held: list[tuple[int, int, float]] = []   # (worker, clock, since)
        self.final: list[int] = []                     # workers waiting for the last model
        self.ckpt: dict[int, int] = {}                 # worker -> step it asked to checkpoint
        self.stop = False                              # rank 0 asked everyone to stop (target met)
        self.busy_seconds = 0.0
        self.bytes_in = 0
        self._last_heard = {w: time.monotonic() for w in self.workers}
        self._buf = torch.empty_like(params)

    # ---- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params.clone(), "rule": self.rule.state_dict(),
                "clocks": dict(self.clocks), "round": self.round,
                "rounds": {c: {w: t.clone() for w, t in d.items()} for c, d in self.rounds.items()},
                "aux": dict(self.aux), "applied": self.applied, "dropped": dict(self.dropped),
                "pulls": self.pulls, "max_staleness": self.max_staleness}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        self.params.copy_(s["params"])
        self.rule.load_state_dict(s["rule"])
        self.clocks = {int(w): int(c) for w, c in s["clocks"].items()}
        self.round = int(s["round"])
        self.rounds = {int(c): {int(w): t for w, t in d.items()} for c, d in s["rounds"].items()}
        self.aux = {int(c): float(a) for c, a in s["aux"].items()}
        self.applied, self.pulls = int(s["applied"]), int(s["pulls"])
        self.dropped = {int(w): int(n) for w, n in s["dropped"].items()}
        self.max_staleness = int(s["max_staleness"])

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Serve until every worker is done; returns the shard's counters."""
        hdr = empty_header()
        while self.active or self.held or self.final:
            sender = self._recv_header(hdr)
            t0 = time.perf_counter()
            self._last_heard[sender] = time.monotonic()
            self._handle(sender, Header.decode(hdr))
            self.busy_seconds += time.perf_counter() - t0
            if not self.active:
                self._finish()
        return self.report()

    def _recv_header(self, hdr: torch.Tensor) -> int:
        try:
            return self.t.recv(hdr, src=None, tag=TAG_HEADER)
        except PeerError:
            now = time.monotonic()
            silent = sorted(self.active, key=lambda w: self._last_heard[w])
            names = ", ".join(f"rank {w} ({now - self._last_heard[w]:.0f} s)" for w in silent)
            raise PeerError(f"parameter server rank {self.t.global_rank} (shard {self.shard}): no "
                            f"message within {self.t.timeout.total_seconds():g} s; silent workers: "
                            f"{names or 'none'} — a worker died or stalled") from None

    def _handle(self, w: int, h: Header) -> None:
        if h.op == PUSH:
            self._push(w, h)
        elif h.op == PULL:
            self.held.append((w, h.clock, time.perf_counter()))
        elif h.op == CHECKPOINT:
            self.ckpt[w] = h.clock
        elif h.op == STOP:
            self.stop = True
        elif h.op == DONE:
            self.active.discard(w)
            if h.arg0:
                self.final.append(w)
        else:
            raise PeerError(f"parameter server: unexpected {h.op} message from rank {w}")
        self._close_rounds()
        self._answer_pulls()
        self._maybe_checkpoint()

    def _push(self, w: int, h: Header) -> None:
        if h.length != self.params.numel():
            raise PeerError(f"parameter server shard {self.shard}: push of {h.length} values from "
                            f"rank {w}, expected {self.params.numel()}")
        self.t.recv(self._buf, src=w, tag=TAG_PAYLOAD)
        self.bytes_in += self._buf.numel() * self._buf.element_size()
        self.clocks[w] = max(self.clocks[w], h.clock + 1)
        if not self.pace.synchronous:
            self.rule(self.params, self._buf, 1, h.aux)
            self.applied += 1
        elif h.clock < self.round:      # its round closed without it (quorum): drop, count
            self.dropped[w] += 1
        else:
            self.rounds.setdefault(h.clock, {})[w] = self._buf.clone()
            self.aux.setdefault(h.clock, h.aux)

    def _close_rounds(self, force: bool = False) -> None:
        while self.round in self.rounds:
            got = self.rounds[self.round]
            if not (force or self.quorum.closes(len(got), len(self.active))):
                return
            total = got[min(got)].clone()
            for w in sorted(got)[1:]:            # rank order: deterministic sums
                total.add_(got[w])
            self.rule(self.params, total, len(got), self.aux.pop(self.round))
            self.applied += len(got)
            del self.rounds[self.round]
            self.round += 1

    def progress(self) -> int:
        """Closed rounds (synchronous) or the slowest active worker's clock (asynchronous)."""
        if self.pace.synchronous:
            return self.round if self.active else _NEVER
        return min((self.clocks[w] for w in self.active), default=_NEVER)

    def _answer_pulls(self) -> None:
        progress = self.progress()
        keep = []
        for w, clock, since in self.held:
            if self.pace.ready(clock, progress):
                lag = self.pace.lag(clock, progress) if progress != _NEVER else 0
                self._reply(w, clock, lag, time.perf_counter() - since)
            else:
                keep.append((w, clock, since))
        self.held = keep

    def _reply(self, w: int, clock: int, lag: int, held_s: float) -> None:
        """Send the shard; the header's clock is the server's round (a backup worker that fell
        behind jumps to it) or, asynchronously, the requester's own clock."""
        self.pulls += 1
        self.max_staleness = max(self.max_staleness, lag)
        now = max(clock, self.round) if self.pace.synchronous else clock
        hdr = Header(REPLY, self.shard, now, self.params.numel(), lag, int(held_s * 1e6),
                     flags=FLAG_STOP if self.stop else 0).encode()
        self.t.send(hdr, w, tag=TAG_REPLY)
        self.t.send(self.params, w, tag=TAG_REPLY_PAYLOAD)

    def _maybe_checkpoint(self) -> None:
        if not self.ckpt or not self.active.issubset(self.ckpt):
            return
        steps = set(self.ckpt.values())
        if len(steps) != 1:
            raise PeerError(f"parameter server: workers asked for checkpoints at different "
                            f"steps {sorted(steps)}")
        if self.save is not None:
            self.save(steps.pop(), self.state_dict())
        for w in sorted(self.ckpt):
            self.t.send(Header(ACK, self.shard).encode(), w, tag=TAG_REPLY)
        self.ckpt.clear()

    def _finish(self) -> None:
        """Every worker is done: apply what is left of open rounds, send the last model."""
        self._close_rounds(force=True)
        self._answer_pulls()
        for w in self.final:
            self._reply(w, self.clocks[w], 0, 0.0)
        self.final.clear()

    def report(self) -> dict[str, Any]:
        return {"shard": self.shard, "pushes_applied": self.applied,
                "pushes_dropped": sum(self.dropped.values()),
                "dropped_by_worker": {str(w): n for w, n in self.dropped.items()},
                "pulls": self.pulls, "rounds": self.round, "max_staleness": self.max_staleness,
                "busy_seconds": self.busy_seconds, "bytes_pushed": self.bytes_in}
