"""The parameter server's wire format: a fixed int64 header, then a tensor payload.

No pickle on the wire (DESIGN.md §4). Every message is one ``HEADER_LEN`` int64 tensor
on :data:`TAG_HEADER` (requests) or :data:`TAG_REPLY` (replies); messages that carry
numbers (push, pull reply) are followed by the payload on the matching payload tag.
The server receives headers from any source and then the payload from that sender:
messages between two ranks on one tag arrive in order, so the pair never mixes up.

Header fields (int64): ``op, shard, clock, length, arg0, arg1, aux, flags``.
``aux`` carries one float64 by its bit pattern (e.g. the worker's learning rate);
``flags`` bit :data:`FLAG_STOP` in a reply says that rank 0 asked every worker to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HEADER_LEN = 8
TAG_HEADER, TAG_PAYLOAD, TAG_REPLY, TAG_REPLY_PAYLOAD = 11, 12, 13, 14

PUSH, PULL, REPLY, CHECKPOINT, ACK, DONE, STOP = 1, 2, 3, 4, 5, 6, 7
OP_NAMES = {PUSH: "push", PULL: "pull", REPLY: "reply", CHECKPOINT: "checkpoint", ACK: "ack",
            DONE: "done", STOP: "stop"}
FLAG_STOP = 1


@dataclass
class Header:
    """One decoded header. ``arg0``/``arg1`` mean per op (staleness and held µs in a reply)."""

    op: int
    shard: int = 0
    clock: int = 0
    length: int = 0
    arg0: int = 0
    arg1: int = 0
    aux: float = 0.0
    flags: int = 0

    def encode(self, out: torch.Tensor | None = None) -> torch.Tensor:
        """Write the header into ``out`` (a fresh tensor if None) and return it."""
        out = torch.empty(HEADER_LEN, dtype=torch.int64) if out is None else out
        aux = torch.tensor([self.aux], dtype=torch.float64).view(torch.int64).item()
        out.copy_(torch.tensor([self.op, self.shard, self.clock, self.length, self.arg0,
                                self.arg1, aux, self.flags], dtype=torch.int64))
        return out

    @classmethod
    def decode(cls, t: torch.Tensor) -> Header:
        """Read a header tensor.

        Raises:
            ValueError: unknown op code (a corrupted or foreign message).
        """
        v = t.tolist()
        if v[0] not in OP_NAMES:
            raise ValueError(f"parameter-server message with unknown op {v[0]} (valid: "
                             f"{', '.join(f'{k}={n}' for k, n in OP_NAMES.items())})")
        aux = t[6:7].view(torch.float64).item()
        return cls(op=v[0], shard=v[1], clock=v[2], length=v[3], arg0=v[4], arg1=v[5], aux=aux,
                   flags=v[7])


def empty_header() -> torch.Tensor:
    return torch.zeros(HEADER_LEN, dtype=torch.int64)


def shard_bounds(numel: int, shards: int) -> list[tuple[int, int]]:
    """Contiguous key ranges of a flat parameter vector over ``shards`` servers.

    Raises:
        ValueError: fewer parameters than servers, or ``shards < 1``.
    """
    if shards < 1:
        raise ValueError(f"servers must be >= 1, got {shards}")
    if numel < shards:
        raise ValueError(f"servers must be <= the number of parameters ({numel}), got {shards}")
    base, extra = divmod(numel, shards)
    out, start = [], 0
    for i in range(shards):
        stop = start + base + (1 if i < extra else 0)
        out.append((start, stop))
        start = stop
    return out
