"""top-k: send the k largest-magnitude entries as int32 indices and their values.

Reference: Aji & Heafield 2017 ("Sparse Communication for Distributed Gradient Descent");
Stich et al. 2018 ("Sparsified SGD with Memory": use with error feedback).
"""

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Compressor, count_of


@CODECS.register("topk", paper="Aji & Heafield 2017; Stich et al. 2018 (with memory)",
                 summary="the ratio·n largest entries: int32 indices + values; use with error_feedback")
class TopK(Compressor):
    """Keep the ``ceil(ratio · n)`` entries of largest magnitude.

    Args:
        ratio: the fraction of entries sent, in (0, 1].

    Raises:
        ValueError: ratio outside (0, 1].
    """

    sparse = True

    def __init__(self, ratio: float = 0.01):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.ratio = float(ratio)

    def k(self, n: int) -> int:
        return count_of(self.ratio, n)

    def compress(self, x, state):
        flat = x.reshape(-1)
        idx = torch.topk(flat.abs(), self.k(flat.numel()), sorted=False).indices
        return (idx.to(torch.int32), flat[idx]), state

    def decompress(self, payload, like, state=None):
        idx, values = payload
        out = like.new_zeros(like.numel())
        out.index_add_(0, idx.long(), values.to(like.dtype))
        return out.reshape(like.shape)

    def describe(self) -> str:
        return f"topk({self.ratio:g})"
