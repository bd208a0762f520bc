"""Python API: user modules and datasets, distml.register, distml.wrap under distml launch."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from procs import distml, run

HERE = Path(__file__).parent
pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]


def test_run_with_user_module_dataset_and_registered_model(tmp_path):
    res = run([sys.executable, str(HERE / "user_script_api.py"), str(tmp_path)], timeout=150,
              cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads((tmp_path / "result.json").read_text())
    for key in ("module", "registered"):
        assert out[key]["workers"] == 2
        assert out[key]["test_accuracy"] > 0.9          # separable blobs
        assert out[key]["steps"] == 2 * (512 // 2 // 16)


def test_wrap_equals_single_process(tmp_path):
    saved = tmp_path / "wrapped.pt"
    res = distml("launch", "-n", "2", str(HERE / "user_script_wrap.py"), str(saved), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 32), nn.Tanh(), nn.Linear(32, 1))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.randn(20, 2, 16, 10, generator=g), torch.randn(20, 2, 16, 1, generator=g)
    for step in range(20):
        opt.zero_grad()
        nn.functional.mse_loss(model(X[step].reshape(32, 10)), Y[step].reshape(32, 1)).backward()
        opt.step()
    got = torch.load(saved, weights_only=True)
    worst = max((got[k] - v).abs().max().item() for k, v in model.state_dict().items())
    assert worst < 1e-5, worst


def test_launch_reports_a_failing_script(tmp_path):
    script = tmp_path / "fail.py"
    script.write_text("import os, sys\nsys.exit(7 if os.environ['RANK'] == '1' else 0)\n")
    res = distml("launch", "-n", "2", str(script), timeout=60)
    assert res.returncode == 7


def test_init_outside_launch_is_a_clear_error(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("import distml\ndistml.init()\n")
    env = {k: v for k, v in __import__("os").environ.items() if k not in ("RANK", "WORLD_SIZE")}
    res = run([sys.executable, str(script)], timeout=60, env=env)
    assert res.returncode != 0 and "distml launch" in res.stderr
