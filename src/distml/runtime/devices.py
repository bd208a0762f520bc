"""Which device and communication backend a run gets on this host.

One function decides it for the dry run, the launcher's checks before any process starts,
and every worker, so a combination refused in a worker is refused up front too.
"""

from __future__ import annotations

import torch

from distml.errors import UserError


def resolve_device(device: str, backend: str, local_world: int) -> tuple[str, str]:
    """The device type ("cuda" or "cpu") and the resolved backend ("gloo" or "nccl").

    Args:
        device: ``train.device``: "auto", "cpu" or "cuda".
        backend: ``comm.backend``: "auto", "gloo" or "nccl".
        local_world: ranks on this host (NCCL takes one GPU per rank).

    Raises:
        UserError: CUDA asked for but not visible, NCCL without CUDA, or more local NCCL
            ranks than GPUs (NCCL refuses two ranks of one communicator on one GPU).
    """
    available = torch.cuda.is_available()
    if device == "cuda" and not available:
        raise UserError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    cuda = available and device != "cpu"
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise UserError("comm.backend = 'nccl' needs CUDA devices; use 'gloo' on CPU")
    if backend == "nccl" and local_world > torch.cuda.device_count():
        raise UserError(f"comm.backend = 'nccl' takes one GPU per rank, but this host runs "
                        f"{local_world} ranks and sees {torch.cuda.device_count()} GPU(s); use "
                        f"at most that many workers per host, or comm.backend = 'gloo' (it "
                        f"shares a GPU between ranks)")
    return ("cuda" if cuda else "cpu"), backend
