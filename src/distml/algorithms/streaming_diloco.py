"""Streaming DiLoCo: DiLoCo whose model is averaged one fragment at a time, on staggered
schedules, with each fragment's communication overlapped with inner steps.

Reference: Douillard et al. 2025 ("Streaming DiLoCo with overlapping communication:
towards a distributed free lunch"). The parameters are cut into F contiguous fragments of
parameter tensors, balanced by size. Fragment p is averaged every H inner steps at offset
p·H/F, so one fragment travels every H/F steps and the largest message is about 1/F of
DiLoCo's. Its averaging runs while τ more inner steps compute; then the outer optimizer
(one state per fragment) steps on the fragment's averaged pseudo-gradient, giving the
global θ_g, and each worker merges ``α·θ_local + (1−α)·θ_g`` (α = 0: take the global
fragment, dropping the τ local steps; the paper uses α = 0.5 with overlap).

It is :class:`~distml.algorithms.local_sgd.LocalSGD`'s mechanism (anchors, outer step,
codec state, background reduction: :mod:`distml.algorithms._fragments`) with three
things changed: the fragments, their schedule and the merge. F = 1, τ = 0, α = 0 is DiLoCo.
"""

from __future__ import annotations

from typing import Any

import torch

from distml.algorithms._fragments import split_into_fragments
from distml.algorithms.local_sgd import DILOCO_OUTER, LocalSGD
from distml.algorithms.registry import ALGORITHMS
from distml.errors import ConfigError


@ALGORITHMS.register("streaming_diloco", topology="collective", pace="bsp, one fragment every H/F",
                     paper="Douillard et al. 2025 (Streaming DiLoCo)",
                     summary="DiLoCo averaging F fragments on staggered schedules, each overlapped "
                             "with τ inner steps and merged with mixing α (use adamw as [optim])")
class StreamingDiLoCo(LocalSGD):
    """Streaming DiLoCo (Douillard et al. 2025).

    Args:
        period: H, inner steps between two averagings of one fragment (≥ 1).
        fragments: F, contiguous groups of parameter tensors balanced by size (1 ≤ F ≤ the
            model's trainable tensors); fragment p is averaged after ``warmup_steps + p·H/F
            + k·H`` steps (offsets rounded down).
        overlap_steps: τ ≥ 0 and < H/F: inner steps computed while a fragment's reduction
            travels; it is merged after them (0: at once).
        mixing: α in [0, 1]: the merged fragment is ``α·θ_local + (1−α)·θ_global``.
        outer_optimizer: any registered optimizer spec (default DiLoCo's Nesterov SGD,
            lr 0.7, momentum 0.9); each fragment keeps its own state.
        warmup_steps: average every fragment after every step for the first steps (at
            once, no overlap), then stream.
        codec: set by distml from ``[comm] codec`` (applied to each fragment's delta).

    At the end of training every fragment that moved since its last averaging is averaged
    once more and every rank takes the global value (no mixing), so the run ends with one
    model.

    Raises:
        ValueError: an argument outside its range.
    """

    def __init__(self, period: int = 100, fragments: int = 4, overlap_steps: int = 0,
                 mixing: float = 0.0, outer_optimizer=None, warmup_steps: int = 0, codec=None):
        super().__init__(period=period, warmup_steps=warmup_steps,
                         outer_optimizer=DILOCO_OUTER if outer_optimizer is None else outer_optimizer,
                         codec=codec)
        if fragments < 1:
            raise ValueError(f"fragments must be >= 1 (and at most the model's trainable "
                             f"tensors), got {fragments}")
        if not 0 <= overlap_steps < self.period / fragments:
            raise ValueError(f"overlap_steps must be in [0, period / fragments = "
                             f"{self.period / fragments:g}), got {overlap_steps}")
        if not 0 <= mixing <= 1:
            raise ValueError(f"mixing must be in [0, 1], got {mixing}")
        self.n_fragments, self.overlap_steps = int(fragments), int(overlap_steps)
        self.mixing = float(mixing)
        self.offsets = [p * self.period // self.n_fragments for p in range(self.n_fragments)]
        self.fragment_sizes: list[int] | None = None

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """Refuse, before any process starts, more fragments than trainable tensors."""
        params = [p for p in model.parameters() if p.requires_grad]
        if len(params) < self.n_fragments:
            raise ConfigError(f"streaming_diloco: the model has {len(params)} trainable parameter "
                              f"tensors and cannot make {self.n_fragments} fragments; use "
                              f"fragments <= {len(params)}")
        self.fragment_sizes = [sum(p.numel() for p in g)
                               for g in split_into_fragments(params, self.n_fragments)]
        return model

    def split(self, params):
        return split_into_fragments(params, self.n_fragments)

    def due(self, done: int) -> list[int]:
        if done <= self.warmup_steps:
            return list(range(self.n_fragments))
        t = done - self.warmup_steps
        return [p for p, offset in enumerate(self.offsets)
                if t > 0 and t >= offset and (t - offset) % self.period == 0]

    def merge_step(self, done: int) -> int | None:
        return None if self.overlap_steps == 0 or done <= self.warmup_steps \
            else done + self.overlap_steps

    def merge(self, x, sent_point, anchor, progressed):
        """The paper's merge: ``α·θ_local + (1−α)·θ_global`` (the global one when α = 0)."""
        if self.mixing == 0:
            return anchor, True
        return self.mixing * x + (1 - self.mixing) * anchor, False

    def describe(self) -> dict[str, Any]:
        base = super().describe()
        return {"algorithm": "streaming_diloco", "period": self.period,
                "fragments": self.n_fragments, "fragment_sizes": self.fragment_sizes,
                "overlap_steps": self.overlap_steps, "mixing": self.mixing,
                **{k: base[k] for k in ("warmup_steps", "outer_optimizer", "codec",
                                        "peak_sync_bytes")}}
