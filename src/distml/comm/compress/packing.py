"""Pack small unsigned integers (1, 2 or 4 bits each) into bytes, and back."""

import torch


def pack_bits(values: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack uint8 ``values`` (each < 2**bits) into ``ceil(n * bits / 8)`` bytes."""
    if bits == 8:
        return values.to(torch.uint8)
    per = 8 // bits
    n = values.numel()
    padded = values.new_zeros(-(-n // per) * per, dtype=torch.uint8)
    padded[:n] = values
    lanes = padded.view(-1, per)
    out = values.new_zeros(lanes.shape[0], dtype=torch.uint8)
    for j in range(per):
        out |= lanes[:, j] << (j * bits)
    return out


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` values packed by :func:`pack_bits` (uint8)."""
    if bits == 8:
        return packed[:n]
    per = 8 // bits
    mask = (1 << bits) - 1
    lanes = torch.stack([(packed >> (j * bits)) & mask for j in range(per)], dim=1)
    return lanes.reshape(-1)[:n]
