"""The cost of recording one transport operation in the hang-report ring buffer.

Every collective and point-to-point call of :class:`~distml.comm.transport.Transport`
appends a record to its :class:`~distml.comm.oplog.OpLog` and stamps its end; this sits
on the hot path of sync SGD and the parameter server. Measured in one process, no
peers: ``record_ns`` is ``OpLog.begin`` + ``OpLog.end`` per op (what the transport adds;
it reuses the ``perf_counter`` reads its byte/time accounting already makes), and
``timed_noop_ns`` the whole accounting wrapper ``Transport._timed`` around an op that
does nothing (guard, record, stats) — the fixed cost any op pays — against
``unrecorded_noop_ns``, the same wrapper without the record (delay check, guard and
stats: what ``_timed`` did before the buffer). Best of ``--repeats`` timeit runs of ``--number``
calls each, the three interleaved within each repeat.

    python bench/oplog.py               # the documented run (docs/faults.md)
    python bench/oplog.py --quick       # smoke check, same code path

Ends by printing one JSON line (DESIGN.md §5)::

    {"bench": "oplog", "record_ns": ..., "timed_noop_ns": ..., "unrecorded_noop_ns": ...,
     "added_ns": timed - unrecorded, "number": N, "repeats": R}
"""

from __future__ import annotations

import argparse
import json
import time
import timeit

from distml.comm.oplog import OpLog
from distml.comm.transport import Transport


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--number", type=int, default=200_000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    number, repeats = (2000, 2) if args.quick else (args.number, args.repeats)

    log = OpLog()
    now = time.perf_counter()

    def record():
        OpLog.end(log.begin("all_reduce", None, 4096, now), now)

    t = Transport(0, 1)

    def timed():
        t._timed("all_reduce", _noop, 4096, 4096)

    def unrecorded():
        t._delay()
        t0 = time.perf_counter()
        t._guard("all_reduce", _noop)
        t.stats.record("all_reduce", 4096, 4096, time.perf_counter() - t0)

    cases = (("record_ns", record), ("timed_noop_ns", timed), ("unrecorded_noop_ns", unrecorded))
    best = {name: float("inf") for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            best[name] = min(best[name], timeit.timeit(fn, number=number) / number * 1e9)
    best["added_ns"] = best["timed_noop_ns"] - best["unrecorded_noop_ns"]
    print(json.dumps({"bench": "oplog", **{k: round(v, 1) for k, v in best.items()},
                      "number": number, "repeats": repeats}))


def _noop():
    return None


if __name__ == "__main__":
    main()
