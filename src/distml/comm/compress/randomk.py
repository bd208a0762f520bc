"""random-k: send k entries chosen by a random stream every rank shares.

Reference: Stich et al. 2018 ("Sparsified SGD with Memory", rand-k); Wangni et al. 2018.
Every rank draws the same indices from ``(seed, step)``, so only the values travel and
payloads of all ranks can be summed with one all-reduce (summable).
"""

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Compressor, count_of, generator


@CODECS.register("randomk", paper="Stich et al. 2018 (rand-k with memory)",
                 summary="k shared random entries (values only, summable); use with error_feedback")
class RandomK(Compressor):
    """Keep ``ceil(ratio · n)`` entries at indices drawn from the shared seed.

    Args:
        ratio: the fraction of entries sent, in (0, 1].
        seed: the run's seed, the same on every rank (set by distml).

    Raises:
        ValueError: ratio outside (0, 1].
    """

    summable = True
    sparse = True
    index_tensors = 0              # no index travels:
    decode_needs_state = True      # the indices come from the shared step counter

    def __init__(self, ratio: float = 0.01, seed: int = 0):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio, self.seed = float(ratio), int(seed)
        # the last draw: compress, error feedback and decompress of one round ask for the same
        # indices (a pure function of n and step, so this is a cache, not state)
        self._last: tuple[int, int, torch.Tensor] | None = None

    def init(self, like):
        return {"step": 0}

    def k(self, n: int) -> int:
        return count_of(self.ratio, n)

    def kept(self, indices, n: int) -> int:
        return self.k(n)

    def _indices(self, n: int, step: int) -> torch.Tensor:
        if self._last is not None and self._last[:2] == (n, step):
            return self._last[2]
        k = self.k(n)
        idx = torch.randperm(n, generator=generator(self.seed, 7919, step))[:k]
        self._last = (n, step, idx)
        return idx

    def compress(self, x, state):
        flat = x.reshape(-1)
        idx = self._indices(flat.numel(), state["step"])
        return (flat[idx.to(flat.device)],), {"step": state["step"] + 1}

    def decompress(self, payload, like, state=None):
        if state is None:
            raise ValueError("randomk.decompress needs the state compress returned (the shared step)")
        idx = self._indices(like.numel(), state["step"] - 1)
        out = like.new_zeros(like.numel())
        out[idx.to(like.device)] = payload[0].to(like.dtype)
        return out.reshape(like.shape)

    def describe(self) -> str:
        return f"randomk({self.ratio:g})"
