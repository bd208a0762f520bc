"""The transport's ring buffer of operations (hang reports, runtime/hang.py)."""

import pytest

from distml.comm.oplog import OpLog


class _Work:
    def __init__(self, done):
        self.done = done

    def is_completed(self):
        return self.done


def test_sequence_numbers_count_per_operation_and_the_ring_keeps_the_last():
    log = OpLog(size=3)
    for t in range(4):
        OpLog.end(log.begin("all_reduce", None, 8, float(t)), t + 0.5)
    log.begin("send", 1, 4, 10.0)
    snap = log.snapshot(now=12.0)
    assert [(r["op"], r["seq"]) for r in snap["records"]] == [
        ("all_reduce", 3), ("all_reduce", 4), ("send", 1)]
    assert snap["last_finished"] == {"all_reduce": 4}
    assert snap["running"] == [{"op": "send", "seq": 1, "peer": 1, "bytes": 4, "age_s": 2.0,
                                "took_s": None, "limit_s": None}]
    assert log.oldest_running(12.0) == (2.0, None)


def test_an_async_op_counts_as_finished_once_its_work_completed():
    log = OpLog()
    rec = log.begin("all_reduce", None, 8, 0.0, limit_s=30.0)
    work = _Work(done=False)
    OpLog.attach(rec, work)
    assert log.oldest_running(5.0) == (5.0, 30.0)
    work.done = True             # finished, not waited on yet: not a hang
    assert log.oldest_running(5.0) is None
    assert log.snapshot(5.0)["last_finished"] == {"all_reduce": 1}


def test_size_is_validated():
    with pytest.raises(ValueError, match="size must be >= 1, got 0"):
        OpLog(size=0)
