"""sync_sgd with parameters that one rank leaves without a gradient: a correct average
(the missing gradient counts as zero, as in DDP's find_unused_parameters), no hang and no
mispaired all-reduce."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from procs import distml

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import user_script_unused as script  # noqa: E402


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_rank_skipping_a_branch_averages_with_zeros(tmp_path):
    saved = tmp_path / "model.pt"
    res = distml("launch", "-n", "2", str(HERE / "user_script_unused.py"), str(saved), timeout=100)
    assert res.returncode == 0, res.stderr[-3000:]
    model, opt = script.model_and_optimizer()
    X, Y = script.data()
    for s in range(script.STEPS):
        opt.zero_grad()
        loss = sum(nn.functional.mse_loss(model(X[s, r], script.uses_branch(r, s)), Y[s, r])
                   for r in range(2)) / 2
        loss.backward()
        opt.step()
    got = torch.load(saved, weights_only=True)
    worst = max((got[k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert worst <= 1e-9, worst
