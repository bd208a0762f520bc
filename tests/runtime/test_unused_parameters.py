"""sync_sgd with parameters that one rank leaves without a gradient: a correct average
(the missing gradient counts as zero, as in DDP's find_unused_parameters), no hang and no
mispaired all-reduce."""

import pytest
from torch import nn

import user_script_unused as script
from references import launched_state, max_difference


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_rank_skipping_a_branch_averages_with_zeros(tmp_path):
    got = launched_state("user_script_unused.py", tmp_path)
    model, opt = script.model_and_optimizer()
    X, Y = script.data()
    for s in range(script.STEPS):
        opt.zero_grad()
        loss = sum(nn.functional.mse_loss(model(X[s, r], script.uses_branch(r, s)), Y[s, r])
                   for r in range(2)) / 2
        loss.backward()
        opt.step()
    worst = max_difference(got, model.state_dict())
    assert worst <= 1e-9, worst
