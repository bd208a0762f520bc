"""fp16: send IEEE half precision (2 bytes an entry, 2× fewer than fp32).

Reference: PyTorch DDP's ``fp16_compress_hook``; Micikevicius et al. 2018 (mixed precision).
"""

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Cast


@CODECS.register("fp16", paper="PyTorch fp16_compress_hook; Micikevicius et al. 2018",
                 summary="cast to float16 (2×); summable: all-reduced in float16")
class FP16(Cast):
    """Cast to float16 for the wire; all-reduced directly (summable)."""

    wire_dtype = torch.float16
