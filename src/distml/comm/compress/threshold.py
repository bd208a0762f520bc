"""threshold: model filtering — send only the entries whose change exceeds τ.

Reference: Strom 2015 ("Scalable Distributed DNN Training Using Commodity GPU Cloud
Computing": threshold quantization with residual accumulation); docs/design.md §2.4.
The payload's length varies from round to round (``fixed_size = False``): the reduction
helper exchanges lengths first and pads the all-gather to the longest.
"""

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Compressor


@CODECS.register("threshold", paper="Strom 2015 (threshold + residual)",
                 summary="entries with |change| > tau: int32 indices + values; variable size")
class Threshold(Compressor):
    """Send ``(i, x_i)`` for every ``|x_i| > tau``; with error feedback the rest accumulates.

    Args:
        tau: the threshold, > 0.

    Raises:
        ValueError: tau <= 0.
    """

    fixed_size = False
    sparse = True

    def __init__(self, tau: float = 1e-3):
        if not tau > 0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.tau = float(tau)

    def compress(self, x, state):
        flat = x.reshape(-1)
        idx = torch.nonzero(flat.abs() > self.tau).reshape(-1)
        return (idx.to(torch.int32), flat[idx]), state

    def decompress(self, payload, like, state=None):
        idx, values = payload
        out = like.new_zeros(like.numel())
        out.index_add_(0, idx.long(), values.to(like.dtype))
        return out.reshape(like.shape)

    def describe(self) -> str:
        return f"threshold({self.tau:g})"
