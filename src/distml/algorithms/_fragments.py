"""A group of parameter tensors averaged on its own: the state local SGD and Streaming
DiLoCo share.

Local SGD / DiLoCo average the whole model as one fragment; Streaming DiLoCo (Douillard
et al. 2025) cuts it into F contiguous fragments balanced by size, each averaged on its
own staggered schedule. Either way a fragment keeps the point its workers agreed on last
(the *anchor*), the outer optimizer stepped on its pseudo-gradient ``anchor − mean(θ_i)``
(one state per fragment), its codec state (error-feedback residuals, PowerSGD's factors)
and the reduction in flight when communication overlaps compute.
"""

from __future__ import annotations

from typing import Any

import torch

from distml.comm.buckets import flatten, unflatten_into
from distml.comm.compress import init_state, reduce_mean, start_reduce
from distml.optim import build_optimizer
from distml.partition.blocks import balance


def split_into_fragments(params: list[torch.Tensor], fragments: int) -> list[list[torch.Tensor]]:
    """``fragments`` contiguous groups of ``params`` whose largest size is as small as possible."""
    bounds = balance([p.numel() for p in params], fragments)
    return [params[a:b] for a, b in zip(bounds, bounds[1:])]


class Fragment:
    """One group of parameter tensors averaged together.

    Args:
        params: the tensors (views into the model: averaging writes into them).
        outer_spec: the outer optimizer's spec, or None (the anchor moves by the mean delta).
        codec: the run's codec (its state here is this fragment's own).

    Attributes:
        anchor: the agreed point deltas are taken from (the outer optimizer's result).
        in_agreement: the parameters equal the anchor on every rank (nothing to average
            at the end of training).
    """

    def __init__(self, params: list[torch.Tensor], outer_spec, codec):
        self.params, self.outer_spec, self.codec = params, outer_spec, codec
        self.start_from(flatten(params))
        self.codec_state = init_state(codec, self.anchor, [p.shape for p in params])
        self.pending = None                   # the reduction in flight
        self.sent_point: torch.Tensor | None = None   # the parameters its delta was taken at
        self.started_at = self.merge_at = 0   # steps done when it was sent / is merged
        self.extra_bytes = 0                  # bytes sent with it at its start (buffers)
        self.in_agreement = True

    @property
    def nbytes(self) -> int:
        """The fragment's size in bytes, uncompressed."""
        return sum(p.numel() * p.element_size() for p in self.params)

    def start_from(self, x: torch.Tensor) -> None:
        """Make ``x`` the anchor and the outer optimizer's parameter (fresh optimizer state)."""
        self.anchor = x.detach().clone()
        self.outer_w = self.outer = None
        if self.outer_spec is not None:
            self.outer_w = torch.nn.Parameter(self.anchor.clone(), requires_grad=False)
            self.outer = build_optimizer(self.outer_spec, [self.outer_w])

    def outer_step(self, mean: torch.Tensor) -> torch.Tensor:
        """Move the anchor by the averaged delta ``mean`` and return it: one step of the
        outer optimizer on the pseudo-gradient ``-mean`` (DiLoCo's outer step; BMUF's
        Δ = ηΔ + ζG, W = W + Δ, next block at W + ηΔ), or ``anchor += mean`` without one."""
        if self.outer is None:
            self.anchor += mean
            return self.anchor
        self.outer_w.grad = -mean
        self.outer.step()
        self.anchor.copy_(self.outer_w)
        return self.anchor

    def current(self) -> torch.Tensor:
        return flatten(self.params)

    def write(self, x: torch.Tensor) -> None:
        unflatten_into(x, self.params)

    def reduce(self, transport) -> tuple[torch.Tensor, torch.Tensor]:
        """Average the delta now; returns ``(sent_point, new anchor)``."""
        x = self.current()
        mean, self.codec_state = reduce_mean(x - self.anchor, self.codec, self.codec_state,
                                             transport)
        return x, self.outer_step(mean)

    def start(self, transport, started_at: int, merge_at: int, extra_bytes: int = 0) -> None:
        """Start averaging the delta in the background after ``started_at`` steps, to be
        merged after ``merge_at`` (:meth:`finish`); ``extra_bytes`` were sent with it."""
        self.sent_point = self.current()
        self.pending = start_reduce(self.sent_point - self.anchor, self.codec, self.codec_state,
                                    transport)
        self.started_at, self.merge_at, self.extra_bytes = started_at, merge_at, extra_bytes

    def finish(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        """Wait for the averaging in flight; returns ``(sent_point, new anchor, handle)``."""
        pending, sent_point = self.pending, self.sent_point
        mean, self.codec_state = pending.wait()
        self.pending = self.sent_point = None
        return sent_point, self.outer_step(mean), pending

    def state_dict(self) -> dict[str, Any]:
        """Call with nothing in flight (the algorithm drains first)."""
        return {"anchor": self.anchor.clone(),
                "outer": None if self.outer is None else {"w": self.outer_w.detach().clone(),
                                                          "optimizer": self.outer.state_dict()},
                "codec_state": self.codec_state, "in_agreement": self.in_agreement}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.anchor.copy_(state["anchor"])
        if self.outer is not None:
            self.outer_w.data.copy_(state["outer"]["w"])
            self.outer.load_state_dict(state["outer"]["optimizer"])
        self.codec_state, self.in_agreement = state["codec_state"], bool(state["in_agreement"])
