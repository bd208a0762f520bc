"""The codec contracts, and error feedback and chaining as wrappers (optax style).

A :class:`Compressor` turns one flat tensor into a *payload* — a tuple of tensors, the
exact bytes handed to the transport — and back. State (random streams, residuals) is
explicit: ``init`` makes it, ``compress`` takes and returns it, so it can be
checkpointed and no codec hides a copy of another's state. A :class:`Reducer` is a
multi-round collective (PowerSGD) that reduces directly over a transport.

References: Seide et al. 2014 and Karimireddy et al. 2019 (error feedback);
optax's ``GradientTransformation`` (init/update with explicit state, ``chain``).
"""

from __future__ import annotations

import math
from typing import Any

import torch

Payload = tuple[torch.Tensor, ...]


class Compressor:
    """One message: ``compress`` → send → ``decompress``; works over any topology.

    Attributes:
        summable: payloads of several ranks can be summed element-wise (all-reduce) and
            decompressed once: ``decompress`` is linear and the layout is the same on
            every rank (fp16, bf16, random-k with a shared seed).
        lossless: ``decompress(compress(x)) == x`` exactly.
        fixed_size: the payload's shapes depend only on ``x``'s shape (so an all-gather
            needs no length exchange); threshold filtering is the exception.
        cast: an element-wise cast (fp16, bf16), allowed after another codec in a chain.
        sparse: a sparsifier (top-k, random-k, threshold): its payload is
            ``index_tensors`` tensors of indices followed by one tensor of the kept values
            (:meth:`kept` says how many), so a value quantizer may follow it in a chain.
        index_tensors: how many tensors of a sparsifier's payload come before its values.
        quantizer: quantizes any flat tensor on its own (QSGD, sign), so it may follow a
            sparsifier in a chain and quantize the kept values.
        decode_needs_state: ``decompress`` needs the sender's state (random-k rebuilds its
            indices from the shared step counter); a receiver that is not itself sending in
            lock-step (a parameter server) must mirror that state.
    """

    summable = False
    lossless = False
    fixed_size = True
    cast = False
    sparse = False
    index_tensors = 1
    quantizer = False
    decode_needs_state = False

    def __init__(self):
        pass     # an explicit signature: the registry passes only the parameters it names

    def init(self, like: torch.Tensor) -> Any:
        """The initial state for tensors shaped like ``like`` (None if stateless)."""
        return None

    def compress(self, x: torch.Tensor, state: Any) -> tuple[Payload, Any]:
        raise NotImplementedError

    def decompress(self, payload: Payload, like: torch.Tensor, state: Any = None) -> torch.Tensor:
        """A tensor shaped and typed like ``like`` from a payload (maybe another rank's,
        or a sum of payloads when summable); ``state`` is what ``compress`` returned this
        round (random-k rebuilds its shared indices from it)."""
        raise NotImplementedError

    def kept(self, indices: Payload, n: int) -> int:
        """A sparsifier's number of kept values, from its index tensors and the input's
        size ``n`` (by default: as many as the first index tensor has entries)."""
        return indices[0].numel()

    def wire_bytes(self, payload: Payload) -> int:
        """Bytes of the payload as handed to the transport."""
        return sum(t.numel() * t.element_size() for t in payload)

    def describe(self) -> str:
        return type(self).__name__


