"""The cost of recording one transport operation in the hang-report ring buffer.

Every collective and point-to-point call of :class:`~distml.comm.transport.Transport`
appends a record to its :class:`~distml.comm.oplog.OpLog` and stamps its end; this sits
on the hot path of sync SGD and the parameter server. Measured in one process, no
peers: ``record_ns`` is ``OpLog.begin`` + ``OpLog.end`` per op (what the transport adds;
it reuses the ``perf_counter`` reads its byte/time accounting already makes), and
``timed_noop_ns`` the whole accounting wrapper ``Transport._timed`` around an op that
does nothing (guard, record, stats) — the fixed cost any op pays — against
``unrecorded_noop_ns``, the same wrapper without the record (delay check, guard and
stats: what ``_timed`` did before the buffer). ``PROTOCOL`` (fixed before the run):
``repeats`` timeit runs of ``number`` calls each, the three interleaved within each
repeat; reported as the best (the least disturbed by other load) and, for ``added_ns``,
the mean over repeats of the paired difference with its 95% interval.

    python bench/oplog.py               # the documented run (docs/faults.md)
    python bench/oplog.py --quick       # smoke check, same code path

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "oplog", "record_ns": ..., "timed_noop_ns": ..., "unrecorded_noop_ns": ...,
     "added_ns": timed - unrecorded, "added_ns_mean": ..., "added_ns_ci": [lo, hi],
     "number": N, "repeats": R, "headline": "..."}
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, paired_ci  # noqa: E402

from distml.comm.oplog import OpLog  # noqa: E402
from distml.comm.transport import Transport  # noqa: E402

PROTOCOL = {"number": 200_000, "repeats": 7, "payload_bytes": 4096}
QUICK = {"number": 2000, "repeats": 2}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    p = {**PROTOCOL, **(QUICK if args.quick else {})}
    number, repeats = p["number"], p["repeats"]

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
    each: dict[str, list[float]] = {name: [] for name, _ in cases}
    for _ in range(repeats):
        for name, fn in cases:
            each[name].append(timeit.timeit(fn, number=number) / number * 1e9)
    best = {name: min(v) for name, v in each.items()}
    best["added_ns"] = best["timed_noop_ns"] - best["unrecorded_noop_ns"]
    added = paired_ci(each["timed_noop_ns"], each["unrecorded_noop_ns"])
    line = {"bench": "oplog", **{k: round(v, 1) for k, v in best.items()},
            "added_ns_mean": round(added[0], 1), "added_ns_ci": [round(added[1], 1), round(added[2], 1)],
            "number": number, "repeats": repeats,
            "headline": f"recording an operation adds {added[0]:.0f} ns [{added[1]:.0f}, {added[2]:.0f}] "
                        f"(best of {repeats}: {best['added_ns']:.0f} ns)"}
    return finish(line, p, quick=args.quick, details={"ns": each, "loadavg": os.getloadavg()})


def _noop():
    return None


if __name__ == "__main__":
    sys.exit(main())
