"""Keep training when a worker dies: the survivors regroup in place (issue 18).

``[faults] on_worker_loss = "continue"``: when a peer dies, every survivor's pending
operation fails within a fraction of a second (its TCP connection is reset); the
survivor then

1. tears its side of the broken group down, so a survivor still blocked on *it* fails at
   once too (a cascade instead of a wait for ``comm.timeout_s``);
2. learns who died from the local launcher, which records every rank's end in its
   rendezvous store (:data:`EXIT_KEY`);
3. forms a new process group with the other survivors over a fresh prefix of the same
   store (:meth:`~distml.comm.transport.Transport.rejoin`), ranks renumbered in their old
   order — no process restarts, nothing is read from a checkpoint;
4. agrees with them on the last completed step: each says how many steps it completed
   and whether its step in flight had already applied its local update (local SGD
   fails in its averaging, after the optimizer step); ranks behind the most advanced
   one take its model, optimizer, schedule and algorithm state by broadcast
   (:mod:`distml.comm.state_transfer`);
5. re-partitions the data among the survivors (the same partition over N−1 shards, the
   step index unchanged) and lets the algorithm adapt (``Algorithm.regroup``); a step
   whose local update was applied finishes its communication among the survivors, a
   step that failed before it is run again from its start on the new shards.

This is the model of torchft and Horovod Elastic (in-memory state, a new communicator)
rather than TorchElastic's (restart every process, reload a checkpoint). Below
``min_workers`` survivors the run stops with one line naming the limit.

With ``--max-restarts`` the launcher also starts a replacement per lost worker, which
joins the running group (:meth:`Survivors.between_steps`): it asks in the store, rank 0
announces the next join point (``Algorithm.is_join_point``: no rank can pass it before
reading the announcement), the members form a new group there with the newcomers last,
and group rank 0 broadcasts its training state to them (docs/faults.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass

import torch

from distml.comm.state_transfer import broadcast_state
from distml.comm.transport import Transport
from distml.errors import PeerError

log = logging.getLogger("distml")

#: set by the local launcher: how a rank ended (a survivor reads who died from it)
EXIT_KEY = "distml/exit/{rank}"
#: how long a survivor waits for the launcher to name a dead peer before it treats the
#: failure as something else (a partition, a hang) and gives up
DEAD_PEER_WAIT_S = 5.0
#: the phrase every "too few workers left" error carries (the launcher reports it first)
BELOW_MIN_WORKERS = "fewer than faults.min_workers"
#: the phrase of the error when a rank that is no worker (a parameter server) died: the
#: state it held is gone, nothing can continue (the launcher reports it first)
LOST_SERVER = "the model state it held is lost"
#: a replacement's request to join: its incarnation (replacements of one launch rank count 1, 2, …)
JOIN_KEY = "distml/elastic/join/{rank}"
#: rank 0's announcement: who joins the group of ``generation`` after ``step`` steps
PLAN_KEY = "distml/elastic/plan/{generation}/{step}"
#: a replacement's seat in the new group (per incarnation: a stale seat is never taken)
SEAT_KEY = "distml/elastic/seat/{rank}/{incarnation}"
#: rank 0 finished training: no replacement is admitted any more
FINISHED_KEY = "distml/elastic/finished"


def incarnation_key(key: str, incarnation: int) -> str:
    """``key`` (an exit or error key of a launch rank) for its ``incarnation``-th replacement."""
    return key if not incarnation else f"{key}.{incarnation}"


@dataclass
class MembershipChange:
    """One regrouping, as ``summary.json["membership"]`` and the rank logs record it."""

    step: int                  # the step the survivors continued from
    left: list[int]            # the launch ranks that died
    workers: int               # workers after the change
    recovery_seconds: float    # from this rank's failed operation to the new group agreeing
    failed_at: float           # unix time of the failure on rank 0 of the new group
    resumed_at: float          # unix time training resumed
    next_step_at: float | None = None   # unix time the first step after it completed
    phases: dict | None = None   # seconds per phase on this rank: leave, dead, rejoin, agree


@dataclass
class Admission:
    """A replacement joining, as ``summary.json["membership"]`` records it."""

    step: int                  # the step the group, the newcomers included, went on from
    joined: list[int]          # the launch ranks that joined
    workers: int               # workers after the change
    admission_seconds: float   # on this rank: from the join point to the state received
    transfer_seconds: float    # the state's broadcast
    state_bytes: int           # what the lead sent (JSON structure and tensor bytes)
    admitted_at: float         # unix time the group went on
    next_step_at: float | None = None   # unix time the first step after it completed
    join_seconds: float | None = None   # a newcomer's process start to its first completed step
    startup_seconds: float | None = None   # of which: its start-up until it asked to join


@dataclass
class Replacement:
    """What the launcher tells a process it starts in place of a lost worker."""

    incarnation: int           # 1 for a launch rank's first replacement, 2 for the next, …
    started_at: float          # unix time the launcher started the process
    asked_at: float | None = None   # unix time it asked to join (start-up and build done)


class GroupGrew(Exception):
    """A replacement joined after ``step`` steps: the loop reads the new shards from there."""

    def __init__(self, step: int):
        super().__init__(step)
        self.step = step


class Survivors:
    """The worker group as it shrinks: who is in it and what happened to it.

    Args:
        store: the launcher's rendezvous store (a client).
        launch_rank: this worker's rank at launch (the name the launcher and logs use).
        world: workers at launch.
        min_workers: ``[faults] min_workers``.
        servers: the last ``servers`` ranks of the world are no workers (a parameter
            server's servers): they take part in every new group, after the workers, and
            their death cannot be survived (the shard of the model they held is gone).
        admit: replacements may join (``--max-restarts``; never with servers).
        join_wait_s: ``[faults] join_wait_s``.
    """

    def __init__(self, store, launch_rank: int, world: int, min_workers: int, servers: int = 0,
                 admit: bool = False, join_wait_s: float = 0.0):
        self.store = store
        self.launch_rank = launch_rank
        self.world = world
        self.members = list(range(world))   # launch ranks, in the order of their group ranks
        self.servers = list(range(world - servers, world))
        self.incarnations = [0] * world     # of each launch rank (its replacements count up)
        self.min_workers = min_workers
        self.admit = admit                  # replacements may join (--max-restarts)
        self.join_wait_s = join_wait_s      # rank 0 holds the first join point after a loss
        self._hold_until: float | None = None
        self.generation = 0                 # regroupings so far (each meets on a new prefix)
        self.changes: list[MembershipChange | Admission] = []
        self.replacement: Replacement | None = None   # this process replaced a lost worker

    def dead_now(self) -> list[int]:
        """The other members the launcher has seen die so far (no wait)."""
        keys = {r: incarnation_key(EXIT_KEY.format(rank=r), self.incarnations[r])
                for r in self.members if r != self.launch_rank}
        return [r for r, k in keys.items() if self.store.check([k])]

    def wait_dead(self, error: PeerError) -> list[int]:
        """The members the launcher saw die; re-raises ``error`` if it names none in time."""
        deadline = time.monotonic() + DEAD_PEER_WAIT_S
        while True:
            dead = self.dead_now()
            if dead:
                return dead
            if time.monotonic() > deadline:
                raise error      # nobody died: a partition or a hang, not a worker loss
            time.sleep(0.01)

    def check_servers(self, dead: list[int]) -> None:
        """Raise if a server is among ``dead``: the shard it held is gone with it."""
        lost = [r for r in dead if r in self.servers]
        if lost:
            raise PeerError(f"rank {self.launch_rank}: server rank {lost[0]} died and {LOST_SERVER} "
                            "(faults.on_worker_loss = 'continue' survives workers only); stopping")

    def recover(self, loop, error: PeerError, done: int, applied: bool) -> int:
        """Regroup after ``error`` and return the step every survivor continues from.

        Args:
            loop: the :class:`~distml.runtime.loop.TrainLoop` (its transport, state and
                data are replaced).
            done: steps this rank completed.
            applied: the step in flight (``done``) already applied its optimizer step.

        Raises:
            PeerError: nobody died (the original error), a server died, fewer than
                ``min_workers`` are left, or the survivors could not meet.
        """
        t0, failed_at = time.perf_counter(), time.time()
        _, new, dead, marks = self.rejoin(loop.transport, error)
        views = new.all_gather_json([done, applied, failed_at])
        # the most advanced rank leads: most steps, then a completed one over one in flight
        lead = max(range(len(views)), key=lambda r: (views[r][0], not views[r][1], -r))
        step, pending = views[lead][0], bool(views[lead][1])
        if any((d, bool(a)) != (step, pending) for d, a, _ in views):
            state = broadcast_state(new, loop.transfer_state() if new.rank == lead else None, lead)
            if new.rank != lead:
                loop.load_transfer_state(state)
        loop.regroup(new)
        if pending:     # finish the step's communication among the survivors
            loop.parts.algorithm.after_step(step)
            step += 1
        marks.append(time.perf_counter())
        phases = dict(zip(("leave", "dead", "rejoin", "agree"),
                          (round(b - a, 4) for a, b in zip([t0, *marks], marks))))
        change = MembershipChange(step=step, left=dead, workers=new.world_size,
                                  recovery_seconds=time.perf_counter() - t0,
                                  failed_at=min(v[2] for v in views), resumed_at=time.time(),
                                  phases=phases)
        self.changes.append(change)
        log.warning("membership: %s left; continuing with %d workers from step %d "
                    "(recovered in %.2f s: %s)", ", ".join(f"rank {r}" for r in dead),
                    new.world_size, step, change.recovery_seconds, phases)
        return step

    def rejoin(self, old, error: PeerError):
        """Leave the broken group and form the survivors' new one (steps 1–3 above).

        Every survivor calls it, workers and servers alike. Returns ``(world, workers,
        dead, marks)``: the new group of every survivor, the transport of the workers
        among them (the world itself when there are no servers; None on a server), the
        launch ranks that died, and the ``perf_counter`` time after each phase.

        Raises:
            PeerError: nobody died (the original error), a server died, or fewer than
                ``min_workers`` workers are left.
        """
        _drop_frames(error)   # they hold the work items in flight, which hold the connections
        old.leave_broken()    # our connections close: survivors blocked on us fail now too
        marks = [time.perf_counter()]
        dead = self.wait_dead(error)
        marks.append(time.perf_counter())
        survivors = [r for r in self.members if r not in dead]
        left = ", ".join(f"rank {r}" for r in dead)
        self.check_servers(dead)
        workers = len(survivors) - len(self.servers)
        if workers < self.min_workers:
            raise PeerError(f"rank {self.launch_rank}: {workers} worker(s) left after "
                            f"{left} died, {BELOW_MIN_WORKERS} = {self.min_workers}; stopping")
        self.generation += 1
        world = old.rejoin(survivors.index(self.launch_rank), len(survivors),
                           f"distml/elastic/{self.generation}/")
        # every rank of the world takes part in making the workers' group (servers too)
        group = world.subgroup(range(workers)) if self.servers else world
        self.members = survivors
        self._hold_until = None          # set at the first join point from here
        marks.append(time.perf_counter())
        return world, group, dead, marks

    def step_completed(self) -> None:
        """The loop completed a step: stamp the first one after the last change."""
        if self.changes and self.changes[-1].next_step_at is None:
            self.changes[-1].next_step_at = time.time()

    # ---- replacements join (issue 18, point 2) -------------------------------------------
    def between_steps(self, loop, done: int) -> None:
        """At a step boundary: admit the replacements rank 0 announced for it, or (rank 0)
        announce the waiting ones for the next join point.

        Every rank reads the announcement at the same join point (``Algorithm.is_join_point``
        guarantees no rank passes it before rank 0 wrote it), so all take the same decision
        at the same step.

        Raises:
            GroupGrew: the group admitted replacements after ``done`` steps.
        """
        if not self.admit or len(self.members) >= self.world or \
                not loop.parts.algorithm.is_join_point(done, self.world):
            return
        plan = PLAN_KEY.format(generation=self.generation, step=done)
        if self.store.check([plan]):
            self._admit(loop, done, [tuple(x) for x in json.loads(self.store.get(plan))])
            raise GroupGrew(done)
        if loop.rank == 0:
            self._announce(loop, done)

    def _announce(self, loop, done: int) -> None:
        """Rank 0: the replacements waiting to join, for the next join point before the end.

        The first join point after a loss waits up to ``join_wait_s`` for a request (the
        others wait for rank 0 in their next collective meanwhile)."""
        algorithm, total = loop.parts.algorithm, loop.parts.total_steps
        point = next((s for s in range(done + 1, total) if algorithm.is_join_point(s, self.world)),
                     None)
        if point is None:           # the run ends first
            return
        if self._hold_until is None:
            self._hold_until = time.monotonic() + self.join_wait_s
        while True:
            waiting = self._requests()
            if waiting or time.monotonic() >= self._hold_until:
                break
            time.sleep(0.02)
        if waiting:
            self.store.set(PLAN_KEY.format(generation=self.generation, step=point),
                           json.dumps(waiting))

    def _requests(self) -> list[tuple[int, int]]:
        """The replacements asking to join (launch rank, incarnation), the dead ones left out."""
        waiting = []
        for r in range(self.world):
            key = JOIN_KEY.format(rank=r)
            if r in self.members or not self.store.check([key]):
                continue
            incarnation = int(self.store.get(key))
            if not self.store.check([incarnation_key(EXIT_KEY.format(rank=r), incarnation)]):
                waiting.append((r, incarnation))      # (one that died waiting is not seated)
        return waiting

    def _admit(self, loop, done: int, joining: list[tuple[int, int]]) -> None:
        """Form the group with the newcomers (old members in their order, newcomers last)
        and send them the lead's training state."""
        t0 = time.perf_counter()
        after = self.members + [r for r, _ in joining]
        incarnations = list(self.incarnations)
        for r, incarnation in joining:
            incarnations[r] = incarnation
        generation = self.generation + 1
        prefix = f"distml/elastic/{generation}/"
        if loop.rank == 0:
            for r, incarnation in joining:
                seat = {"prefix": prefix, "rank": after.index(r), "world": len(after), "step": done,
                        "generation": generation, "members": after, "incarnations": incarnations}
                self.store.set(SEAT_KEY.format(rank=r, incarnation=incarnation), json.dumps(seat))
                self.store.delete_key(JOIN_KEY.format(rank=r))
        old = loop.transport
        old.barrier()        # nothing of the old group is in flight when it is torn down
        new = old.rejoin(after.index(self.launch_rank), len(after), prefix)
        _, transfer, sent = self._transfer(loop, new)
        loop.regroup(new)
        self.members, self.incarnations, self.generation = after, incarnations, generation
        change = Admission(step=done, joined=[r for r, _ in joining], workers=len(after),
                           admission_seconds=time.perf_counter() - t0, transfer_seconds=transfer,
                           state_bytes=sent, admitted_at=time.time())
        self.changes.append(change)
        log.warning("membership: rank %s joined; continuing with %d workers from step %d "
                    "(admitted in %.2f s, state %d bytes in %.3f s)",
                    ", ".join(str(r) for r in change.joined), len(after), done,
                    change.admission_seconds, sent, transfer)

    @staticmethod
    def _transfer(loop, new: Transport) -> tuple[dict, float, int]:
        """Group rank 0 broadcasts its training state (a live peer's, at this step): a
        newcomer loads it, the others, who have their own (local SGD's momentum), drop it.
        Returns the state, the seconds and the bytes this rank sent or received."""
        # every member is at the transfer before the clock starts, as bench/elastic.py times
        # the plain broadcast it compares the transfer with
        new.barrier()
        t0, before = time.perf_counter(), new.stats.bytes_sent + new.stats.bytes_received
        state = broadcast_state(new, loop.transfer_state() if new.rank == 0 else None, 0)
        moved = new.stats.bytes_sent + new.stats.bytes_received - before
        return state, time.perf_counter() - t0, moved

    def take_seat(self, loop, seat: dict, replacement: Replacement) -> None:
        """A replacement in its new group: take the lead's state and the data position."""
        t0 = time.perf_counter()
        self.members, self.incarnations = list(seat["members"]), list(seat["incarnations"])
        self.generation, self.replacement = int(seat["generation"]), replacement
        state, transfer, received = self._transfer(loop, loop.transport)
        loop.load_transfer_state(state)
        loop.regroup(loop.transport)       # its shard among the new group, the algorithm adapted
        loop.start_step = int(seat["step"])
        self.changes.append(Admission(step=loop.start_step, joined=[self.launch_rank],
                                      workers=len(self.members),
                                      admission_seconds=time.perf_counter() - t0,
                                      transfer_seconds=transfer, state_bytes=received,
                                      admitted_at=time.time()))
        log.warning("membership: joined the running group as rank %d of %d at step %d",
                    loop.rank, len(self.members), loop.start_step)

    def finish(self, loop) -> None:
        """Rank 0 finished training: a replacement still waiting gives up."""
        if self.admit and loop.rank == 0:
            self.store.set(FINISHED_KEY, "1")

    def rank_record(self, model: torch.nn.Module) -> dict:
        """What rank 0 needs from this rank for the summary: the launch rank, a replacement's
        start and first completed step, and a digest of the model (replicas compared)."""
        digest = hashlib.sha256()
        for t in model.state_dict().values():
            digest.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        own = self.changes[0] if self.replacement is not None and self.changes else None
        return {"launch_rank": self.launch_rank, "model_sha256": digest.hexdigest(),
                "started_at": self.replacement.started_at if own else None,
                "asked_at": self.replacement.asked_at if own else None,
                "first_step_at": own.next_step_at if own else None}

    def summary(self, per_rank: list[dict] | None = None) -> list[dict]:
        """``membership``; an admission's ``join_seconds`` from the newcomers' own records."""
        out = [asdict(c) for c in self.changes]
        for entry in out:
            if "joined" not in entry:
                continue
            mine = [r for r in per_rank or []
                    if r and r.get("launch_rank") in entry["joined"] and r.get("first_step_at")]
            entry["join_seconds"] = round(max(r["first_step_at"] - r["started_at"] for r in mine),
                                          3) if mine else None
            # of which: the process's start-up and build, until it asked to join
            entry["startup_seconds"] = round(max(r["asked_at"] - r["started_at"] for r in mine),
                                             3) if mine else None
        return out


def await_seat(store, launch_rank: int, replacement: Replacement, wait_s: float) -> dict | None:
    """A replacement asks to join and waits for its seat; None: the run finished first.

    The seat is keyed by this process's incarnation, so a seat left for an earlier
    replacement of the same rank (one that died) is never taken.

    Raises:
        PeerError: no seat within ``wait_s``.
    """
    store.set(JOIN_KEY.format(rank=launch_rank), str(replacement.incarnation))
    replacement.asked_at = time.time()
    seat = SEAT_KEY.format(rank=launch_rank, incarnation=replacement.incarnation)
    deadline = time.monotonic() + wait_s
    while True:
        if store.check([seat]):
            return json.loads(store.get(seat))
        if store.check([FINISHED_KEY]):
            return None
        if time.monotonic() > deadline:
            raise PeerError(f"rank {launch_rank}: the running group did not admit this "
                            f"replacement within {wait_s:g} s")
        time.sleep(0.02)


def _drop_frames(error: BaseException) -> None:
    """Forget the tracebacks of ``error`` and its causes: their frames hold the failed
    step's handles, and a live handle keeps the broken group's connections open."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
