"""One clock for every pace: while rank 0 evaluates, the server answers no pull (one process).

Rank 0's wall clock excludes its evaluations (docs/design.md §5); under ASP or backup
workers the other workers would otherwise keep training through them, progress that no
clock counts (issue 16). The server holds every pull from rank 0's ``EVAL`` to its next
message, and does not report that pause as pace (held) time.
"""

import time

import pytest
import torch

from distml.comm.pace import ASP, BSP
from distml.comm.ps import ServerLoop
from scripted import Recording, ScriptedTransport, serve_until_idle

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("pace", [ASP(), BSP()], ids=["asp", "bsp_quorum"])
def test_pulls_wait_while_rank0_evaluates_and_the_pause_is_not_held_time(pace):
    t = ScriptedTransport()
    quorum = 2 if pace.synchronous else None      # backup workers: rounds close without rank 0
    s = ServerLoop(t, 0, torch.zeros(3), [0, 1, 2], pace, Recording(), quorum=quorum)
    t.evaluating(0)
    for w in (1, 2):
        t.push(w, 0, torch.ones(3))
        t.pull(w, 1)
    serve_until_idle(s)
    assert t.replies() == []                     # without the pause ASP and the quorum answer both
    time.sleep(0.2)
    t.push(0, 0, torch.ones(3))                  # rank 0's next message: its evaluation is over
    serve_until_idle(s)
    replies = t.replies()
    assert sorted(w for w, _ in replies) == [1, 2]
    assert all(h.arg1 / 1e6 < 0.15 for _, h in replies)     # the 0.2 s pause is not held time
    assert s.report()["eval_paused_seconds"] >= 0.2


def test_without_an_evaluation_asp_answers_at_once():
    t = ScriptedTransport()
    s = ServerLoop(t, 0, torch.zeros(3), [0, 1], ASP(), Recording())
    t.push(1, 0, torch.ones(3))
    t.pull(1, 1)
    serve_until_idle(s)
    assert [w for w, _ in t.replies()] == [1]
