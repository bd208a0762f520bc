"""sign: 1 bit an entry plus one scale per bucket of entries (≈31× fewer bytes than fp32).

Reference: Seide et al. 2014 (1-bit SGD); Bernstein et al. 2018 (signSGD);
Karimireddy et al. 2019 (EF-SignSGD: scale = mean |x|, use with error feedback).
One scale per bucket (rather than per message) keeps layers of different gradient
magnitudes apart when a message carries a whole model.
"""

import math

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Compressor
from distml.comm.compress.packing import pack_bits, unpack_bits


@CODECS.register("sign", paper="Seide et al. 2014; Karimireddy et al. 2019 (EF-SignSGD)",
                 summary="1-bit sign, scaled by mean |x| per bucket (≈31×); use with error_feedback")
class Sign(Compressor):
    """Send ``sign(x)`` packed 8 to a byte and ``mean(|x|)`` of every bucket as its scale.

    The decoded bucket is ``scale * sign(x)`` (zeros decode as +scale): its L1 norm equals
    the bucket's, the scaled sign of Karimireddy et al. 2019.

    Args:
        bucket_size: entries sharing one fp32 scale (≥ 1); 4 bytes per bucket.

    Raises:
        ValueError: bucket_size < 1.
    """

    quantizer = True       # may quantize a sparsifier's kept values in a chain

    def __init__(self, bucket_size: int = 1024):
        if bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
        self.bucket_size = int(bucket_size)

    def compress(self, x, state):
        flat = x.reshape(-1)
        n = flat.numel()
        nb = max(1, math.ceil(n / self.bucket_size))
        padded = flat.new_zeros(nb * self.bucket_size)
        padded[:n] = flat.abs()
        # mean over the real entries only (the last bucket may be short)
        counts = flat.new_full((nb,), float(self.bucket_size))
        counts[-1] = n - (nb - 1) * self.bucket_size
        scales = (padded.view(nb, self.bucket_size).sum(dim=1) / counts).to(torch.float32)
        return (pack_bits((flat >= 0).to(torch.uint8), 1), scales), state

    def decompress(self, payload, like, state=None):
        bits, scales = payload
        n = like.numel()
        signs = unpack_bits(bits, 1, n).to(like.dtype).mul_(2).sub_(1)
        per_entry = scales.to(like.dtype).repeat_interleave(self.bucket_size)[:n]
        return signs.mul_(per_entry).reshape(like.shape)

    def describe(self) -> str:
        return "sign"
