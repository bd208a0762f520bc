"""Compressed parameter-server pushes: any Compressor (one message) on each shard of a push.

docs/design.md §3.1: a Compressor is one message (compress → send → decompress), so it works
over the parameter server. The worker compresses each shard of a push with that shard's
own codec state — error feedback's residual stays on the worker — and sends the payload
as one uint8 message (:func:`~distml.comm.ps.wire.pack_tensors`: tensors only, no
pickle). The server decodes it with ``decompress`` and hands the result to the update
rule like an uncompressed push. A Reducer (PowerSGD) is a multi-round collective and
has no place here; the config check refuses it.

Most codecs decode without the sender's state. Random-k rebuilds its indices from the
step counter in the state (every rank draws the same indices at the same step): for
such a codec the server keeps a mirror of each worker's state, advanced once per push
by compressing zeros — the same lock-step ``reduce_mean`` relies on between ranks.
"""

from __future__ import annotations

from typing import Any

import torch

from distml.comm.ps.wire import pack_tensors, unpack_tensors


class PushEncoder:
    """The worker's side: one codec state per shard.

    Args:
        codec: a Compressor (maybe a chain, maybe wrapped in error feedback).
        bounds: ``(start, stop)`` of each shard in the flat vector.
        like: the flat parameter vector (shapes and dtype of the states).
    """

    def __init__(self, codec, bounds: list[tuple[int, int]], like: torch.Tensor):
        self.codec = codec
        self.states = [codec.init(like[a:b]) for a, b in bounds]

    def encode(self, shard: int, x: torch.Tensor) -> torch.Tensor:
        """Compress shard ``shard``'s slice ``x``; returns the uint8 message to send."""
        payload, self.states[shard] = self.codec.compress(x, self.states[shard])
        return pack_tensors(payload)

    def state_dict(self) -> dict[str, Any]:
        return {"states": list(self.states)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.states = list(state["states"])


class PushDecoder:
    """The server's side for one shard: decode a worker's message into a tensor like ``like``.

    Args:
        codec: the same codec the workers built.
        like: the shard (shape and dtype of the decoded push).
        workers: the workers' ranks (one mirror state each, where decoding needs one).
    """

    def __init__(self, codec, like: torch.Tensor, workers: list[int]):
        self.codec, self.like = codec, torch.zeros_like(like)
        self.mirror = ({w: codec.init(like) for w in workers}
                       if codec.decode_needs_state else None)

    def decode(self, worker: int, message: torch.Tensor) -> torch.Tensor:
        """The decompressed push of ``worker`` (call once per push received, applied or not)."""
        payload = unpack_tensors(message)
        state = None
        if self.mirror is not None:
            _, state = self.codec.compress(self.like, self.mirror[worker])
            self.mirror[worker] = state
        return self.codec.decompress(payload, self.like, state)

    def state_dict(self) -> dict[str, Any]:
        return {"mirror": self.mirror}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        m = state["mirror"]
        self.mirror = None if m is None else {int(w): s for w, s in m.items()}
