"""The server goes on receiving after gloo fails its any-source receive because of a dead
worker (one process, a scripted transport; issue 18).

gloo can match the server's any-source header receive to a message the dead worker had
announced (the receive then fails in its wait) or meet that announcement when the next
one is posted (the post fails), and every later any-source receive meets it again. The
server must then receive from each live worker until all of them were told to regroup:
the survivors' pushes are applied, each gets its regroup reply, and the new group forms.
When only the dead worker's own receive fails (its push's payload), the any-source
receive is healthy and stays: a message from a survivor must not land in an abandoned one.
"""

import threading
import time

import pytest
import torch

from distml.comm.pace import BSP
from distml.comm.ps import ServerLoop
from distml.comm.ps.wire import FLAG_REGROUP, PUSH, TAG_HEADER, TAG_PAYLOAD, Header
from distml.errors import PeerError
from scripted import Recording, ScriptedTransport, serve_until_idle

pytestmark = pytest.mark.timeout(30)


class DeadWorkerTransport(ScriptedTransport):
    """Once ``broken`` is "post" or "wait", any-source header receives fail there; with
    "payload", the receive of worker 1's push payload fails (it died sending it)."""

    def __init__(self):
        super().__init__()
        self.broken = None
        self.header_sources: list = []       # the source of every header receive posted
        self.lock = threading.Lock()

    def recv(self, t, src=None, tag=0, timeout_s=None):
        """As gloo: a receive waits a moment for its message (the inbox waits in threads,
        one per worker, so one with nothing queued must not end the others' turn)."""
        deadline = time.monotonic() + 0.3
        while not self._has(src, tag) and time.monotonic() < deadline:
            time.sleep(0.005)
        with self.lock:
            return super().recv(t, src, tag)

    def irecv(self, t, src=None, tag=0):
        if tag == TAG_HEADER:
            self.header_sources.append(src)
        if src is None and self.broken == "post":
            raise PeerError("rank 99: recv failed — Connection reset by peer (rank 1)")
        posted = super().irecv(t, src, tag)
        if (src is None and self.broken == "wait") or \
                (src == 1 and tag == TAG_PAYLOAD and self.broken == "payload"):
            def fail(timeout_s=None):
                raise PeerError("rank 99: recv failed — Connection reset by peer (rank 1)")
            posted.wait = fail
        return posted


class Membership:
    """The launcher's record: ``dead`` once set; ``regroup`` hands back the same script."""

    def __init__(self, t):
        self.t, self.dead, self.regrouped = t, [], 0

    def lost(self, error=None):
        return list(self.dead)

    def regroup(self, error):
        self.regrouped += 1
        self.t.broken, self.dead = None, []      # the new group: the dead one is no member
        return self.t, {0: 0, 2: 1}


@pytest.mark.parametrize("where", ["wait", "post", "payload"])
def test_after_a_worker_dies_every_survivor_is_received_and_told_to_regroup(where):
    t = DeadWorkerTransport()
    membership = Membership(t)
    rule = Recording()
    s = ServerLoop(t, 0, torch.zeros(3), [0, 1, 2], BSP(), rule, membership=membership)
    t.push(0, 0, torch.ones(3))
    if where != "payload":
        t.push(1, 0, torch.ones(3))              # worker 1's last push arrives whole
    t.pull(0, 1)
    serve_until_idle(s)
    assert t.replies() == [] and rule.applied == []       # the round waits for worker 2

    membership.dead, t.broken = [1], where       # worker 1 dies
    if where == "payload":                       # ... after its push's header went out
        t.inbox.append((1, TAG_HEADER, Header(PUSH, 0, 0, 3).encode()))
    t.push(2, 0, torch.ones(3))
    t.pull(2, 1)
    t.push(0, 1, torch.ones(3))                  # (if its pull is answered before the
    t.pull(0, 2)                                 # loss is seen, worker 0 goes on)
    serve_until_idle(s)

    regroup = [w for w, h in t.replies() if h.flags & FLAG_REGROUP]
    assert sorted(regroup) == [0, 2]             # every survivor was told, none left waiting
    assert membership.regrouped == 1
    # the round: the survivors' pushes and the dead worker's whole one (a half one dropped)
    assert [count for _, count in rule.applied][:1] == [2 if where == "payload" else 3]
    assert 1 not in t.header_sources             # never a receive from the dead one alone
    if where == "payload":                       # the any-source receive is healthy: kept
        assert all(src is None for src in t.header_sources)
    assert s.report()["workers_lost"] == 1
