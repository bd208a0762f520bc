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
        decode_needs_state: ``decompress`` needs the sender's state (random-k rebuilds its
            indices from the shared step counter); a receiver that is not itself sending in
            lock-step (a parameter server) must mirror that state.
    """

    summable = False
    lossless = False
    fixed_size = True
    cast = False
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
    """A codec followed by element-wise casts of its floating payload (e.g. top-k → fp16).

    Only casts may follow: a cast keeps each tensor's shape, so any rank's payload can be
    decoded without knowing the sender's intermediate shapes.
    """

    def __init__(self, first: Compressor, *casts: Compressor):
        if isinstance(first, Reducer) or any(isinstance(c, Reducer) for c in casts):
            raise ValueError("a Reducer (powersgd) cannot be chained; use it alone")
        bad = [c.describe() for c in casts if not c.cast]
        if bad:
            raise ValueError(f"only element-wise casts (fp16, bf16) may follow the first codec "
                             f"of a chain, got {', '.join(bad)}")
        self.first = first
        self.casts = casts
        self.summable = first.summable
        self.fixed_size = first.fixed_size
        self.lossless = first.lossless and all(c.lossless for c in casts)
        self.decode_needs_state = first.decode_needs_state

    def init(self, like):
        return self.first.init(like)

    def compress(self, x, state):
        payload, state = self.first.compress(x, state)
        out = []
        for t in payload:
            if t.dtype == x.dtype and t.is_floating_point():
                for c in self.casts:
                    (t,), _ = c.compress(t, None)
            out.append(t)
        return tuple(out), state

    def decompress(self, payload, like, state=None):
        wire_dtypes = {c.wire_dtype for c in self.casts}
        back = tuple(t.to(like.dtype) if t.dtype in wire_dtypes else t for t in payload)
        return self.first.decompress(back, like, state)

    def describe(self) -> str:
        return "chain(" + ", ".join([self.first.describe()] + [c.describe() for c in self.casts]) + ")"


def with_error_feedback(codec: Compressor) -> ErrorFeedback:
    """Wrap ``codec`` so that what it drops is carried into the next round."""
    return ErrorFeedback(codec)


def chain(*codecs: Compressor) -> Compressor:
    """Compose codecs: the first compresses, the following casts shrink its floats."""
    if not codecs:
        raise ValueError("chain needs at least one codec")
    return codecs[0] if len(codecs) == 1 else Chain(*codecs)


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
