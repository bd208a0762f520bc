"""A small per-rank ring buffer of the transport's operations, for hang reports.

Every collective and point-to-point call through :class:`~distml.comm.transport.Transport`
leaves one record here: the operation, its sequence number (per operation kind, so the
k-th ``all_reduce`` of every rank carries the same number), the peer, the bytes, when
it started and when it ended (None while it runs). A watchdog (runtime/hang.py) reads
the buffer when a rank makes no progress; the hot path only appends and stamps.

The buffer is a fixed-size ``deque``: old records fall off, nothing grows. The watchdog
thread reads while the training thread writes; under the GIL each append and each
stamp is atomic, and a report that is one record stale is still a true report.
"""

from __future__ import annotations

import time
from collections import deque

# record fields, by position (a list per record: cheaper than an object on the hot path)
OP, SEQ, PEER, NBYTES, START, END, WORK, LIMIT = range(8)


class OpLog:
    """The last ``size`` operations of one rank.

    Args:
        size: how many records to keep.
    """

    def __init__(self, size: int = 256):
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self.records: deque[list] = deque(maxlen=size)
        self.counts: dict[str, int] = {}

    def begin(self, op: str, peer: int | None, nbytes: int, start: float,
              limit_s: float | None = None) -> list:
        """Record that ``op`` started at ``start`` (``time.perf_counter()``); returns the record,
        which :meth:`end` stamps. ``limit_s``: the op's own wait limit where it differs from the
        transport's (a barrier given a longer one)."""
        seq = self.counts.get(op, 0) + 1
        self.counts[op] = seq
        rec = [op, seq, peer, nbytes, start, None, None, limit_s]
        self.records.append(rec)
        return rec

    @staticmethod
    def end(rec: list, at: float | None = None) -> None:
        rec[END] = time.perf_counter() if at is None else at

    def abandon(self, at: float | None = None) -> None:
        """Every unfinished operation ended with its group (a dead peer, runtime/elastic.py):
        stamp it finished, so the watchdog does not report it as a hang, and drop its work
        item, whose buffers would keep the group's connections open."""
        at = time.perf_counter() if at is None else at
        for rec in self.records:
            if rec[END] is None:
                rec[END] = at
            rec[WORK] = None

    @staticmethod
    def attach(rec: list, work) -> None:
        """An async op: its work item tells the watchdog whether it finished unwaited."""
        rec[WORK] = work

    def snapshot(self, now: float | None = None) -> dict:
        """The buffer as JSON-able data, times relative to ``now``.

        Returns:
            ``{"running": [...], "last_finished": {op: seq}, "records": [...]}``; each record
            has ``op, seq, peer, bytes, age_s`` (since it started) and ``took_s`` (None while
            it runs); ``last_finished`` is the highest finished sequence number per op.
        """
        now = time.perf_counter() if now is None else now
        out, running, last = [], [], {}
        for rec in list(self.records):
            end = rec[END]
            if end is None and rec[WORK] is not None and _completed(rec[WORK]):
                end = now          # an async op that finished and was not waited on yet
            item = {"op": rec[OP], "seq": rec[SEQ], "peer": rec[PEER], "bytes": rec[NBYTES],
                    "age_s": round(now - rec[START], 3),
                    "took_s": None if end is None else round(end - rec[START], 6),
                    "limit_s": rec[LIMIT]}
            out.append(item)
            if end is None:
                running.append(item)
            else:
                last[rec[OP]] = max(last.get(rec[OP], 0), rec[SEQ])
        return {"running": running, "last_finished": last, "records": out}

    def oldest_running(self, now: float) -> tuple[float, float | None] | None:
        """``(age_s, limit_s)`` of the longest-running op, or None when none runs."""
        for rec in list(self.records):
            if rec[END] is None and not (rec[WORK] is not None and _completed(rec[WORK])):
                return now - rec[START], rec[LIMIT]
        return None


def _completed(work) -> bool:
    try:
        return bool(work.is_completed())
    except Exception:      # a broken group: treat it as still running (it is not done)
        return False
