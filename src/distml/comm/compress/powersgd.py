"""PowerSGD: rank-r gradient compression by one step of power iteration, warm-started.

Reference: Vogels, Karimireddy & Jaggi 2019 ("PowerSGD: Practical Low-Rank Gradient
Compression for Distributed Optimization"). This reducer follows torch's own
``ddp_comm_hooks.powerSGD_hook`` step for step (the same tensors compressed, the same
random Q, Gram-Schmidt / QR, error feedback and warm start), so the two agree on the
same gradients; tests/compress checks that against torch's hook.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Reducer


@dataclass(frozen=True)
class _Layout:
    """Where things are in the flat buffer: ``plain`` ``(offset, numel)`` runs all-reduced as
    they are; ``matrices`` ``(offset, n, m, r, p_offset, q_offset)`` compressed, grouped by
    shape as torch's hook orders them; the sizes of the P and Q buffers."""

    plain: list[tuple[int, int]]
    matrices: list[tuple[int, int, int, int, int, int]]
    p_size: int
    q_size: int


def orthogonalize(m: torch.Tensor, epsilon: float = 0.0) -> None:
    """Orthonormalize the columns of a batch of matrices ``(b, n, r)`` in place."""
    rank = m.shape[2]
    if rank <= 2 or m.dtype in (torch.float16, torch.bfloat16):
        for i in range(rank):          # Gram-Schmidt, as torch's hook does for small ranks
            col = m[:, :, i:i + 1]
            col /= torch.norm(col, dim=1, keepdim=True) + epsilon
            if i + 1 < rank:
                rest = m[:, :, i + 1:]
                rest -= torch.sum(col * rest, dim=1, keepdim=True) * col
    else:
        m.copy_(torch.linalg.qr(m).Q)


@CODECS.register("powersgd", kind="reducer",
                 paper="Vogels et al. 2019 (PowerSGD); torch ddp_comm_hooks.powerSGD_hook",
                 summary="rank-r power iteration, warm start, error feedback inside (a Reducer)")
