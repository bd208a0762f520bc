"""The partial barrier with bounded delay (Zhang & Kwok 2014) in the server loop, one process.

3 workers, a round closes on the first 2 pushes, but never leaves a worker out whose
newest push would then be more than ``max_delay`` rounds old; a late push joins the open
round (never dropped), and a worker's pull waits until the round that took its push closed.
"""

import pytest
import torch

from distml.comm.pace import BSP, BoundedDelay
from distml.comm.ps import ServerLoop
from scripted import Recording, ScriptedTransport, serve_until_idle


def one_hot(w: int) -> torch.Tensor:
    v = torch.zeros(4, dtype=torch.float64)
    v[w] = 1.0
    return v


def server(max_delay: int):
    t, rule = ScriptedTransport(), Recording()
    s = ServerLoop(t, 0, torch.zeros(4, dtype=torch.float64), [0, 1, 2], BSP(), rule, quorum=2,
                   max_delay=max_delay)
    return t, rule, s


def test_bounded_delay_rule():
    d = BoundedDelay(1)
    assert d.overdue(0, {0: -1, 1: -1}, {0, 1}) == []
    assert d.overdue(1, {0: 0, 1: -1}, {0, 1}) == [1]
    assert d.overdue(1, {0: 0, 1: -1}, {0}) == []           # a finished worker is never waited for
    with pytest.raises(ValueError, match="max_delay must be an integer >= 0, got -1"):
        BoundedDelay(-1)


def test_a_round_waits_for_an_overdue_worker_and_a_late_push_joins_it():
    t, rule, s = server(max_delay=1)
    for w in (0, 1):
        t.push(w, 0, one_hot(w))
    serve_until_idle(s)
    assert s.round == 1                      # worker 2 left out: its contribution 1 round old
    for w in (0, 1):
        t.pull(w, 1)
        t.push(w, 1, one_hot(w))
        t.pull(w, 2)
    serve_until_idle(s)
    # round 1 would leave worker 2 two rounds behind: it waits, and so do the pulls
    assert s.round == 1 and [w for w, _ in t.replies()] == [0, 1]
    t.push(2, 0, one_hot(2))                 # computed at clock 0: joins the open round 1
    serve_until_idle(s)
    assert s.round == 2 and s.late == 1 and sum(s.dropped.values()) == 0
    assert [c for _, c in rule.applied] == [2, 3]
    assert sorted(w for w, _ in t.replies()[2:]) == [0, 1]
    for w in (0, 1, 2):
        t.done(w)
    serve_until_idle(s)
    assert s.params.tolist() == [2.0, 2.0, 1.0, 0.0]     # every push applied once
    assert s.report()["delay_max"] == 1 and s.report()["late_pushes"] == 1


def test_a_pull_waits_for_the_round_that_took_the_requesters_push():
    t, rule, s = server(max_delay=5)
    for w in (0, 1):
        t.push(w, 0, one_hot(w))
    t.push(2, 0, one_hot(2))                 # late: joins round 1, still open
    t.pull(2, 1)
    serve_until_idle(s)
    assert s.round == 1 and t.replies() == []          # the pace allows it; its push is pending
    t.push(0, 1, one_hot(0))
    serve_until_idle(s)
    (w, h), = t.replies()
    assert w == 2 and h.clock == 2                     # it jumps to the server's round
    assert s.params.tolist() == [2.0, 1.0, 1.0, 0.0]
