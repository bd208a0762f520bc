"""Local SGD through the CLI (2 workers, digits, a small MLP): exactness, codecs, pipelining."""

import json

import pytest
import torch

from procs import distml

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]

CONFIG = """
name = "lsgd"
seed = 1
workers = 2
[data]
source = {{ name = "sklearn", dataset = "digits" }}
batch_size = 32
[model]
name = "mlp"
hidden = [32]
[optim]
name = "sgd"
lr = {lr}
[algorithm]
{algorithm}
[comm]
{comm}
[train]
{train}
progress = false
"""


def _run(tmp_path, tag, algorithm, comm="", train="epochs = 4", lr=0.1):
    path = tmp_path / f"{tag}.toml"
    path.write_text(CONFIG.format(algorithm=algorithm, comm=comm, train=train, lr=lr))
    res = distml("run", str(path), "--out", str(tmp_path / tag), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((tmp_path / tag / "summary.json").read_text())


def test_h1_equals_sync_sgd_in_float64(tmp_path):
    """Plain SGD: averaging the models after every step == averaging the gradients."""
    train = 'dtype = "float64"\nmax_steps = 30\neval_every = 1000'
    _run(tmp_path, "sync", 'name = "sync_sgd"', train=train)
    _run(tmp_path, "local", 'name = "local_sgd"\nperiod = 1', train=train)
    a = torch.load(tmp_path / "sync" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    assert all(v.dtype == torch.float64 for v in a.values())


def test_pipelined_local_sgd_with_sign_error_feedback_learns_and_counts_bytes(tmp_path):
    s = _run(tmp_path, "pipe", 'name = "local_sgd"\nperiod = 4\npipeline = true',
             comm='codec = "sign"\nerror_feedback = true')
    assert s["test_accuracy"] > 0.85
    steps, syncs = s["steps"], s["per_rank"][0]["syncs"]
    assert syncs == steps // 4
    # the MLP 64-32-10 has 64*32+32+32*10+10 = 2410 parameters: 302 bytes of signs + three
    # 4-byte scales (one per 1024 entries) per averaging and worker, counted by the
    # transport; rank 0 also broadcast the initial model (2410 float32)
    r0, r1 = s["per_rank"]
    assert r1["bytes_sent"] == syncs * (302 + 12)
    assert r0["bytes_sent"] == syncs * (302 + 12) + 2410 * 4
    assert all(r["comm_hidden_seconds"] > 0 for r in s["per_rank"])
    assert s["algorithm_metrics"]["syncs"] == syncs


def test_bmuf_with_powersgd_and_post_local_warmup(tmp_path):
    s = _run(tmp_path, "bmuf", 'name = "local_sgd"\nperiod = 8\nwarmup_steps = 20\nbmuf = true\n'
             'block_momentum = 0.5', comm='codec = { name = "powersgd", rank = 2 }')
    assert s["test_accuracy"] > 0.85
    # every step during the warm-up, then every 8, and once more at the end if the last
    # step was not an averaging step (so the run ends with one model)
    tail = 1 if (s["steps"] - 20) % 8 else 0
    assert s["per_rank"][0]["syncs"] == 20 + (s["steps"] - 20) // 8 + tail


def test_stop_and_resume_is_exact_with_pipelining_and_powersgd(tmp_path):
    """Anchor, codec state (PowerSGD's Q and error) and the averaging in flight are checkpointed."""
    algorithm = 'name = "local_sgd"\nperiod = 4\npipeline = true'
    comm = 'codec = { name = "powersgd", rank = 2 }'
    _run(tmp_path, "full", algorithm, comm=comm, train="epochs = 2")
    path = tmp_path / "full.toml"
    stop = distml("run", str(path), "--out", str(tmp_path / "res"), "--stop-after", "22", timeout=150)
    assert stop.returncode == 0, stop.stderr[-3000:]
    assert not (tmp_path / "res" / "model.pt").exists()
    res = distml("run", str(path), "--out", str(tmp_path / "res"), "--resume", timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    a = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "res" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
