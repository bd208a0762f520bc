import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # tiny tensors: extra threads only contend on a shared 2-core machine (60x slower here)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
