"""The pace rules and the wire format, in one process (no workers)."""

import pytest
import torch
from hypothesis import given, settings, strategies as st

from distml.comm.pace import ASP, BSP, SSP, Quorum, make_pace
from distml.comm.ps.wire import PUSH, REPLY, Header, shard_bounds
from distml.errors import ConfigError


def test_bsp_answers_only_when_every_update_of_earlier_clocks_is_in():
    p = BSP()
    assert p.synchronous
    assert p.ready(3, 3) and p.ready(3, 5)
    assert not p.ready(3, 2)
    assert p.lag(3, 3) == 0


def test_ssp_allows_a_lead_of_s_clocks_and_no_more():
    p = SSP(staleness=2)
    assert not p.synchronous
    assert p.ready(5, 3) and not p.ready(6, 3)
    assert SSP(0).ready(4, 4) and not SSP(0).ready(4, 3)   # SSP(0) paces like BSP


def test_asp_never_waits():
    assert ASP().ready(10**6, 0)


@settings(max_examples=200, deadline=None)
@given(s=st.integers(0, 6), clock=st.integers(0, 50), progress=st.integers(0, 50))
def test_an_answered_ssp_pull_never_sees_more_than_s_of_lag(s, clock, progress):
    p = SSP(s)
    if p.ready(clock, progress):
        assert p.lag(clock, progress) <= s


def test_make_pace_names_the_valid_ones_and_checks_staleness():
    assert make_pace({"name": "ssp", "staleness": 4}).staleness == 4
    with pytest.raises(ConfigError, match="asp, bsp, ssp"):
        make_pace("bulk")
    with pytest.raises(ConfigError, match="staleness must be an integer >= 0, got -1"):
        make_pace({"name": "ssp", "staleness": -1})


def test_quorum_closes_on_the_first_k_and_shrinks_when_workers_finish():
    q = Quorum(2, 3)
    assert not q.closes(1, active=3) and q.closes(2, active=3)
    assert q.closes(1, active=1)           # only one worker left: one push closes a round
    with pytest.raises(ValueError, match=r"quorum must be an integer in \[1, 3\]"):
        Quorum(4, 3)


def test_header_round_trips_every_field_including_the_float():
    h = Header(PUSH, shard=1, clock=7, length=1234, arg0=3, arg1=99, aux=0.0125)
    back = Header.decode(h.encode())
    assert back == h
    t = h.encode()
    assert t.dtype == torch.int64 and t.numel() == 8
    t[0] = 42
    with pytest.raises(ValueError, match="unknown op 42"):
        Header.decode(t)
    assert Header.decode(Header(REPLY).encode()).op == REPLY


def test_shard_bounds_cover_the_vector_without_overlap():
    b = shard_bounds(10, 3)
    assert b == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(ValueError, match="servers must be <= the number of parameters"):
        shard_bounds(2, 3)
