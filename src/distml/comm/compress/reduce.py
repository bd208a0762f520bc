"""Reduce a flat tensor through a codec over a transport: the one place algorithms use.

Summable payloads are all-reduced; others are all-gathered and every rank decodes every
payload (variable-size ones exchange lengths first and pad to the longest); a
:class:`~distml.comm.compress.base.Reducer` runs its own rounds. Bytes are counted by
the transport, never estimated here. :func:`start_reduce` runs the same reduction on a
communication thread, so a caller can compute meanwhile (pipelining).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import torch

from distml.comm.compress.base import Compressor, Reducer
from distml.comm.transport import CommStats, Transport


def init_state(codec, like: torch.Tensor, shapes=None) -> Any:
    """The codec's initial state for ``like`` (Reducers also get the segment shapes)."""
    if codec is None:
        return None
    if isinstance(codec, Reducer):
        return codec.init(like, shapes)
    return codec.init(like)


def reduce_mean(x: torch.Tensor, codec: Compressor | Reducer | None, state: Any,
                transport) -> tuple[torch.Tensor, Any]:
    """The mean of ``x`` over the transport's group, sent through ``codec``.

    Args:
        x: a flat tensor (not modified).
        codec: a Compressor, a Reducer, or None (plain all-reduce).
        state: the codec's state (from :func:`init_state` or the previous call).
        transport: the group to reduce over.

    Returns:
        ``(mean, new_state)``; every rank gets the same mean.
    """
    world = transport.world_size
    if codec is None:
        out = x.clone()
        transport.all_reduce(out, op="sum")
        return out.div_(world), state
    if isinstance(codec, Reducer):
        return codec.reduce(x, state, transport)
    payload, state = codec.compress(x, state)
    payload = tuple(t.contiguous() for t in payload)
    if codec.summable:
        handles = [transport.all_reduce(t, op="sum", async_op=True) for t in payload]
        for h in handles:
            h.wait()
        return codec.decompress(payload, x, state).div_(world), state
    lengths = [[t.numel() for t in payload]] * world
    if not codec.fixed_size:
        # the header: every rank's payload lengths, so the gather can pad to the longest
        mine = torch.tensor([t.numel() for t in payload], dtype=torch.int64, device=x.device)
        lengths = [g.tolist() for g in transport.all_gather(mine)]
        longest = [max(col) for col in zip(*lengths)]
        payload = tuple(torch.cat([t, t.new_zeros(n - t.numel())]) if n > t.numel() else t
                        for t, n in zip(payload, longest))
    gathered = [transport.all_gather(t) for t in payload]
    total = torch.zeros_like(x)
    for r in range(world):
        parts = tuple(g[r][:lengths[r][i]] for i, g in enumerate(gathered))
        total += codec.decompress(parts, x, state)
    return total.div_(world), state


class PendingReduce:
    """A reduction running on a communication thread; :meth:`wait` returns ``(mean, state)``.

    The thread talks through a sibling transport over the same group with its own
    counters; :meth:`wait` adds its bytes and messages to the caller's transport and
    counts as communication only the time the caller was blocked. The rest of the
    thread's time was hidden behind compute (:attr:`hidden_seconds`).
    """

    def __init__(self, x, codec, state, transport):
        self._parent = transport
        self._sibling = Transport(transport.rank, transport.world_size,
                                  timeout_s=transport.timeout.total_seconds(),
                                  group=transport.group, stats=CommStats(),
                                  latency_ms=transport.latency_s * 1000,
                                  global_ranks=[transport.global_of(r)
                                                for r in range(transport.world_size)])
        self._result = None
        self._error: BaseException | None = None
        self.busy_seconds = 0.0
        self.hidden_seconds = 0.0
        self.blocked_seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(x, codec, state), daemon=True,
                                        name="distml-comm")
        self._thread.start()

    def _run(self, x, codec, state):
        t0 = time.perf_counter()
        try:
            self._result = reduce_mean(x, codec, state, self._sibling)
        except BaseException as e:   # re-raised in the caller's thread by wait()
            self._error = e
        self.busy_seconds = time.perf_counter() - t0

    @property
    def bytes_sent(self) -> int:
        """The payload this rank handed the transport for this reduction (once finished)."""
        return self._sibling.stats.bytes_sent

    def wait(self):
        t0 = time.perf_counter()
        self._thread.join(self._parent.timeout.total_seconds() + 30)
        self.blocked_seconds = time.perf_counter() - t0
        if self._thread.is_alive():
            from distml.errors import PeerError
            raise PeerError(f"rank {self._parent.global_rank}: a background reduction did not "
                            "finish within the timeout")
        stats = self._parent.stats
        for op, s in self._sibling.stats.ops.items():
            stats.record(op, s.bytes_sent, s.bytes_received, 0.0, calls=s.calls)
        stats.record("background_wait", 0, 0, self.blocked_seconds, calls=0)
        self.hidden_seconds = max(self.busy_seconds - self.blocked_seconds, 0.0)
        if self._error is not None:
            raise self._error
        return self._result


def start_reduce(x: torch.Tensor, codec, state, transport) -> PendingReduce:
    """Start :func:`reduce_mean` of a copy of ``x`` in the background; no other collective
    may run on the group until the returned handle's ``wait()``."""
    return PendingReduce(x.detach().clone(), codec, state, transport)
