"""A scripted stand-in for the transport of one parameter server, for one-process tests.

The test queues workers' messages (headers and payloads, as the client would send them);
the server receives them in order and its sends are recorded. When the server waits for
a message the script does not have, ``recv`` raises :class:`Exhausted` and
:func:`serve_until_idle` returns, so a test can inspect the server between messages.
"""

from datetime import timedelta

import torch

from distml.comm.ps.wire import (DONE, EVAL, FLAG_COMPRESSED, PULL, PUSH, REPLY, TAG_HEADER,
                                 TAG_PAYLOAD, TAG_REPLY, Header)


class Exhausted(Exception):
    """The server waits for a message the script does not hold."""


class ScriptedTransport:
    global_rank = 99
    timeout = timedelta(seconds=1)
    eval_wait_s = 1.0

    def __init__(self):
        self.inbox: list[tuple[int, int, torch.Tensor]] = []
        self.sent: list[tuple[int, int, torch.Tensor]] = []

    # ---- what the test queues -----------------------------------------------------------
    def push(self, w: int, clock: int, value: torch.Tensor | None = None,
             message: torch.Tensor | None = None, length: int | None = None, aux: float = 0.0):
        """A push of ``value`` (as it is) or of a codec's ``message`` for ``length`` values."""
        if message is None:
            h = Header(PUSH, 0, clock, value.numel(), aux=aux)
            payload = value
        else:
            h = Header(PUSH, 0, clock, length, arg0=message.numel(), aux=aux, flags=FLAG_COMPRESSED)
            payload = message
        self.inbox += [(w, TAG_HEADER, h.encode()), (w, TAG_PAYLOAD, payload.clone())]

    def pull(self, w: int, clock: int):
        self.inbox.append((w, TAG_HEADER, Header(PULL, 0, clock).encode()))

    def evaluating(self, w: int):
        self.inbox.append((w, TAG_HEADER, Header(EVAL, 0).encode()))

    def done(self, w: int, final: bool = False):
        self.inbox.append((w, TAG_HEADER, Header(DONE, 0, 0, 0, int(final)).encode()))

    # ---- what the server calls --------------------------------------------------------------
    def recv(self, t: torch.Tensor, src=None, tag: int = 0, timeout_s=None) -> int:
        for i, (s, tg, x) in enumerate(self.inbox):
            if tg == tag and (src is None or s == src):
                del self.inbox[i]
                t.copy_(x)
                return s
        raise Exhausted

    def irecv(self, t: torch.Tensor, src=None, tag: int = 0) -> "_Posted":
        return _Posted(self, t, src, tag)

    def _has(self, src, tag: int) -> bool:
        return any(tg == tag and (src is None or s == src) for s, tg, _ in self.inbox)

    def send(self, t: torch.Tensor, dst: int, tag: int = 0):
        self.sent.append((dst, tag, t.clone()))

    # ---- what the test reads ----------------------------------------------------------------
    def replies(self) -> list[tuple[int, Header]]:
        """``(worker, header)`` of every pull reply sent so far, in order."""
        return [(d, Header.decode(t)) for d, tag, t in self.sent
                if tag == TAG_REPLY and Header.decode(t).op == REPLY]


class _Posted:
    """A posted receive: it takes its message when waited on (in script order), and is
    complete once the script holds a message it matches."""

    def __init__(self, transport: ScriptedTransport, out: torch.Tensor, src, tag: int):
        self.t, self.out, self.src, self.tag = transport, out, src, tag
        self.sender = None

    def is_completed(self) -> bool:
        return self.sender is not None or self.t._has(self.src, self.tag)

    def wait(self, timeout_s=None) -> int:
        if self.sender is None:
            self.sender = self.t.recv(self.out, self.src, self.tag)
        return self.sender


def serve_until_idle(server) -> None:
    """Run the server loop until it waits for a message the script does not hold (or ends)."""
    try:
        server.run()
    except Exhausted:
        pass


class Recording:
    """Update rule: add each applied total to the parameters and remember it."""

    def __init__(self):
        self.applied: list[tuple[torch.Tensor, int]] = []

    def __call__(self, params, total, count, aux):
        self.applied.append((total.clone(), count))
        params.add_(total)

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
