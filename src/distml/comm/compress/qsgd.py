"""QSGD: stochastic k-bit quantization with one norm per bucket of entries.

Reference: Alistarh et al. 2017 ("QSGD: Communication-Efficient SGD via Gradient
Quantization and Encoding"). Each entry becomes a signed level in ``[-s, s]`` with
``s = 2**(bits-1) - 1`` (the sign is one of the ``bits``), rounded up with probability
equal to the remainder, so the decoded tensor is unbiased. Levels are packed
``8 // bits`` to a byte; every bucket of ``bucket_size`` entries sends one fp32 norm.
"""

import math

import torch

from distml.comm.compress import CODECS
from distml.comm.compress.base import Compressor, generator
from distml.comm.compress.packing import pack_bits, unpack_bits


@CODECS.register("qsgd", paper="Alistarh et al. 2017 (QSGD)",
                 summary="stochastic k-bit quantization (k = 2, 4, 8 incl. sign), bucketed norms")
class QSGD(Compressor):
    """Unbiased stochastic quantization to ``bits`` bits an entry (sign included).

    Args:
        bits: 2, 4 or 8 bits per entry, sign included (1, 7 or 127 magnitude levels).
        bucket_size: entries sharing one norm; smaller buckets lower the variance and
            add 4 bytes per bucket.
        norm: "max" (the bucket's largest magnitude: lower variance, the common
            implementation choice) or "l2" (the paper's analysis).
        seed: the run's seed; with ``worker_rank`` it makes each rank's rounding noise
            independent and reproducible (set by distml).
        worker_rank: this worker's rank (set by distml).

    Raises:
        ValueError: bits not in {2, 4, 8}, bucket_size < 1 or an unknown norm.
    """

    quantizer = True       # may quantize a sparsifier's kept values in a chain (SparseLoCo)

    def __init__(self, bits: int = 4, bucket_size: int = 512, norm: str = "max", seed: int = 0,
                 worker_rank: int = 0):
        if bits not in (2, 4, 8):
            raise ValueError(f"bits must be one of 2, 4, 8 (sign included), got {bits}")
        if bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1, got {bucket_size}")
        if norm not in ("max", "l2"):
            raise ValueError(f"norm must be one of max, l2, got {norm!r}")
        self.bits, self.bucket_size, self.norm = int(bits), int(bucket_size), norm
        self.seed, self.worker_rank = int(seed), int(worker_rank)
        self.levels = 2 ** (self.bits - 1) - 1

    def init(self, like):
        return {"step": 0}

    def _buckets(self, flat: torch.Tensor) -> torch.Tensor:
        n = flat.numel()
        nb = max(1, math.ceil(n / self.bucket_size))
        padded = flat.new_zeros(nb * self.bucket_size)
        padded[:n] = flat
        return padded.view(nb, self.bucket_size)

    def compress(self, x, state):
        flat = x.reshape(-1)
        b = self._buckets(flat)
        norms = (b.abs().amax(dim=1) if self.norm == "max" else b.norm(dim=1)).to(torch.float32)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms)).to(flat.dtype)
        scaled = b.abs() / safe[:, None] * self.levels
        # drawn from the CPU generator and then moved: the same bits on every device
        noise = torch.rand(scaled.shape, generator=generator(self.seed, self.worker_rank, state["step"]),
                           dtype=scaled.dtype).to(scaled.device)
        level = torch.floor(scaled + noise).clamp_(max=self.levels)
        code = (torch.sign(b) * level + self.levels).reshape(-1)[:flat.numel()].to(torch.uint8)
        return (pack_bits(code, self.bits), norms), {"step": state["step"] + 1}

    def decompress(self, payload, like, state=None):
        packed, norms = payload
        n = like.numel()
        code = unpack_bits(packed, self.bits, n).to(like.dtype) - self.levels
        nb = norms.numel()
        full = like.new_zeros(nb * self.bucket_size)
        full[:n] = code
        out = full.view(nb, self.bucket_size) * (norms.to(like.dtype)[:, None] / self.levels)
        return out.reshape(-1)[:n].reshape(like.shape)

    def describe(self) -> str:
        return f"qsgd({self.bits}bit)"
