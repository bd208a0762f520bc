"""Send a rank's training state (nested dicts of tensors and plain values) to its peers.

Used when the survivors of a worker loss disagree on the last completed step (the ranks
behind take the state of the one ahead) and when a replacement joins (runtime/elastic.py).
No pickle crosses the wire (docs/reliability.md): the structure travels as JSON, the
tensors as their raw bytes, all in one flat uint8 buffer::

    [ JSON length: 8 bytes, little-endian | JSON skeleton | padding | tensor bytes ... ]

so a transfer is one tiny broadcast (the buffer's size) and one broadcast at the
transport's full bandwidth. Every tensor's bytes start at a multiple of :data:`ALIGN`
from the buffer's start, so the receiver's tensors are views of the received buffer,
not copies (bench/elastic.py measured the copies and the extra broadcasts of the first
layout at 0.24 of a plain broadcast's bandwidth).
"""

from __future__ import annotations

import json
from typing import Any

import torch

#: tensor bytes start at multiples of this (the largest element size, complex128), so a
#: slice of the buffer can be viewed as any dtype
ALIGN = 16
#: the JSON skeleton's length, before it
_LENGTH_BYTES = 8


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _skeleton(state: Any) -> tuple[dict, list[tuple[torch.Tensor, int]]]:
    """``state`` as a JSON-able skeleton, and every tensor with its offset in the tensor
    bytes (aligned); a tensor's entry is ``{"t": [dtype, shape, offset, nbytes]}``."""
    tensors: list[tuple[torch.Tensor, int]] = []
    offset = 0

    def walk(x):
        nonlocal offset
        if isinstance(x, torch.Tensor):
            n = x.numel() * x.element_size()
            meta = {"t": [str(x.dtype).removeprefix("torch."), list(x.shape), offset, n]}
            tensors.append((x.detach(), offset))
            offset = _aligned(offset + n)
            return meta
        if isinstance(x, dict):
            bad = [k for k in x if not isinstance(k, (str, int))]
            if bad:
                raise TypeError(f"cannot transfer a dict key of type {type(bad[0]).__name__}")
            return {"d": [[k, walk(v)] for k, v in x.items()]}
        if isinstance(x, (list, tuple)):
            return {"l" if isinstance(x, list) else "u": [walk(v) for v in x]}
        if x is None or isinstance(x, (bool, int, float, str)):
            return {"v": x}
        raise TypeError(f"cannot transfer a {type(x).__name__} (tensors and JSON values only)")

    return walk(state), tensors


def _view(buffer: torch.Tensor, start: int, nbytes: int, dtype: torch.dtype, shape) -> torch.Tensor:
    """``buffer[start:start + nbytes]`` seen as a tensor of ``dtype`` and ``shape`` (no copy)."""
    return buffer[start:start + nbytes].view(dtype).view(shape)


def _layout(state: Any) -> tuple[bytes, list[tuple[torch.Tensor, int]], int, int]:
    """The JSON text, the tensors with their offsets, where the tensor bytes start and
    the buffer's size: everything but the copies."""
    skeleton, tensors = _skeleton(state)
    text = json.dumps(skeleton).encode()
    base = _aligned(_LENGTH_BYTES + len(text))
    last = tensors[-1] if tensors else None
    size = base + (last[1] + last[0].numel() * last[0].element_size() if last else 0)
    return text, tensors, base, size


def _fill(buffer: torch.Tensor, text: bytes, tensors: list[tuple[torch.Tensor, int]],
          base: int) -> None:
    """Write the length, the JSON and every tensor straight into its place in ``buffer``
    (from any device, any strides: one copy each)."""
    head = len(text).to_bytes(_LENGTH_BYTES, "little") + text
    buffer[:len(head)] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
    for t, offset in tensors:
        if t.numel():
            _view(buffer, base + offset, t.numel() * t.element_size(), t.dtype, t.shape).copy_(t)


def pack(state: Any) -> torch.Tensor:
    """``state`` as one flat uint8 buffer (the layout above).

    Raises:
        TypeError: a leaf that is neither a tensor nor a JSON value (int, float, str,
            bool, None); dict keys must be str or int.
    """
    text, tensors, base, size = _layout(state)
    buffer = torch.empty(size, dtype=torch.uint8)
    _fill(buffer, text, tensors, base)
    return buffer


def unpack(buffer: torch.Tensor) -> Any:
    """The inverse of :func:`pack`. The tensors are views of ``buffer`` (on the CPU), not
    copies: ``buffer`` must not be reused, and it lives as long as any of them (a
    ``torch.save`` of one of them writes the whole buffer)."""
    if buffer.numel() < _LENGTH_BYTES:
        raise ValueError(f"a packed state has at least {_LENGTH_BYTES} bytes, got {buffer.numel()}")
    length = int.from_bytes(buffer[:_LENGTH_BYTES].numpy().tobytes(), "little")
    skeleton = json.loads(buffer[_LENGTH_BYTES:_LENGTH_BYTES + length].numpy().tobytes().decode())
    base = _aligned(_LENGTH_BYTES + length)

    def walk(node):
        if "t" in node:
            dtype, shape, offset, nbytes = node["t"]
            return _view(buffer, base + offset, nbytes, getattr(torch, dtype), shape)
        if "d" in node:
            return {k: walk(v) for k, v in node["d"]}
        if "l" in node:
            return [walk(v) for v in node["l"]]
        if "u" in node:
            return tuple(walk(v) for v in node["u"])
        return node["v"]

    return walk(skeleton)


def broadcast_state(transport, state: Any, src: int) -> Any:
    """Every rank of ``transport`` gets ``src``'s ``state`` (others pass None); two
    broadcasts: the packed buffer's size, then the buffer. ``src`` packs while the size
    travels (its round trip hides the copies).

    Returns:
        the state (on ``src``, its own argument; elsewhere views of a fresh buffer).
    """
    if transport.rank == src:
        text, tensors, base, size = _layout(state)
        sent = transport.broadcast(torch.tensor([size], dtype=torch.int64), src=src, async_op=True)
        buffer = torch.empty(size, dtype=torch.uint8)
        _fill(buffer, text, tensors, base)
        sent.wait()
    else:
        size = transport.broadcast(torch.zeros(1, dtype=torch.int64), src=src)
        buffer = torch.empty(int(size[0]), dtype=torch.uint8)
    transport.broadcast(buffer, src=src)
    return state if transport.rank == src else unpack(buffer)
