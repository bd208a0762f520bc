"""bf16: send bfloat16 (fp32's exponent range, 8 bits of mantissa; 2× fewer bytes).

Reference: Kalamkar et al. 2019 ("A Study of BFLOAT16 for Deep Learning Training").
"""

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Cast


@CODECS.register("bf16", paper="Kalamkar et al. 2019 (bfloat16)",
                 summary="cast to bfloat16 (2×, no overflow); summable")
class BF16(Cast):
    """Cast to bfloat16 for the wire; all-reduced directly (summable)."""

    wire_dtype = torch.bfloat16
