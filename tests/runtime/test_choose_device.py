"""Device and backend choice, on any machine (CUDA's answers are faked)."""

import pytest
import torch

from distml.config import parse_config
from distml.errors import UserError
from distml.runtime.worker import choose_device


def _config(device="auto", backend="auto"):
    return parse_config({"name": "d", "data": {"source": {"name": "synthetic"}}, "model": {"name": "mlp"},
                         "comm": {"backend": backend}, "train": {"device": device}})


@pytest.fixture
def gpus(monkeypatch):
    def have(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return have


def test_cpu_gets_gloo(gpus):
    gpus(0)
    assert choose_device(_config(), 0) == (torch.device("cpu"), "gloo")
    with pytest.raises(UserError, match="no CUDA device is visible"):
        choose_device(_config(device="cuda"), 0)
    with pytest.raises(UserError, match="nccl' needs CUDA devices"):
        choose_device(_config(backend="nccl"), 0)


def test_one_nccl_rank_per_gpu(gpus):
    gpus(2)
    assert choose_device(_config(), 1, local_world=2) == (torch.device("cuda", 1), "nccl")
    with pytest.raises(UserError, match="this host runs 3 ranks and sees 2 GPU"):
        choose_device(_config(), 0, local_world=3)
    # gloo may share a GPU between ranks (checked on a real GPU in tests/gpu)
    assert choose_device(_config(backend="gloo"), 2, local_world=3) == (torch.device("cuda", 0), "gloo")
