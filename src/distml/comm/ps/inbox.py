"""The server's receive side: the next request is already on its way while the last is applied.

Why: gloo moves a message only once its receive is posted (the sender announces it, the
receiver's posted buffer answers), so a server that receives a push, applies it and only
then posts the next receive leaves the wire idle while it applies, and each message pays
a round trip before its bytes move (bench/ps_throughput.py measured 0.40 of raw bandwidth).
The inbox keeps one any-source header receive posted at all times and, as soon as a push's
header is in, posts its payload receive (into one of two alternating buffers): the payload
of message k+1 travels while message k is applied (ps-lite's customer thread does the same
with a receive queue; one thread here, no locks).

Ordering is unchanged: messages between two ranks on one tag arrive in order, and payload
receives are posted in the order of their headers, so every payload is matched to its own
header (the exactly-once accounting of :class:`~distml.comm.ps.server.ServerLoop` holds).
No receive is left posted once every worker said ``DONE``: a worker sends nothing after it.

Watching for lost workers (``[faults] on_worker_loss = "continue"``): gloo's any-source
receive does not fail when one of its possible senders dies (only a timeout ends it, and
a timed-out receive cannot be waited on again), so with a ``watch`` the header receive is
waited on in a helper thread while this one calls ``watch()`` every :data:`WATCH_S`
seconds; ``watch`` raises when the launcher has named a dead worker. The wait stays
pending and the next :meth:`Inbox.next` picks it up again.

After a worker's death the any-source receive can fail instead: gloo matches it to a
message the dead worker had announced, on a connection that is gone, and every later
any-source receive on that tag meets the same announcement and fails as well. Until the
survivors regroup (a new group, a new inbox), the server then receives per worker
(:meth:`Inbox.receive_from_each`): one specific-source header receive posted to each
worker still sending, each waited on in a helper thread; a worker's messages stay in
order (one header receive per worker at a time), and the dead worker's announcement is
never matched.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from distml.comm.ps.wire import DONE, FLAG_COMPRESSED, PUSH, TAG_HEADER, TAG_PAYLOAD, Header, empty_header
from distml.errors import PeerError

#: how often a watching inbox asks whether a worker died while it waits for a header
WATCH_S = 0.02


class ReceiveFailed(PeerError):
    """A receive of the inbox failed (the transport's error): ``source`` is the worker it
    was for, None for the any-source header receive (the server decides from it whether
    the failure is a dead worker's, comm/ps/server.py)."""

    def __init__(self, error: PeerError, source: int | None):
        super().__init__(str(error))
        self.source = source


def _receiving(source: int | None, fn):
    """``fn()``, its transport error raised as :class:`ReceiveFailed` for ``source``."""
    try:
        return fn()
    except ReceiveFailed:
        raise
    except PeerError as e:
        raise ReceiveFailed(e, source) from e


@dataclass
class Message:
    """One request: its sender, its header and, for a push, its payload (valid until the
    inbox's next :meth:`Inbox.next`; copy it to keep it)."""

    sender: int
    header: Header
    payload: torch.Tensor | None = None


class _Posted:
    """A request whose header is in and whose payload receive (if any) is posted."""

    def __init__(self, sender: int, header: Header, payload: torch.Tensor | None, handle):
        self.sender, self.header, self.payload, self.handle = sender, header, payload, handle


class _Waiter:
    """``handle.wait(timeout_s)`` in a daemon thread: ``done`` is set when it returned, and
    so is ``also`` (one event for several waiters)."""

    def __init__(self, handle, timeout_s: float | None, also: threading.Event | None = None):
        self.done = threading.Event()
        self._also = also
        self._sender: int | None = None
        self._error: BaseException | None = None
        threading.Thread(target=self._run, args=(handle, timeout_s), daemon=True,
                         name="ps-inbox").start()

    def _run(self, handle, timeout_s) -> None:
        try:
            self._sender = handle.wait(timeout_s)
        except BaseException as e:     # handed to the waiting thread
            self._error = e
        finally:
            self.done.set()
            if self._also is not None:
                self._also.set()

    def result(self) -> int:
        if self._error is not None:
            raise self._error
        return self._sender


class Inbox:
    """Receive the server's requests with the next one's receives posted ahead.

    Args:
        transport: the PS transport.
        workers: the ranks that send requests (each ends with a ``DONE``).
        like: the shard's parameters (an uncompressed push has their size and dtype).
        shard: this shard's index (error messages).
        watch: called while waiting for a header; raises to interrupt the wait (a worker
            died); None waits in this thread.
    """

    def __init__(self, transport, workers: list[int], like: torch.Tensor, shard: int,
                 watch: Callable[[], None] | None = None):
        self.t, self.numel, self.shard = transport, like.numel(), shard
        self.sending = set(workers)                    # workers that have not said DONE
        self._headers = [empty_header(), empty_header()]
        self._buffers = [torch.empty_like(like), torch.empty_like(like)]
        self._turn = 0                                 # which header buffer the posted receive fills
        self._next_buffer = 0                          # which payload buffer the next push gets
        self._header_handle = None                     # the posted any-source header receive
        self._ahead: _Posted | None = None             # the next request, its payload on its way
        self.bytes_in = 0
        self.watch = watch
        self._waiting: _Waiter | None = None           # the header wait in a helper thread
        # receiving per worker (after a failed any-source receive): worker -> its header
        # buffer, its posted receive and (once waited on) its waiter; None: any-source
        self._each: dict[int, list] | None = None
        self._arrived = threading.Event()              # one of those waiters returned
        # an error met while posting or taking the *next* request: raised by the next call,
        # so the request already in is not lost with it
        self._deferred: PeerError | None = None

    def receive_from_each(self) -> None:
        """The any-source receive failed (:class:`ReceiveFailed` with source None) because
        of a dead worker: from now on post one header receive per worker still sending
        (the module's docstring says why). No any-source receive is left posted: the
        failed one was the only one."""
        self._header_handle = self._waiting = None
        if self._each is None:
            self._each = {}

    def _post_header(self) -> None:
        if self._each is not None:
            for w in sorted(self.sending - set(self._each)):
                buf = empty_header()
                self._each[w] = [buf, _receiving(w, lambda: self.t.irecv(buf, w, tag=TAG_HEADER)),
                                 None]
        elif self.sending and self._header_handle is None:
            self._header_handle = _receiving(None, lambda: self.t.irecv(
                self._headers[self._turn], None, tag=TAG_HEADER))

    def _take_header(self, timeout_s: float | None) -> _Posted:
        """Wait for the posted header, post its payload receive, then the next header's."""
        if self._each is not None:
            sender, raw = self._wait_each(timeout_s)
        else:
            sender = self._wait_header(timeout_s)
            raw = self._headers[self._turn]
            self._header_handle, self._turn = None, 1 - self._turn
        h = Header.decode(raw)
        payload = handle = None
        if h.op == PUSH:
            payload = self._payload_buffer(sender, h)
            handle = _receiving(sender, lambda: self.t.irecv(payload, sender, tag=TAG_PAYLOAD))
            self.bytes_in += payload.numel() * payload.element_size()
        elif h.op == DONE:
            self.sending.discard(sender)
        try:
            self._post_header()
        except PeerError as e:
            self._deferred = e
        return _Posted(sender, h, payload, handle)

    def _wait_header(self, timeout_s: float | None) -> int:
        if self.watch is None:
            return _receiving(None, lambda: self._header_handle.wait(timeout_s))
        if self._waiting is None:
            self._waiting = _Waiter(self._header_handle, timeout_s)
        while not self._waiting.done.wait(WATCH_S):
            self.watch()             # raises if a worker died: this wait stays pending
        waiter, self._waiting = self._waiting, None
        return _receiving(None, waiter.result)

    def _wait_each(self, timeout_s: float | None) -> tuple[int, torch.Tensor]:
        """Receiving per worker: the first worker whose header is in (lowest rank first
        among those in), and its header; its receive is posted again by the caller."""
        if not self._each:
            raise PeerError(f"parameter server shard {self.shard}: waiting for a request, but "
                            "no worker is left to send one")
        for entry in self._each.values():
            if entry[2] is None:
                entry[2] = _Waiter(entry[1], timeout_s, also=self._arrived)
        while True:
            self._arrived.clear()       # (set again by any waiter that returns from now on)
            done = [w for w, entry in sorted(self._each.items()) if entry[2].done.is_set()]
            if done:
                buf, _, waiter = self._each.pop(done[0])
                _receiving(done[0], waiter.result)
                return done[0], buf
            if not self._arrived.wait(WATCH_S) and self.watch is not None:
                self.watch()            # raises if a worker died: the waits stay pending

    def forget(self, senders: set[int]) -> None:
        """Workers that died: a request of theirs whose payload is still on its way is
        dropped whole (a push is applied whole or not at all), and none is expected."""
        self.sending -= senders
        if self._each is not None:
            for w in senders:
                self._each.pop(w, None)
        if self._ahead is not None and self._ahead.sender in senders:
            self._ahead = None

    def told_to_regroup(self, worker: int) -> None:
        """``worker`` had its last request answered in this group (it regroups next): it
        sends nothing more here, so no receive waits for it."""
        self.sending.discard(worker)

    def close(self) -> None:
        """Abandon a header wait in progress (its daemon thread stays blocked in the torn-down
        group until that group's timeout, and never keeps the process from exiting)."""
        self._waiting = None
        if self._each is not None:
            self._each.clear()

    def _payload_buffer(self, sender: int, h: Header) -> torch.Tensor:
        if h.length != self.numel:
            raise PeerError(f"parameter server shard {self.shard}: push of {h.length} values from "
                            f"rank {sender}, expected {self.numel}")
        if h.flags & FLAG_COMPRESSED:         # a codec's message: its byte count is in arg0
            return torch.empty(h.arg0, dtype=torch.uint8)
        buf = self._buffers[self._next_buffer]
        self._next_buffer = 1 - self._next_buffer
        return buf

    def next(self, timeout_s: float | None = None) -> Message:
        """The next request, its payload received; ``timeout_s`` limits the wait for its
        header (None: the transport's timeout).

        Raises:
            ReceiveFailed: a receive failed (no request within the limit, a connection lost).
            PeerError: a push of the wrong size.
        """
        if self._deferred is not None:
            error, self._deferred = self._deferred, None
            raise error
        self._post_header()
        current = self._ahead if self._ahead is not None else self._take_header(timeout_s)
        self._ahead = None
        if current.handle is not None:
            _receiving(current.sender, current.handle.wait)
        # the next request's header came in while this payload moved: start its payload now,
        # so it travels while the caller applies this one (two payload buffers alternate)
        if self._each is None and self._header_handle is not None and \
                self._header_handle.is_completed():
            try:
                self._ahead = self._take_header(None)
            except PeerError as e:
                self._deferred = e
        return Message(current.sender, current.header, current.payload)
