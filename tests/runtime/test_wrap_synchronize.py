"""``distml.wrap``: Horovod-style ``synchronize()`` with clipping and a GradScaler, and the
algorithms whose hooks a user's loop cannot run are refused."""

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import distml
from distml.errors import UserError
from procs import distml as distml_cli

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
import user_script_wrap_amp as script  # noqa: E402


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_synchronize_clip_and_scaler_equal_single_process(tmp_path):
    saved = tmp_path / "wrapped.pt"
    res = distml_cli("launch", "-n", "2", str(HERE / "user_script_wrap_amp.py"), str(saved), timeout=100)
    assert res.returncode == 0, res.stderr[-3000:]
    model, opt = script.model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=script.SCALE)
    X, Y = script.data()
    norms = [script.step(model, opt, scaler, X[s].reshape(32, 10), Y[s].reshape(32, 1))
             for s in range(script.STEPS)]
    assert sum(n > script.CLIP for n in norms) >= script.STEPS // 2, norms   # the clip acts
    got = torch.load(saved, weights_only=True)
    worst = max((got[k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert worst <= 1e-6, worst


@pytest.mark.parametrize("name,match", [("admm", "loss_terms"), ("ensemble", "eval_model"),
                                        ("gossip", "eval_model"), ("hogwild", "runs its own loop")])
def test_wrap_refuses_hooks_it_cannot_run(name, match):
    model = nn.Linear(3, 2)
    with pytest.raises(UserError, match=match):
        distml.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), algorithm=name)
