"""The hang diagnosis line from ranks' states (the end-to-end test: tests/faults/test_hang.py)."""

import pytest

from distml.config import FaultsConfig
from distml.errors import ConfigError
from distml.runtime.faults import check_faults
from distml.runtime.hang import diagnose


def _op(op, seq, age, peer=None):
    return {"op": op, "seq": seq, "peer": peer, "bytes": 8, "age_s": age, "took_s": None,
            "limit_s": None}


def test_waiting_ranks_are_grouped_and_the_missing_one_named():
    states = {0: {"running": [_op("all_reduce", 12, 50.2)], "last_finished": {"all_reduce": 11}},
              1: {"running": [], "last_finished": {"all_reduce": 11, "barrier": 2}},
              2: {"running": [_op("all_reduce", 12, 61.0)], "last_finished": {"all_reduce": 11}}}
    assert diagnose(states, 4) == (
        "ranks 0, 2 wait in all_reduce #12 since 61.0 s; rank 1 last finished all_reduce #11 "
        "and is in no operation; rank 3 did not report (dead, or not started)")


def test_point_to_point_waits_name_their_peer():
    states = {0: {"running": [_op("recv", 4, 9.0, peer=None)], "last_finished": {"recv": 3}},
              1: {"running": [_op("send", 7, 1.0, peer=2)], "last_finished": {}},
              2: {"running": [], "last_finished": {"send": 5}}}
    assert diagnose(states, 3) == (
        "rank 0 waits in recv #4 (from any rank) since 9.0 s; rank 1 waits in send #7 (to rank 2) "
        "since 1.0 s; rank 2 never finished a recv and is in no operation")


def test_no_rank_in_an_operation():
    states = {0: {"running": [], "last_finished": {}}}
    assert diagnose(states, 2) == ("no rank is inside an operation; rank 0 is in no operation; "
                                   "rank 1 did not report (dead, or not started)")


def test_a_hang_on_a_rank_that_is_not_a_worker_is_refused():
    check_faults(FaultsConfig(hang={"rank": 1, "step": 3}), workers=2, processes=3)
    with pytest.raises(ConfigError, match=r"faults.hang.rank must be a worker rank in \[0, 1\], got 2"):
        check_faults(FaultsConfig(hang={"rank": 2, "step": 3}), workers=2, processes=3)
