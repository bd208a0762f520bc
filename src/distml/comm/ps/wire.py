"""The parameter server's wire format: a fixed int64 header, then a tensor payload.

No pickle on the wire (docs/design.md §4). Every message is one ``HEADER_LEN`` int64 tensor
on :data:`TAG_HEADER` (requests) or :data:`TAG_REPLY` (replies); messages that carry
numbers (push, pull reply) are followed by the payload on the matching payload tag.
The server receives headers from any source and then the payload from that sender:
messages between two ranks on one tag arrive in order, so the pair never mixes up.

Header fields (int64): ``op, shard, clock, length, arg0, arg1, aux, flags``.
``aux`` carries one float64 by its bit pattern (e.g. the worker's learning rate);
``flags`` bit :data:`FLAG_STOP` in a reply says that rank 0 asked every worker to stop;
bit :data:`FLAG_COMPRESSED` in a push says that its payload is a codec's message of
``arg0`` bytes (:func:`pack_tensors`) instead of the shard's ``length`` values; bit
:data:`FLAG_REGROUP` in a reply carries no parameters: a worker died and the requester is
to regroup with the other survivors (``[faults] on_worker_loss = "continue"``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

HEADER_LEN = 8
TAG_HEADER, TAG_PAYLOAD, TAG_REPLY, TAG_REPLY_PAYLOAD = 11, 12, 13, 14

PUSH, PULL, REPLY, CHECKPOINT, ACK, DONE, STOP, EVAL = 1, 2, 3, 4, 5, 6, 7, 8
OP_NAMES = {PUSH: "push", PULL: "pull", REPLY: "reply", CHECKPOINT: "checkpoint", ACK: "ack",
            DONE: "done", STOP: "stop", EVAL: "eval"}
FLAG_STOP = 1
FLAG_COMPRESSED = 2
FLAG_REGROUP = 4

# dtype codes of packed payload tensors (append only: the code is on the wire)
_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int8,
           torch.int16, torch.int32, torch.int64, torch.bool]


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


def pack_tensors(tensors) -> torch.Tensor:
    """One uint8 message from a tuple of tensors (a codec's payload), without pickle.

    Layout: int64 ``count``, then per tensor ``dtype code, ndim, *shape``; then every
    tensor's bytes in order.

    Raises:
        ValueError: a dtype outside the supported ones.
    """
    layout = [len(tensors)]
    for t in tensors:
        if t.dtype not in _DTYPES:
            raise ValueError(f"cannot send a {t.dtype} tensor in a parameter-server message "
                             f"(supported: {', '.join(str(d) for d in _DTYPES)})")
        layout += [_DTYPES.index(t.dtype), t.dim(), *t.shape]
    parts = [torch.tensor(layout, dtype=torch.int64).view(torch.uint8)]
    parts += [t.detach().contiguous().reshape(-1).view(torch.uint8) for t in tensors]
    return torch.cat(parts)


def unpack_tensors(buf: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The tensors :func:`pack_tensors` packed into ``buf``.

    Raises:
        ValueError: a corrupted message (unknown dtype code, lengths beyond the buffer).
    """
    pos = 0

    def take(nbytes: int) -> torch.Tensor:
        nonlocal pos
        if nbytes < 0 or pos + nbytes > buf.numel():
            raise ValueError(f"corrupted parameter-server payload: {nbytes} bytes at offset "
                             f"{pos} of {buf.numel()}")
        out = buf[pos:pos + nbytes].clone()      # a fresh, aligned storage for view()
        pos += nbytes
        return out

    def ints(n: int) -> list[int]:
        return take(8 * n).view(torch.int64).tolist()

    layout = []
    for _ in range(ints(1)[0]):
        code, ndim = ints(2)
        if not 0 <= code < len(_DTYPES):
            raise ValueError(f"corrupted parameter-server payload: dtype code {code}")
        layout.append((_DTYPES[code], ints(ndim)))
    out = []
    for dtype, shape in layout:
        numel = 1
        for d in shape:
            numel *= d
        itemsize = torch.empty(0, dtype=dtype).element_size()
        out.append(take(numel * itemsize).view(dtype).reshape(shape))
    if pos != buf.numel():
        raise ValueError(f"corrupted parameter-server payload: {buf.numel() - pos} bytes left over")
    return tuple(out)


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
