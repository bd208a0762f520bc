"""Hang reports: which rank waits in which operation, and which rank it waits for.

Every rank runs a :class:`HangWatch` thread over its transport's
:class:`~distml.comm.oplog.OpLog`. When an operation has run for
:data:`REPORT_AT` of its wait limit (``comm.timeout_s``; gloo itself gives up at the
limit and the rank exits, so the report comes just before), the rank

1. publishes its state under :data:`REPORT_KEY` in the launcher's rendezvous store and
   raises :data:`HANG_KEY` there, so every other rank's watch reports too (a rank that
   stopped outside any operation cannot notice on its own), and
2. appends the state, its whole ring buffer and every thread's Python stack
   (``faulthandler``) to its log, ``logs/rank{r}.log``.

The launcher reads the states from the store and prints one line from
:func:`diagnose`, e.g. ``rank 0 waits in all_reduce #7 since 3.2 s; rank 1 last finished
all_reduce #6 and is in no operation``; ``distml doctor RUN_DIR`` prints the same from
the logs afterwards (:func:`diagnose_run`). The idea is NCCL's flight recorder
(PyTorch's ``TORCH_NCCL_TRACE_BUFFER_SIZE``), kept to the transport's own calls.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import threading
import time
from pathlib import Path

from distml.comm.oplog import OpLog
from distml.errors import UserError
from distml.runtime.rundir import rank_log_path

HANG_KEY = "distml/hang"              # raised by the first rank that sees a stall
REPORT_KEY = "distml/hang/{rank}"     # each rank's state (JSON) once a stall is seen
LOG_MARK = "distml hang report: "     # the line in logs/rank{r}.log that `distml doctor` reads
REPORT_AT = 0.8                       # report at this share of an op's wait limit
COLLECT_S = 2.0                       # the launcher waits this long for the other ranks' states


class HangWatch:
    """The watchdog thread of one rank.

    Args:
        oplog: the transport's ring buffer.
        rank: this rank (the world rank).
        timeout_s: the transport's wait limit (``comm.timeout_s``).
        log_path: this rank's log file.
        store: the launcher's rendezvous store, or None (under torchrun: the report then
            goes to this rank's log only).
    """

    def __init__(self, oplog: OpLog, rank: int, timeout_s: float, log_path: Path, store=None):
        self.oplog, self.rank, self.timeout_s = oplog, rank, timeout_s
        self.log_path, self.store = Path(log_path), store
        self.poll_s = min(1.0, max(timeout_s / 20, 0.05))
        self.reported = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="distml-hang-watch", daemon=True)

    def start(self) -> HangWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def stalled(self, now: float) -> bool:
        """Whether an operation has run for :data:`REPORT_AT` of its limit."""
        oldest = self.oplog.oldest_running(now)
        if oldest is None:
            return False
        age, limit = oldest
        return age >= REPORT_AT * (limit if limit is not None else self.timeout_s)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s) and not self.reported:
            try:
                stalled = self.stalled(time.perf_counter())
                if stalled or (self.store is not None and self.store.check([HANG_KEY])):
                    self.report(stalled)
            except Exception as e:     # a watchdog must never take the worker down
                logging.getLogger("distml").warning("hang watch stopped: %s", e)
                return

    def report(self, stalled: bool) -> dict:
        """Publish this rank's state and write it, the buffer and the stacks to the log."""
        self.reported = True
        snap = self.oplog.snapshot()
        state = {"rank": self.rank, "stalled": stalled, "running": snap["running"],
                 "last_finished": snap["last_finished"], "at": time.time()}
        if self.store is not None:
            try:
                self.store.set(REPORT_KEY.format(rank=self.rank), json.dumps(state))
                if stalled:
                    self.store.set(HANG_KEY, str(self.rank))
            except Exception:     # the launcher is gone: the log below still tells
                pass
        for h in logging.getLogger("distml").handlers:     # keep the log's lines in order
            h.flush()
        with open(self.log_path, "a", encoding="utf-8") as f:
            f.write(LOG_MARK + json.dumps(state) + "\n")
            f.write("distml hang report: last operations (oldest first): "
                    + json.dumps(snap["records"]) + "\n")
            f.write("distml hang report: Python stacks of every thread:\n")
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        return state