class Reducer:
    """A multi-round collective that returns the mean of ``x`` over the group (PowerSGD).

    Error feedback, if any, lives inside its state (docs/design.md §3.1).
    """

    summable = False
    lossless = False

    def __init__(self):
        pass

    def init(self, like: torch.Tensor, shapes: list[torch.Size] | None = None) -> Any:
        """State for flat tensors like ``like`` made of segments of ``shapes`` (in order)."""
        return None

    def reduce(self, x: torch.Tensor, state: Any, transport) -> tuple[torch.Tensor, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        return type(self).__name__


class ErrorFeedback(Compressor):
    """Add the residual of earlier rounds before compressing; keep what was not sent.

    Reference: Seide et al. 2014 (1-bit SGD); Karimireddy et al. 2019 (EF-SignSGD).
    The identity ``sum(decompressed outputs) + residual == sum(inputs)`` holds exactly
    up to float rounding. State: ``{"residual": Tensor, "inner": inner codec's state}``.
    """

    def __init__(self, inner: Compressor):
        if isinstance(inner, Reducer):
            raise ValueError(f"{inner.describe()} keeps its own error feedback; "
                             "with_error_feedback takes a Compressor")
        if inner.lossless:
            raise ValueError(f"error feedback on a lossless codec ({inner.describe()}) does nothing")
        self.inner = inner
        self.summable = inner.summable
        self.fixed_size = inner.fixed_size
        self.decode_needs_state = inner.decode_needs_state

    def init(self, like: torch.Tensor) -> dict[str, Any]:
        return {"residual": torch.zeros_like(like).reshape(-1), "inner": self.inner.init(like)}

    def compress(self, x, state):
        corrected = x.reshape(-1) + state["residual"]
        payload, inner = self.inner.compress(corrected, state["inner"])
        residual = corrected - self.inner.decompress(payload, corrected, inner)
        return payload, {"residual": residual, "inner": inner}

    def decompress(self, payload, like, state=None):
        return self.inner.decompress(payload, like, None if state is None else state["inner"])

    def describe(self) -> str:
        return f"error_feedback({self.inner.describe()})"


class Chain(Compressor):
    """A codec, then optionally a value quantizer of its kept values, then element-wise casts.

    * After a sparsifier (``sparse``: top-k, random-k, threshold), one ``quantizer``
      (QSGD, sign) may quantize the kept values — SparseLoCo's top-k + 2-bit (Sarfi et al.
      2025). The indices travel as the sparsifier made them; the receiver learns how many
      values there are from them (:meth:`Compressor.kept`), so it needs no other header.
    * Casts (fp16, bf16) may follow anything: each floating payload tensor in the input's
      type is narrowed, keeping its shape.

    The payload is what travels (indices, quantized values, scales, narrowed floats), so
    :meth:`wire_bytes` counts exactly the bytes handed to the transport. State:
    ``{"first": ..., "values": ...}``, the first codec's and the quantizer's.
    """

    def __init__(self, first: Compressor, *rest: Compressor):
        if isinstance(first, Reducer) or any(isinstance(c, Reducer) for c in rest):
            raise ValueError("a Reducer (powersgd) cannot be chained; use it alone")
        self.values = rest[0] if rest and rest[0].quantizer and not rest[0].cast else None
        if self.values is not None and not first.sparse:
            raise ValueError(f"a value quantizer ({self.values.describe()}) may follow only a "
                             f"sparsifier (topk, randomk, threshold), not {first.describe()}")
        self.first = first
        self.casts = rest[1:] if self.values is not None else rest
        bad = [c.describe() for c in self.casts if not c.cast]
        if bad:
            raise ValueError(f"only element-wise casts (fp16, bf16) may follow the first codec "
                             f"of a chain (or one value quantizer, qsgd or sign, right after a "
                             f"sparsifier), got {', '.join(bad)}")
        stages = [first] + ([self.values] if self.values is not None else [])
        self.summable = all(c.summable for c in stages)
        self.fixed_size = all(c.fixed_size for c in stages)
        self.lossless = all(c.lossless for c in stages + list(self.casts))
        self.decode_needs_state = any(c.decode_needs_state for c in stages)

    def init(self, like):
        return {"first": self.first.init(like),
                "values": None if self.values is None else self.values.init(like)}

    def compress(self, x, state):
        payload, first_state = self.first.compress(x, state["first"])
        values_state = state["values"]
        if self.values is not None:
            head = payload[:self.first.index_tensors]
            quantized, values_state = self.values.compress(payload[-1], values_state)
            payload = tuple(head) + tuple(quantized)
        out = []
        for t in payload:
            if t.dtype == x.dtype and t.is_floating_point():
                for c in self.casts:
                    (t,), _ = c.compress(t, None)
            out.append(t)
        return tuple(out), {"first": first_state, "values": values_state}

    def decompress(self, payload, like, state=None):
        wire_dtypes = {c.wire_dtype for c in self.casts}
        back = tuple(t.to(like.dtype) if t.dtype in wire_dtypes else t for t in payload)
        if self.values is not None:
            head = back[:self.first.index_tensors]
            kept = like.new_empty(self.first.kept(head, like.numel()))
            values = self.values.decompress(back[len(head):], kept,
                                            None if state is None else state["values"])
            back = tuple(head) + (values,)
        return self.first.decompress(back, like, None if state is None else state["first"])

    def describe(self) -> str:
        stages = [self.first] + ([self.values] if self.values is not None else []) + list(self.casts)
        return "chain(" + ", ".join(c.describe() for c in stages) + ")"


def with_error_feedback(codec: Compressor) -> ErrorFeedback:
    """Wrap ``codec`` so that what it drops is carried into the next round."""
    return ErrorFeedback(codec)


def chain(*codecs: Compressor) -> Compressor:
    """Compose codecs: the first compresses, a value quantizer may quantize a sparsifier's
    kept values, and casts shrink the floats that remain (see :class:`Chain`)."""
    if not codecs:
        raise ValueError("chain needs at least one codec")
    return codecs[0] if len(codecs) == 1 else Chain(*codecs)


def count_of(ratio: float, n: int) -> int:
    """How many of ``n`` entries a sparsifier keeping ``ratio`` of them sends: ceil(ratio·n), 1 to n."""
    return max(1, min(n, math.ceil(ratio * n)))


def generator(seed: int, *stream: int) -> torch.Generator:
    """A CPU generator for one round of one stream (explicit state: the step counter)."""
    g = torch.Generator()
    mixed = seed
    for s in stream:     # a fixed mix, so (seed, step) pairs do not collide in practice
        mixed = (mixed * 1_000_003 + int(s)) % (2**63 - 1)
    g.manual_seed(mixed)
    return g


class Cast(Compressor):
    """Send the tensor in a narrower floating type; summable (sums stay in that type)."""

    summable = True
    cast = True
    wire_dtype = torch.float16

    def compress(self, x, state):
        return (x.reshape(-1).to(self.wire_dtype),), state

    def decompress(self, payload, like, state=None):
        return payload[0].to(like.dtype).reshape(like.shape)

    def describe(self) -> str:
        return str(self.wire_dtype).replace("torch.", "")