class PowerSGD(Reducer):
    """Reduce a flat tensor of matrices as ``P Q^T`` with ``P``, ``Q`` of rank ``rank``.

    Per round (``scheme = "torch"``, torch's hook): ``P = M Q`` (all-reduced,
    orthogonalized), ``Q = M^T P`` (all-reduced), mean ≈ ``P Q^T / world``.

    ``scheme = "alternating"`` is the authors' own library (epfml/powersgd,
    ``num_iters_per_step``): each iteration multiplies by the *other* factor,
    orthogonalized, from the previous one (``Q = M^T P`` on even iterations, ``P = M Q``
    on odd ones), averages only that factor, and subtracts its rank-r approximation from
    ``M`` before the next iteration. With ``iters_per_step = 1`` a round sends only P or
    Q (about half torch's bytes); with 2 it sends both, like torch's scheme, the second
    factor approximating what the first missed. Vectors and matrices that would not
    shrink by ``min_compression_rate`` are all-reduced as they are.

    Args:
        rank: the approximation rank r (≥ 1).
        start_iter: rounds of plain all-reduce before compressing (warm-up; counted in
            the bytes like every other round).
        min_compression_rate: compress a matrix only if it shrinks at least this much.
        warm_start: reuse last round's Q (power iteration across rounds).
        error_feedback: add the previous round's error before compressing.
        epsilon: added to norms while orthogonalizing.
        seed: the seed of the random initial Q (set by distml; the same on every rank).
        scheme: "torch" (torch's ``powerSGD_hook``, step for step) or "alternating"
            (epfml/powersgd; see above).
        iters_per_step: with "alternating", factor multiplications (and all-reduces) per
            round, ≥ 1.

    Raises:
        ValueError: rank < 1, start_iter < 0, min_compression_rate <= 0, an unknown
            scheme, iters_per_step < 1 (or != 1 with scheme "torch").
    """

    def __init__(self, rank: int = 2, start_iter: int = 0, min_compression_rate: float = 2.0,
                 warm_start: bool = True, error_feedback: bool = True, epsilon: float = 0.0,
                 seed: int = 0, scheme: str = "torch", iters_per_step: int = 1):
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if start_iter < 0:
            raise ValueError(f"start_iter must be >= 0, got {start_iter}")
        if not min_compression_rate > 0:
            raise ValueError(f"min_compression_rate must be > 0, got {min_compression_rate}")
        if scheme not in ("torch", "alternating"):
            raise ValueError(f"scheme must be 'torch' or 'alternating', got {scheme!r}")
        if iters_per_step < 1 or (scheme == "torch" and iters_per_step != 1):
            raise ValueError(f"iters_per_step must be >= 1 (and 1 with scheme 'torch'), "
                             f"got {iters_per_step}")
        if scheme == "alternating" and not warm_start:
            raise ValueError("scheme 'alternating' reuses the last factor: it needs warm_start")
        self.scheme, self.iters = scheme, int(iters_per_step)
        self.rank, self.start_iter = int(rank), int(start_iter)
        self.min_rate, self.warm_start = float(min_compression_rate), bool(warm_start)
        self.error_feedback, self.epsilon, self.seed = bool(error_feedback), float(epsilon), int(seed)
        self._layouts: dict[tuple, _Layout] = {}     # shapes → layout (:meth:`_layout`)

    def init(self, like, shapes=None):
        shapes = [tuple(s) for s in shapes] if shapes else [(like.numel(),)]
        if sum(int(np.prod(s)) for s in shapes) != like.numel():
            raise ValueError(f"shapes {shapes} do not cover a tensor of {like.numel()} entries")
        return {"iter": 0, "shapes": shapes, "error": None, "p": None, "q": None, "draws": 0,
                "rounds": 0}

    def _draw(self, state) -> int:
        # torch's hook draws from np.random.RandomState(seed); replaying the draws keeps the
        # generator's position in the (checkpointable) state as one integer
        rs = np.random.RandomState(self.seed)
        for _ in range(state["draws"]):
            rs.randint(1_000_000_000)
        state["draws"] += 1
        return int(rs.randint(1_000_000_000))

    def _layout(self, shapes) -> _Layout:
        """Which tensors of the flat buffer are compressed, and where their P and Q live.

        The same for every round with the same shapes, so it is worked out once: per round
        only views are taken (in a profile of bench/lm.py's transformer, working it out
        every round cost about as much CPU as one of the round's all-reduces).
        """
        key = tuple(tuple(s) for s in shapes)
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        plain: list[list[int]] = []
        by_shape: dict[tuple[int, int], list[int]] = defaultdict(list)
        offset = 0
        for s in key:
            numel = math.prod(s)
            n, m = (s[0], numel // s[0]) if len(s) and s[0] else (1, numel)
            r = min(n, m, self.rank)
            if len(s) and s[0] and (n + m) * r * self.min_rate < n * m:
                by_shape[(n, m)].append(offset)   # the order torch's hook lays P and Q out in
            elif plain and plain[-1][0] + plain[-1][1] == offset:
                plain[-1][1] += numel             # adjacent plain tensors: one slice
            elif numel:
                plain.append([offset, numel])
            offset += numel
        matrices, pi, qi = [], 0, 0
        for (n, m), offsets in by_shape.items():
            r = min(n, m, self.rank)
            for o in offsets:
                matrices.append((o, n, m, r, pi, qi))
                pi, qi = pi + n * r, qi + m * r
        layout = self._layouts[key] = _Layout([tuple(p) for p in plain], matrices, pi, qi)
        return layout

    def reduce(self, x, state, transport):
        world = transport.world_size
        state = dict(state)
        if state["iter"] < self.start_iter:
            out = x.reshape(-1).clone()
            transport.all_reduce(out, op="sum")
            state["iter"] += 1
            return out.div_(world).reshape(x.shape), state
        buf = x.reshape(-1).clone()
        if self.error_feedback:
            if state["error"] is not None:
                buf.add_(state["error"])
            before = buf.clone()
        layout = self._layout(state["shapes"])
        plain = [buf[o:o + n] for o, n in layout.plain]
        flat_plain = torch.cat(plain) if plain else buf.new_zeros(0)
        randomize = not self.warm_start or state["p"] is None
        if randomize:
            state["p"], state["q"] = buf.new_empty(layout.p_size), buf.new_empty(layout.q_size)
        mats, ps, qs = [], [], []
        for o, n, m, r, pi, qi in layout.matrices:
            mats.append(buf[o:o + n * m].view(1, n, m))
            ps.append(state["p"][pi:pi + n * r].view(1, n, r))
            qs.append(state["q"][qi:qi + m * r].view(1, m, r))
        if self.scheme == "alternating":
            return self._alternating(buf, x, before if self.error_feedback else None, flat_plain,
                                     plain, mats, ps, qs, randomize, state, transport)
        if not randomize:
            for q in qs:
                orthogonalize(q, self.epsilon)
        else:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._draw(state))
                for q in qs:
                    q.copy_(torch.randn(*q.shape, dtype=buf.dtype))
                    orthogonalize(q, self.epsilon)
        for mat, q, p in zip(mats, qs, ps):
            torch.bmm(mat, q, out=p)
        self._all_reduce_plain(flat_plain, plain, transport)
        if layout.p_size:
            transport.all_reduce(state["p"], op="sum")
            for p in ps:
                orthogonalize(p, self.epsilon)
            for mat, p, q in zip(mats, ps, qs):
                torch.bmm(mat.transpose(1, 2), p, out=q)
            transport.all_reduce(state["q"], op="sum")
            state["q"].div_(world)
            for p, q, mat in zip(ps, qs, mats):
                torch.bmm(p, q.transpose(1, 2), out=mat)
        if self.error_feedback:
            state["error"] = before.sub_(buf)       # (before is this round's own copy)
        if not self.warm_start:
            state["p"] = state["q"] = None
        state["iter"] += 1
        return buf.reshape(x.shape), state

    def _alternating(self, buf, x, before, flat_plain, plain, mats, ps, qs, randomize, state,
                     transport):
        """epfml/powersgd's round: multiply by the last factor, average the other, subtract."""
        world = transport.world_size
        if randomize:          # both factors random at first: either may be multiplied first
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self._draw(state))
                for m in ps + qs:
                    m.copy_(torch.randn(*m.shape, dtype=buf.dtype))
        self._all_reduce_plain(flat_plain, plain, transport)
        approx = [torch.zeros_like(m) for m in mats]
        for it in range(self.iters):
            even = (state["rounds"] * self.iters + it) % 2 == 0
            ins, outs, out_flat = (ps, qs, state["q"]) if even else (qs, ps, state["p"])
            for mat, a, b in zip(mats, ins, outs):
                orthogonalize(a, self.epsilon)
                torch.bmm(mat.transpose(1, 2) if even else mat, a, out=b)
            if out_flat.numel():
                transport.all_reduce(out_flat, op="sum")
                out_flat.div_(world)
            for mat, ap, p, q in zip(mats, approx, ps, qs):
                step = torch.bmm(p, q.transpose(1, 2))
                mat.sub_(step)           # what is left for the next iteration (and the error)
                ap.add_(step)
        for mat, ap in zip(mats, approx):
            mat.copy_(ap)                # buf now holds the mean: plain entries and approximations
        if before is not None:
            state["error"] = before.sub_(buf)
        state["rounds"] = state["rounds"] + 1
        state["iter"] += 1
        return buf.reshape(x.shape), state

    @staticmethod
    def _all_reduce_plain(flat_plain, plain, transport) -> None:
        transport.all_reduce(flat_plain, op="sum")
        flat_plain.div_(transport.world_size)
        offset = 0
        for t in plain:
            t.copy_(flat_plain[offset:offset + t.numel()].view_as(t))
            offset += t.numel()

    def describe(self) -> str:
        extra = "" if self.scheme == "torch" else f", alternating ×{self.iters}"
        return f"powersgd(rank {self.rank}{extra})"