class HangCollector:
    """The launcher's side: once a rank raised :data:`HANG_KEY`, gather the states and
    make one line (once per run)."""

    def __init__(self, world: int):
        self.world = world
        self.first_seen: float | None = None
        self.done = False

    def poll(self, store) -> str | None:
        """The diagnosis line when it is ready (every rank reported, or :data:`COLLECT_S`
        passed since the first report), else None."""
        if self.done:
            return None
        try:
            if self.first_seen is None:
                if not store.check([HANG_KEY]):
                    return None
                self.first_seen = time.monotonic()
            keys = {r: REPORT_KEY.format(rank=r) for r in range(self.world)}
            states = {r: json.loads(store.get(k).decode()) for r, k in keys.items() if store.check([k])}
        except Exception:      # the store went away with the run: nothing to say
            return None
        if len(states) < self.world and time.monotonic() - self.first_seen < COLLECT_S:
            return None
        self.done = True
        return diagnose(states, self.world)


def diagnose(states: dict[int, dict], world: int) -> str:
    """One line naming the waiting ranks, their operation and sequence number, and the
    ranks they wait for (those not in that operation), from the ranks' reported states."""
    waiting = {r: s["running"][0] for r, s in states.items() if s["running"]}
    if not waiting:
        return "no rank is inside an operation; " + "; ".join(
            _other(r, states.get(r), None) for r in range(world))
    first = max(waiting.values(), key=lambda op: op["age_s"])
    key = (first["op"], first["seq"])
    group = sorted(r for r, op in waiting.items() if (op["op"], op["seq"]) == key)
    since = max(waiting[r]["age_s"] for r in group)
    who = f"rank {group[0]} waits" if len(group) == 1 else \
        "ranks " + ", ".join(map(str, group)) + " wait"
    parts = [f"{who} in {_name(first)} since {since:.1f} s"]
    parts += [_other(r, states.get(r), first["op"]) for r in range(world) if r not in group]
    return "; ".join(parts)


def _name(op: dict) -> str:
    peer = ""
    if op["op"] in ("send", "recv"):
        direction = "to" if op["op"] == "send" else "from"
        peer = f" ({direction} {'any rank' if op['peer'] is None else 'rank ' + str(op['peer'])})"
    return f"{op['op']} #{op['seq']}{peer}"


def _other(rank: int, state: dict | None, op: str | None) -> str:
    if state is None:
        return f"rank {rank} did not report (dead, or not started)"
    if state["running"]:
        cur = state["running"][0]
        return f"rank {rank} waits in {_name(cur)} since {cur['age_s']:.1f} s"
    finished = state["last_finished"]
    if op is not None and op in finished:
        return f"rank {rank} last finished {op} #{finished[op]} and is in no operation"
    if op is not None:
        return f"rank {rank} never finished a {op} and is in no operation"
    return f"rank {rank} is in no operation"


def diagnose_run(run_dir: Path) -> str | None:
    """:func:`diagnose` from the reports in a run folder's logs; None when no rank reported.

    Raises:
        UserError: ``run_dir`` has no ``logs/`` folder.
    """
    run_dir = Path(run_dir)
    if not rank_log_path(run_dir, 0).parent.is_dir():
        raise UserError(f"{run_dir} is not a run folder (no logs/ in it)")
    states, world = {}, 0
    while rank_log_path(run_dir, world).exists():
        for line in rank_log_path(run_dir, world).read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith(LOG_MARK + "{"):
                states[world] = json.loads(line[len(LOG_MARK):])    # the last report counts
        world += 1
    return diagnose(states, world) if states else None
