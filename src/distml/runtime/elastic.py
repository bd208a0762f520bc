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
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

from distml.comm.state_transfer import broadcast_state
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
    """

    def __init__(self, store, launch_rank: int, world: int, min_workers: int, servers: int = 0):
        self.store = store
        self.launch_rank = launch_rank
        self.members = list(range(world))   # launch ranks, in the order of their group ranks
        self.servers = list(range(world - servers, world))
        self.min_workers = min_workers
        self.changes: list[MembershipChange] = []
        self.generation = 0                 # new groups formed so far (their store prefixes)

    def dead_now(self) -> list[int]:
        """The other members the launcher has seen die so far (no wait)."""
        keys = {r: EXIT_KEY.format(rank=r) for r in self.members if r != self.launch_rank}
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
        marks.append(time.perf_counter())
        return world, group, dead, marks

    def step_completed(self) -> None:
        """The loop completed a step: stamp the first one after the last change."""
        if self.changes and self.changes[-1].next_step_at is None:
            self.changes[-1].next_step_at = time.time()

    def summary(self) -> list[dict]:
        return [asdict(c) for c in self.changes]


def _drop_frames(error: BaseException) -> None:
    """Forget the tracebacks of ``error`` and its causes: their frames hold the failed
    step's handles, and a live handle keeps the broken group's connections open."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        e.__traceback__ = None
        e = e.__cause__ or e.__context__
