"""Synchronous SGD with codecs through the CLI (2 workers, digits, a small MLP)."""

import json

import pytest

from procs import distml

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]

CONFIG = """
name = "sync-codec"
seed = 2
workers = 2
[data]
source = {{ name = "sklearn", dataset = "digits" }}
batch_size = 32
[model]
name = "mlp"
hidden = [32]
[optim]
name = "sgd"
lr = 0.1
momentum = 0.5
[algorithm]
name = "sync_sgd"
{algorithm}
[comm]
{comm}
[train]
epochs = 4
progress = false
"""
N_PARAMS = 64 * 32 + 32 + 32 * 10 + 10      # 2410, one bucket


def _run(tmp_path, tag, comm, algorithm=""):
    path = tmp_path / f"{tag}.toml"
    path.write_text(CONFIG.format(comm=comm, algorithm=algorithm))
    res = distml("run", str(path), "--out", str(tmp_path / tag), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / tag / "summary.json").read_text())


def test_topk_fp16_chain_with_error_feedback(tmp_path):
    s = _run(tmp_path, "topk", 'codec = [{ name = "topk", ratio = 0.01 }, "fp16"]\nerror_feedback = true')
    assert s["test_accuracy"] > 0.85
    # 25 int32 indices + 25 fp16 values per step and worker, as counted by the transport;
    # rank 0 also broadcast the initial model
    r0, r1 = s["per_rank"]
    assert r1["bytes_sent"] == s["steps"] * 25 * (4 + 2)
    assert r0["bytes_sent"] == s["steps"] * 25 * (4 + 2) + N_PARAMS * 4


def test_powersgd_reducer(tmp_path):
    s = _run(tmp_path, "psgd", 'codec = { name = "powersgd", rank = 2 }')
    assert s["test_accuracy"] > 0.85
    # P and Q of the 32×64 and 10×32 matrices at rank 2, and the two bias vectors, per step
    per_step = 4 * ((32 + 64) * 2 + (10 + 32) * 2 + 32 + 10)
    assert s["per_rank"][1]["bytes_sent"] == s["steps"] * per_step


def test_topk_with_dgc_momentum_correction_and_masking(tmp_path):
    s = _run(tmp_path, "dgc", 'codec = { name = "topk", ratio = 0.01 }\nerror_feedback = true',
             "momentum_correction = true\nmomentum_masking = true")
    assert s["test_accuracy"] > 0.85
    # the velocity travels in place of the gradient: the same 25 indices + 25 fp32 values
    assert s["per_rank"][1]["bytes_sent"] == s["steps"] * 25 * (4 + 4)
