"""sign: 1 bit an entry plus one scale (32× fewer bytes than fp32).

Reference: Seide et al. 2014 (1-bit SGD); Bernstein et al. 2018 (signSGD);
Karimireddy et al. 2019 (EF-SignSGD: scale = mean |x|, use with error feedback).
"""

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Compressor
from distml.comm.compress.packing import pack_bits, unpack_bits


@CODECS.register("sign", paper="Seide et al. 2014; Karimireddy et al. 2019 (EF-SignSGD)",
                 summary="1-bit sign, scaled by mean |x| (32×); use with error_feedback")
class Sign(Compressor):
    """Send ``sign(x)`` packed 8 to a byte and ``mean(|x|)`` as the scale.

    The decoded tensor is ``scale * sign(x)`` (zeros decode as +scale): its L1 norm equals
    ``x``'s, the scaled sign of Karimireddy et al. 2019.
    """

    def compress(self, x, state):
        flat = x.reshape(-1)
        scale = flat.abs().mean().reshape(1).to(torch.float32)
        return (pack_bits((flat >= 0).to(torch.uint8), 1), scale), state

    def decompress(self, payload, like, state=None):
        bits, scale = payload
        signs = unpack_bits(bits, 1, like.numel()).to(like.dtype).mul_(2).sub_(1)
        return signs.mul_(scale.to(like.dtype)).reshape(like.shape)
