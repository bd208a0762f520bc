"""Momentum correction (and momentum factor masking) as a wrapper around any codec.

Reference: Lin, Han, Mao, Wang & Dally 2018 ("Deep Gradient Compression", §3.2): with a
lossy codec and error feedback, applying momentum *after* the reduction lets the
residual's delayed entries be amplified by the momentum once they are finally sent.
DGC instead accumulates the velocity locally — ``u ← m·u + g`` — compresses ``u`` (with
error feedback, so what is not sent waits in the residual), and the optimizer then
applies the mean without momentum. With a lossless codec this is exactly momentum SGD:
the mean of the workers' velocities is the velocity of the mean gradient.

Momentum factor masking (DGC §3.3): after a sparse message, zero the velocity where
entries were sent, so a coordinate that was just applied does not keep being pushed by
its stale momentum. It is meant for sparsifiers (top-k, threshold, random-k): a dense
codec (sign, QSGD) sends (almost) everything every round, and masking would erase the
momentum altogether.

State (explicit, checkpointable): ``{"velocity": Tensor, "inner": inner codec's state}``.
"""

from __future__ import annotations

from typing import Any

import torch

from distml.comm.compress.base import Compressor, Reducer


def _check(momentum: float, inner) -> None:
    if not 0 < momentum < 1:
        raise ValueError(f"momentum must be in (0, 1), got {momentum}")
    if inner is None:
        raise ValueError("momentum correction wraps a codec; got None")


class MomentumCorrection(Compressor):
    """Compress the locally accumulated velocity instead of the gradient (DGC).

    Args:
        inner: the codec of the velocity (usually ``with_error_feedback(topk)``).
        momentum: m in (0, 1), taken from the optimizer (which then runs without it).
        nesterov: send ``g + m·u`` (torch's Nesterov form) instead of ``u``.
        masking: momentum factor masking — zero ``u`` where the decoded message is
            non-zero (sparsifiers only; see the module docstring).

    Raises:
        ValueError: momentum outside (0, 1), or ``inner`` is a Reducer (use
            :class:`MomentumCorrectionReducer`).
    """

    def __init__(self, inner: Compressor, momentum: float, nesterov: bool = False,
                 masking: bool = False):
        _check(momentum, inner)
        if isinstance(inner, Reducer):
            raise ValueError(f"{inner.describe()} is a Reducer; use MomentumCorrectionReducer")
        self.inner, self.momentum = inner, float(momentum)
        self.nesterov, self.masking = bool(nesterov), bool(masking)
        self.summable, self.fixed_size = inner.summable, inner.fixed_size
        self.lossless, self.cast = inner.lossless, False
        self.decode_needs_state = inner.decode_needs_state

    def init(self, like: torch.Tensor) -> dict[str, Any]:
        return {"velocity": torch.zeros_like(like).reshape(-1), "inner": self.inner.init(like)}

    def compress(self, x, state):
        g = x.reshape(-1)
        u = state["velocity"].mul(self.momentum).add_(g)
        send = g + self.momentum * u if self.nesterov else u
        payload, inner = self.inner.compress(send, state["inner"])
        if self.masking:
            sent = self.inner.decompress(payload, send, inner) != 0
            u = u.masked_fill_(sent, 0.0)
        return payload, {"velocity": u, "inner": inner}

    def decompress(self, payload, like, state=None):
        return self.inner.decompress(payload, like, None if state is None else state["inner"])

    def describe(self) -> str:
        extra = ", nesterov" if self.nesterov else ""
        extra += ", masking" if self.masking else ""
        return f"momentum_correction({self.inner.describe()}, m={self.momentum:g}{extra})"


class MomentumCorrectionReducer(Reducer):
    """:class:`MomentumCorrection` for a multi-round Reducer (PowerSGD reduces the velocity;
    its own error feedback keeps what the low-rank message missed). No masking: a
    low-rank message is dense."""

    def __init__(self, inner: Reducer, momentum: float, nesterov: bool = False):
        _check(momentum, inner)
        self.inner, self.momentum, self.nesterov = inner, float(momentum), bool(nesterov)
        self.lossless = inner.lossless

    def init(self, like, shapes=None):
        return {"velocity": torch.zeros_like(like).reshape(-1),
                "inner": self.inner.init(like, shapes)}

    def reduce(self, x, state, transport):
        g = x.reshape(-1)
        u = state["velocity"].mul(self.momentum).add_(g)
        send = g + self.momentum * u if self.nesterov else u
        mean, inner = self.inner.reduce(send, state["inner"], transport)
        return mean.reshape(x.shape), {"velocity": u, "inner": inner}

    def describe(self) -> str:
        extra = ", nesterov" if self.nesterov else ""
        return f"momentum_correction({self.inner.describe()}, m={self.momentum:g}{extra})"


def with_momentum_correction(codec: Compressor | Reducer, momentum: float, nesterov: bool = False,
                             masking: bool = False) -> Compressor | Reducer:
    """Wrap ``codec`` so that it carries the velocity of momentum SGD (DGC momentum correction).

    The caller must then apply the reduced result *without* momentum (``sync_sgd`` with
    ``momentum_correction = true`` moves the optimizer's momentum here).

    Raises:
        ValueError: momentum outside (0, 1); masking with a Reducer.
    """
    if isinstance(codec, Reducer):
        if masking:
            raise ValueError(f"momentum masking needs a sparse Compressor; {codec.describe()} "
                             "is a Reducer with dense messages")
        return MomentumCorrectionReducer(codec, momentum, nesterov)
    return MomentumCorrection(codec, momentum, nesterov, masking)
