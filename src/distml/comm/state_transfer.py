"""Send a rank's training state (nested dicts of tensors and plain values) to its peers.

Used when the survivors of a worker loss disagree on the last completed step (the ranks
behind take the state of the one ahead) and when a replacement joins (runtime/elastic.py).
No pickle crosses the wire (docs/reliability.md): the structure travels as JSON, every
tensor's bytes in one flat uint8 buffer, so the payload is one broadcast at the
transport's full bandwidth.
"""

from __future__ import annotations

import json
from typing import Any

import torch


def pack(state: Any) -> tuple[dict, torch.Tensor]:
    """``state`` as a JSON-able skeleton and one flat byte tensor of every tensor in it.

    Raises:
        TypeError: a leaf that is neither a tensor nor a JSON value (int, float, str,
            bool, None); dict keys must be str or int.
    """
    chunks: list[torch.Tensor] = []
    offset = 0

    def walk(x):
        nonlocal offset
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
            chunks.append(raw)
            meta = {"t": [str(t.dtype).removeprefix("torch."), list(t.shape), offset, raw.numel()]}
            offset += raw.numel()
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

    skeleton = walk(state)
    payload = torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)
    return skeleton, payload


def unpack(skeleton: dict, payload: torch.Tensor) -> Any:
    """The inverse of :func:`pack` (tensors are copies, on the CPU)."""
    def walk(node):
        if "t" in node:
            dtype, shape, offset, n = node["t"]
            raw = payload[offset:offset + n].clone()
            return raw.view(getattr(torch, dtype)).reshape(shape)
        if "d" in node:
            return {k: walk(v) for k, v in node["d"]}
        if "l" in node:
            return [walk(v) for v in node["l"]]
        if "u" in node:
            return tuple(walk(v) for v in node["u"])
        return node["v"]

    return walk(skeleton)


def broadcast_state(transport, state: Any, src: int) -> Any:
    """Every rank of ``transport`` gets ``src``'s ``state`` (others pass None); three
    broadcasts: the two sizes, the JSON skeleton, the payload.

    Returns:
        the state (on ``src``, its own argument).
    """
    if transport.rank == src:
        skeleton, payload = pack(state)
        text = torch.frombuffer(bytearray(json.dumps(skeleton).encode()), dtype=torch.uint8)
        sizes = torch.tensor([text.numel(), payload.numel()], dtype=torch.int64)
    else:
        sizes = torch.zeros(2, dtype=torch.int64)
    transport.broadcast(sizes, src=src)
    if transport.rank != src:
        text = torch.empty(int(sizes[0]), dtype=torch.uint8)
        payload = torch.empty(int(sizes[1]), dtype=torch.uint8)
    transport.broadcast(text, src=src)
    if payload.numel():
        transport.broadcast(payload, src=src)
    if transport.rank == src:
        return state
    return unpack(json.loads(text.numpy().tobytes().decode()), payload)
