"""The server loop of one parameter shard: messages, clocks and the pace — nothing about learning.

Reference: Li et al., "Scaling Distributed Machine Learning with the Parameter Server",
OSDI 2014 (ps-lite): the update rule is a handler the algorithm injects
(``set_request_handle``), so ``comm/`` never imports ``optim/`` or ``aggregate/``.

The loop is single-threaded: it blocks in an any-source receive (no spinning), with
the next request's receives already posted while it applies one (:mod:`.inbox`), and
keeps pulls that the pace does not allow yet in a list, answering them when a push or
a finishing worker moves the progress. Synchronous paces apply one round (all pushes of
a clock, summed in rank order, so the result does not depend on arrival order) through
the handler; asynchronous ones apply each push at once. Under a quorum, pushes for a
closed round are dropped and counted: every push is applied exactly once or counted.
With a bounded delay (``max_delay``, Zhang & Kwok 2014) a late push joins the open
round instead, and a round waits for every worker whose newest push would otherwise be
more than ``max_delay`` rounds old. Under a synchronous pace a pull is never answered
while the requester's own push still waits in an open round (it reads its writes).
A compressed push (``FLAG_COMPRESSED``) is decoded by the injected decoder first.

One clock for every pace: while rank 0 evaluates (its ``EVAL`` until its next message)
every pull is held, so no worker runs ahead during time that rank 0's wall clock
excludes (each finishes at most the step it is in, up to its next pull); the time a pull
is held for that pause is not reported as held (pace) time.

A worker lost (``[faults] on_worker_loss = "continue"``, an injected ``membership``): the
server learns it from the launcher (its inbox asks while it waits, as an any-source
receive does not fail when a sender dies; when gloo fails it anyway, over a message the
dead worker had announced, the inbox receives per worker until the regroup), drops the
worker from the pace's count (a BSP round closes with the survivors' pushes and the dead
worker's pushes received whole; a push it was still sending is dropped whole), answers
every survivor's next pull with a ``FLAG_REGROUP`` reply instead of parameters, and once
all of them had one it forms the new group with them (``membership.regroup``) and serves
on under their new ranks. A server that dies is not survived: its shard is gone (the
survivors stop with one line).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import torch

from distml.comm.pace import BoundedDelay, Pace, Quorum
from distml.comm.ps.inbox import Inbox, Message, ReceiveFailed
from distml.comm.ps.wire import (ACK, CHECKPOINT, DONE, EVAL, FLAG_COMPRESSED, FLAG_REGROUP, FLAG_STOP,
                                 PULL, PUSH, REPLY, STOP, TAG_REPLY, TAG_REPLY_PAYLOAD, Header)
from distml.errors import PeerError

_NEVER = 1 << 62
log = logging.getLogger("distml")


class UpdateRule(Protocol):
    """What the algorithm injects: apply ``total`` (the sum of ``count`` pushes) to ``params``.

    ``aux`` is the float the pushes carried (e.g. the learning rate). The rule owns its
    state (optimizer moments) and makes it checkpointable.
    """

    def __call__(self, params: torch.Tensor, total: torch.Tensor, count: int, aux: float) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Membership(Protocol):
    """What the algorithm injects under ``on_worker_loss = "continue"`` (runtime/elastic.py).

    ``lost(error)``: the workers (ranks of the current transport) the launcher saw die; with
    ``error`` (a failed receive) it waits a few seconds for one to be named and re-raises
    ``error`` if none is. Raises ``PeerError`` when a server died. ``regroup(error)``: form
    the survivors' new group; returns it and each surviving worker's new rank by old rank.
    """

    def lost(self, error: PeerError | None = None) -> list[int]: ...
    def regroup(self, error: PeerError) -> tuple[Any, dict[int, int]]: ...


class _WorkerLost(Exception):
    """Raised by the inbox's watch: these workers died."""

    def __init__(self, ranks: list[int]):
        super().__init__(f"workers {ranks} died")
        self.ranks = ranks


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
        max_delay: bounded delay in rounds (see :class:`~distml.comm.pace.BoundedDelay`):
            late pushes join the open round instead of being dropped; None drops them.
        decoder: decodes compressed pushes (:class:`~distml.comm.ps.codec.PushDecoder`).
        membership: survive a worker's death (:class:`Membership`); None: a dead worker
            fails the server at the timeout, as before.

    Raises:
        ValueError: a quorum or a bounded delay with an asynchronous pace.
    """

    def __init__(self, transport, shard: int, params: torch.Tensor, workers: list[int], pace: Pace,
                 rule: UpdateRule, quorum: int | None = None,
                 save: Callable[[int, dict], None] | None = None, max_delay: int | None = None,
                 decoder=None, membership: Membership | None = None):
        if quorum is not None and not pace.synchronous:
            raise ValueError(f"a quorum needs the bsp pace, got {pace.name}")
        if max_delay is not None and not pace.synchronous:
            raise ValueError(f"a bounded delay needs the bsp pace, got {pace.name}")
        self.t, self.shard, self.params, self.pace, self.rule = transport, shard, params, pace, rule
        self.workers = list(workers)
        self._quorum_k = quorum
        self.quorum = Quorum(quorum if quorum is not None else len(workers), len(workers))
        self.delay = None if max_delay is None else BoundedDelay(max_delay)
        self.decoder = decoder
        self.save = save
        self.last = {w: -1 for w in self.workers}      # the round that took w's newest push
        self.delay_max = 0                             # oldest contribution a closed round used
        self.late = 0                                  # pushes that joined a later round
        self.active = set(self.workers)
        self.clocks = {w: 0 for w in self.workers}     # pushes received from each worker
        self.round = 0                                 # closed rounds (synchronous paces)
        self.rounds: dict[int, dict[int, torch.Tensor]] = {}   # open rounds: clock -> worker -> push
        self.aux: dict[int, float] = {}
        self.applied = 0
        self.dropped = {w: 0 for w in self.workers}
        self.pulls = 0
        self.max_staleness = 0
        self.held: list[tuple[int, int, float, float]] = []   # (worker, clock, since, paused by then)
        self.final: list[int] = []                     # workers waiting for the last model
        self.ckpt: dict[int, int] = {}                 # worker -> step it asked to checkpoint
        self.stop = False                              # rank 0 asked everyone to stop (target met)
        self.evaluating: set[int] = set()              # workers evaluating until their next message
        self.paused_seconds = 0.0                      # closed evaluation pauses, in total
        self._pause_start: float | None = None
        self.busy_seconds = 0.0
        self._last_heard = {w: time.monotonic() for w in self.workers}
        self.membership = membership
        self.regrouping: set[int] = set()              # survivors still to be told to regroup
        self._loss: PeerError | None = None            # the loss being regrouped from
        self.workers_lost = 0
        self._gone: set[int] = set()                   # their ranks, until the new group forms
        self.inbox = self._inbox()

    def _inbox(self) -> Inbox:
        watch = None if self.membership is None else self._watch
        return Inbox(self.t, sorted(self.active), self.params, self.shard, watch=watch)

    def _watch(self) -> None:
        dead = [w for w in self.membership.lost() if w in self.active]
        if dead:
            raise _WorkerLost(dead)

    # ---- state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"params": self.params.clone(), "rule": self.rule.state_dict(),
                "clocks": dict(self.clocks), "round": self.round,
                "rounds": {c: {w: t.clone() for w, t in d.items()} for c, d in self.rounds.items()},
                "aux": dict(self.aux), "applied": self.applied, "dropped": dict(self.dropped),
                "pulls": self.pulls, "max_staleness": self.max_staleness,
                "last": dict(self.last), "delay_max": self.delay_max, "late": self.late,
                "decoder": None if self.decoder is None else self.decoder.state_dict()}

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
        self.last = {int(w): int(r) for w, r in s.get("last", self.last).items()}
        self.delay_max, self.late = int(s.get("delay_max", 0)), int(s.get("late", 0))
        if self.decoder is not None and s.get("decoder") is not None:
            self.decoder.load_state_dict(s["decoder"])

    # ---- the loop -----------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Serve until every worker is done; returns the shard's counters."""
        while self.active or self.held or self.final:
            message = self._next_message()
            t0 = time.perf_counter()
            self._last_heard[message.sender] = time.monotonic()
            self._end_pause(message.sender)
            self._handle(message)
            self.busy_seconds += time.perf_counter() - t0
            if not self.active:
                self._finish()
        return self.report()

    def _next_message(self) -> Message:
        """The next request; while a worker evaluates the wait is the evaluation's limit
        (the collective algorithms' rule), else the transport's timeout."""
        while True:
            limit = self.t.eval_wait_s if self.evaluating & self.active else None
            try:
                return self.inbox.next(limit)
            except _WorkerLost as e:
                self._lose(e.ranks)
            except PeerError as e:
                if self.membership is None:
                    self._silent(limit)
                inbox, lost = self.inbox, self.membership.lost(e)
                dead = [w for w in lost if w in self.active]
                if dead:
                    self._lose(dead)
                source = e.source if isinstance(e, ReceiveFailed) else -1
                if self.inbox is not inbox or (source is not None and source in self._gone):
                    continue    # the old group's, or a dead worker's receive: dropped whole
                if source is None:
                    # gloo failed the any-source receive over a message a dead worker had
                    # announced, and would fail every later one: receive per worker until
                    # the survivors regroup (comm/ps/inbox.py)
                    log.warning("parameter server rank %d (shard %d): a receive failed after "
                                "workers %s died (%s); receiving from each of workers %s until "
                                "they regroup", self.t.global_rank, self.shard,
                                sorted(self._gone), str(e).splitlines()[0][:300],
                                sorted(self.regrouping))
                    inbox.receive_from_each()
                    continue
                if source >= 0:     # a live worker's receive failed: it cannot be told
                    raise PeerError(f"parameter server rank {self.t.global_rank} (shard "
                                    f"{self.shard}): the receive from worker {source} failed "
                                    f"after workers {sorted(self._gone)} died: {e}") from None
                if not dead:
                    self._silent(limit)

    def _silent(self, limit: float | None):
        """No message in time: name the workers by how long each has been silent."""
        now = time.monotonic()
        silent = sorted(self.active, key=lambda w: self._last_heard[w])
        names = ", ".join(f"rank {w} ({now - self._last_heard[w]:.0f} s)" for w in silent)
        raise PeerError(f"parameter server rank {self.t.global_rank} (shard {self.shard}): no "
                        f"message within {limit or self.t.timeout.total_seconds():g} s; silent workers: "
                        f"{names or 'none'} — a worker died or stalled") from None

    # ---- a worker lost (on_worker_loss = "continue") --------------------------------------
    def _lose(self, dead: list[int]) -> None:
        """Count the survivors only from now on, and tell each to regroup (its pull's reply)."""
        gone = set(dead)
        self.workers_lost += len(gone)
        self._gone |= gone
        self.active -= gone
        self.inbox.forget(gone)
        self.evaluating -= gone
        self.final = [w for w in self.final if w not in gone]
        for w in gone:
            self.ckpt.pop(w, None)
        if self._loss is None:
            self._loss = PeerError(f"parameter server rank {self.t.global_rank}: workers "
                                   f"{sorted(gone)} died")
        self.regrouping = (self.regrouping | self.active) - gone
        held, self.held = self.held, []
        for w, clock, _, _ in held:
            if w not in gone:
                self._tell_to_regroup(w, clock)
        self._maybe_regroup()

    def _tell_to_regroup(self, w: int, clock: int) -> None:
        self.regrouping.discard(w)
        self.inbox.told_to_regroup(w)       # it sends nothing more in this group
        hdr = Header(REPLY, self.shard, clock, self.params.numel(), flags=FLAG_REGROUP).encode()
        self.t.send(hdr, w, tag=TAG_REPLY)
        self.t.send(self.params, w, tag=TAG_REPLY_PAYLOAD)   # the pull posted a receive for it

    def _maybe_regroup(self) -> None:
        """Every survivor was told: form the new group with them, renumber the workers."""
        if self.regrouping or self._loss is None:
            return
        self.inbox.close()
        transport, moved = self.membership.regroup(self._loss)
        self.t, self._loss, self._gone = transport, None, set()

        def remap(d: dict) -> dict:     # the dead worker's pushes stay, under a key of its own
            return {moved.get(w, -1 - w): v for w, v in d.items()}

        self.workers = sorted(moved.values())
        self.active = {moved[w] for w in self.active}
        self.evaluating = {moved[w] for w in self.evaluating}
        self.clocks, self.last, self.dropped = remap(self.clocks), remap(self.last), remap(self.dropped)
        self.rounds = {c: remap(got) for c, got in self.rounds.items()}
        self._last_heard = {w: time.monotonic() for w in self.workers}
        if self._quorum_k is None:
            self.quorum = Quorum(len(self.workers), len(self.workers))
        self.inbox = self._inbox()

    def _handle(self, message: Message) -> None:
        w, h = message.sender, message.header
        if w in self._gone:
            return      # the rest of a lost worker's messages: dropped whole
        if h.op == PULL and w in self.regrouping:
            self._tell_to_regroup(w, h.clock)
            self._close_rounds()
            self._maybe_regroup()
            return
        if h.op == PUSH:
            self._push(w, h, message.payload)
        elif h.op == PULL:
            self.held.append((w, h.clock, time.perf_counter(), self._paused_so_far()))
        elif h.op == CHECKPOINT:
            self.ckpt[w] = h.clock
        elif h.op == STOP:
            self.stop = True
        elif h.op == EVAL:
            self.evaluating.add(w)
            if self._pause_start is None:
                self._pause_start = time.perf_counter()
        elif h.op == DONE:
            self.active.discard(w)
            if h.arg0:
                self.final.append(w)
        else:
            raise PeerError(f"parameter server: unexpected {h.op} message from rank {w}")
        self._close_rounds()
        self._answer_pulls()
        self._maybe_checkpoint()

    def _push_values(self, w: int, h: Header, payload: torch.Tensor) -> torch.Tensor:
        """The push's values: as received, or a codec's message decoded."""
        if not h.flags & FLAG_COMPRESSED:
            return payload
        if self.decoder is None:
            raise PeerError(f"parameter server shard {self.shard}: a compressed push from rank {w}, "
                            "but this server has no codec")
        return self.decoder.decode(w, payload)

    def _push(self, w: int, h: Header, payload: torch.Tensor) -> None:
        value = self._push_values(w, h, payload)
        self.clocks[w] = max(self.clocks[w], h.clock + 1)
        if not self.pace.synchronous:
            self.rule(self.params, value, 1, h.aux)
            self.applied += 1
            return
        clock = h.clock
        if clock < self.round:          # its round closed without it
            if self.delay is None:      # quorum (backup workers): drop, count
                self.dropped[w] += 1
                return
            clock = self.round          # bounded delay: it joins the open round, late
            self.late += 1
        got = self.rounds.setdefault(clock, {})
        got[w] = got[w] + value if w in got else value.clone()
        self.aux.setdefault(clock, h.aux)

    def _close_rounds(self, force: bool = False) -> None:
        while self.round in self.rounds:
            got = self.rounds[self.round]
            # a lost worker's push received whole is applied with its round, but the round
            # waits for the survivors' (it is keyed by its old rank or, after the new group
            # formed, by a negative one)
            alive = sum(1 for w in got if w >= 0 and w not in self._gone)
            if not (force or (self.quorum.closes(alive, len(self.active))
                              and not self._waits_for_overdue(got))):
                return
            total = got[min(got)].clone()
            for w in sorted(got)[1:]:            # rank order: deterministic sums
                total.add_(got[w])
            self.rule(self.params, total, len(got), self.aux.pop(self.round))
            self.applied += len(got)
            absent = [w for w in self.active if w not in got]
            self.delay_max = max([self.delay_max] + [self.round - self.last[w] for w in absent])
            for w in got:
                self.last[w] = self.round
            del self.rounds[self.round]
            self.round += 1

    def _waits_for_overdue(self, got: dict[int, torch.Tensor]) -> bool:
        """Bounded delay: an active worker would be too stale if this round closed without it."""
        if self.delay is None:
            return False
        return any(w not in got for w in self.delay.overdue(self.round, self.last, self.active))

    def progress(self) -> int:
        """Closed rounds (synchronous) or the slowest active worker's clock (asynchronous)."""
        if self.pace.synchronous:
            return self.round if self.active else _NEVER
        return min((self.clocks[w] for w in self.active), default=_NEVER)

    def _end_pause(self, w: int) -> None:
        """A message from an evaluating worker: its evaluation is over."""
        if w in self.evaluating:
            self.evaluating.discard(w)
            if not self.evaluating and self._pause_start is not None:
                self.paused_seconds += time.perf_counter() - self._pause_start
                self._pause_start = None

    def _paused_so_far(self) -> float:
        now = time.perf_counter()
        return self.paused_seconds + (now - self._pause_start if self._pause_start is not None else 0.0)

    def _answer_pulls(self) -> None:
        if self.evaluating & self.active:      # one clock: nobody runs ahead while rank 0 evaluates
            return
        progress = self.progress()
        pending = {w for got in self.rounds.values() for w in got}
        keep = []
        for w, clock, since, paused in self.held:
            if w not in pending and self.pace.ready(clock, progress):
                lag = self.pace.lag(clock, progress) if progress != _NEVER else 0
                held = time.perf_counter() - since - (self._paused_so_far() - paused)
                self._reply(w, clock, lag, max(0.0, held))
            else:
                keep.append((w, clock, since, paused))
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
                "delay_max": self.delay_max if self.pace.synchronous else None,
                "late_pushes": self.late, "eval_paused_seconds": self.paused_seconds,
                "workers_lost": self.workers_lost,
                "busy_seconds": self.busy_seconds, "bytes_pushed": self.inbox.bytes_in}
