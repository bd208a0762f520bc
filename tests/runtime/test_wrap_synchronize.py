"""``distml.wrap``: Horovod-style ``synchronize()`` with clipping and a GradScaler, and the
algorithms whose hooks a user's loop cannot run are refused."""

import pytest
import torch
from torch import nn

import distml
from distml.errors import UserError
import user_script_wrap_amp as script
from references import launched_state, max_difference


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_synchronize_clip_and_scaler_equal_single_process(tmp_path):
    got = launched_state("user_script_wrap_amp.py", tmp_path)
    model, opt = script.model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=script.SCALE)
    X, Y = script.data()
    norms = [script.step(model, opt, scaler, X[s].reshape(32, 10), Y[s].reshape(32, 1))
             for s in range(script.STEPS)]
    assert sum(n > script.CLIP for n in norms) >= script.STEPS // 2, norms   # the clip acts
    worst = max_difference(got, model.state_dict())
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("name,match", [("admm", "loss_terms"), ("ensemble", "eval_model"),
                                        ("gossip", "eval_model"), ("hogwild", "runs its own loop")])
def test_wrap_refuses_hooks_it_cannot_run(name, match):
    model = nn.Linear(3, 2)
    with pytest.raises(UserError, match=match):
        distml.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm=name)
