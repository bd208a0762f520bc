"""The worker's side of the parameter server: push and pull return handles with ``wait()``.

Reference: Li et al., OSDI 2014 (ps-lite's ``ZPush``/``ZPull`` return timestamps to wait
on). A pull posts its receives *before* it sends the request, so a server answering
with a blocking send never waits on a worker that is itself sending (no deadlock), and
the worker's wait is a blocking receive, not a spin.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from distml.comm.ps.wire import (ACK, CHECKPOINT, DONE, EVAL, FLAG_COMPRESSED, FLAG_REGROUP,
                                 FLAG_STOP, PULL, PUSH,
                                 REPLY, STOP, TAG_HEADER, TAG_PAYLOAD, TAG_REPLY,
                                 TAG_REPLY_PAYLOAD, Header, empty_header)
from distml.errors import PeerError


@dataclass
class PullResult:
    """What a pull saw: the server's clock, the staleness (clock lag), the held time, and
    whether rank 0 asked every worker to stop."""

    clock: int
    staleness: int
    held_seconds: float
    stop: bool = False


class PushHandle:
    """Pushes in flight to every server; ``wait()`` returns when all were handed over."""

    def __init__(self, client: PSClient, handles: list, keep: list[torch.Tensor]):
        self._client, self._handles, self._keep = client, handles, keep

    def wait(self) -> None:
        self._client._wait(self._handles, "push")
        self._handles, self._keep = [], []


class PullHandle:
    """A pull in flight; ``wait()`` fills the output buffer and returns a :class:`PullResult`."""

    def __init__(self, client: PSClient, handles: list, headers: list[torch.Tensor], keep: list):
        self._client, self._handles, self._headers, self._keep = client, handles, headers, keep
        self._result: PullResult | None = None

    def wait(self) -> PullResult:
        if self._result is None:
            # a pull the pace holds waits on the slowest worker, which may be rank 0
            # evaluating: the server, which knows who is silent, is the liveness check here
            self._client._wait(self._handles, "pull", self._client.t.eval_wait_s)
            replies = [Header.decode(h) for h in self._headers]
            for r in replies:
                if r.op != REPLY:
                    raise PeerError(f"parameter server sent op {r.op} instead of a pull reply")
            if any(r.flags & FLAG_REGROUP for r in replies):
                # the worker loop's regroup takes it from here (runtime/elastic.py)
                raise PeerError(f"worker rank {self._client.t.global_rank}: a worker died; the "
                                "parameter server asks the survivors to regroup")
            held = max(r.arg1 for r in replies) / 1e6
            # time a pace rule held the reply is waiting, not communication (docs/design.md §5)
            self._client.t.stats.as_wait("recv", held)
            self._result = PullResult(clock=min(r.clock for r in replies),
                                      staleness=max(r.arg0 for r in replies), held_seconds=held,
                                      stop=any(r.flags & FLAG_STOP for r in replies))
        return self._result


class PSClient:
    """Talk to the servers that hold the shards of one flat parameter vector.

    Args:
        transport: the PS transport (gloo group with workers and servers).
        servers: the servers' ranks in ``transport``, shard ``i`` on ``servers[i]``.
        bounds: ``(start, stop)`` of each shard in the flat vector.
        encoder: compresses each shard of a push (:class:`~distml.comm.ps.codec.PushEncoder`);
            None sends the values as they are.
    """

    def __init__(self, transport, servers: list[int], bounds: list[tuple[int, int]],
                 encoder=None):
        if len(servers) != len(bounds):
            raise ValueError(f"one shard per server: {len(servers)} servers, {len(bounds)} shards")
        self.t, self.servers, self.bounds = transport, list(servers), list(bounds)
        self.encoder = encoder

    @contextmanager
    def _about(self, what: str, timeout_s: float | None = None):
        """Name the servers in a peer error of ``what``: raised when posting the messages (a
        server already gone resets the connection at once) or when waiting on them."""
        limit = self.t.timeout.total_seconds() if timeout_s is None else timeout_s
        try:
            yield
        except PeerError as e:
            raise PeerError(f"worker rank {self.t.global_rank}: {what} to the parameter servers "
                            f"(ranks {self._global(self.servers)}) failed: a server died or did not "
                            f"answer within {limit:g} s ({e})") from None

    def _wait(self, handles: list, what: str, timeout_s: float | None = None) -> None:
        with self._about(what, timeout_s):
            for h in handles:
                h.wait(timeout_s)

    def _global(self, ranks: list[int]) -> str:
        return ", ".join(str(self.t.global_of(r)) for r in ranks)

    def _send_header(self, h: Header, server: int) -> object:
        hdr = h.encode()
        return hdr, self.t.isend(hdr, server, tag=TAG_HEADER)

    def push(self, flat: torch.Tensor, clock: int, aux: float = 0.0) -> PushHandle:
        """Send each shard of ``flat`` (do not modify it until ``wait()``), through the encoder
        if there is one; ``clock`` = pushes so far."""
        handles, keep = [], [flat]
        with self._about("push"):
            for i, (srv, (a, b)) in enumerate(zip(self.servers, self.bounds)):
                if self.encoder is None:
                    payload, head = flat[a:b], Header(PUSH, i, clock, b - a, aux=aux)
                else:   # the codec's message: its byte count rides in arg0
                    payload = self.encoder.encode(i, flat[a:b])
                    head = Header(PUSH, i, clock, b - a, arg0=payload.numel(), aux=aux,
                                  flags=FLAG_COMPRESSED)
                hdr, h = self._send_header(head, srv)
                keep += [hdr, payload]
                handles += [h, self.t.isend(payload, srv, tag=TAG_PAYLOAD)]
        return PushHandle(self, handles, keep)

    def _post_replies(self, out: torch.Tensor) -> tuple[list, list]:
        handles, headers = [], []
        for srv, (a, b) in zip(self.servers, self.bounds):
            hdr = empty_header()
            headers.append(hdr)
            handles += [self.t.irecv(hdr, srv, tag=TAG_REPLY),
                        self.t.irecv(out[a:b], srv, tag=TAG_REPLY_PAYLOAD)]
        return handles, headers

    def pull(self, out: torch.Tensor, clock: int) -> PullHandle:
        """Ask for the parameters as of ``clock`` (the pace decides when) into ``out``."""
        keep = []
        with self._about("pull"):
            handles, headers = self._post_replies(out)
            for i, srv in enumerate(self.servers):
                hdr, h = self._send_header(Header(PULL, i, clock), srv)
                keep.append(hdr)
                handles.append(h)
        return PullHandle(self, handles, headers, keep)

    def checkpoint(self, step: int) -> None:
        """Ask every server to save its state at ``step``; returns once all saved it."""
        acks, handles = [], []
        with self._about("checkpoint"):
            for srv in self.servers:
                ack = empty_header()
                acks.append(ack)
                handles.append(self.t.irecv(ack, srv, tag=TAG_REPLY))
            sends = [self._send_header(Header(CHECKPOINT, i, step), srv)
                     for i, srv in enumerate(self.servers)]
        self._wait(handles + [h for _, h in sends], "checkpoint")
        if any(Header.decode(a).op != ACK for a in acks):
            raise PeerError("parameter server answered a checkpoint request with a non-ack")

    def evaluating(self) -> None:
        """Tell every server that this worker evaluates now: until its next message they wait
        for it as long as the collective algorithms wait for rank 0's evaluation."""
        with self._about("eval"):
            sends = [self._send_header(Header(EVAL, i), srv) for i, srv in enumerate(self.servers)]
        self._wait([h for _, h in sends], "eval")

    def stop(self) -> None:
        """Ask every worker to stop (they learn it from their next pull's reply)."""
        with self._about("stop"):
            sends = [self._send_header(Header(STOP, i), srv) for i, srv in enumerate(self.servers)]
        self._wait([h for _, h in sends], "stop")

    def done(self, final_out: torch.Tensor | None = None) -> PullResult | None:
        """Tell the servers this worker finished; with ``final_out``, receive the final model
        (sent once every worker is done)."""
        keep = []
        with self._about("done"):
            handles, headers = self._post_replies(final_out) if final_out is not None else ([], [])
            for i, srv in enumerate(self.servers):
                hdr, h = self._send_header(Header(DONE, i, 0, 0, int(final_out is not None)), srv)
                keep.append(hdr)
                handles.append(h)
        if final_out is None:
            self._wait(handles, "done")
            return None
        return PullHandle(self, handles, headers, keep).wait()
