"""CUDA checks: codecs on GPU tensors, training on a GPU, the NCCL backend.

Skipped where no CUDA device is visible (CI has none). Run them on a machine with a
GPU as ``python -m pytest -q tests/gpu`` (docs/gpu.md says what was run where, and
what one GPU cannot check: NCCL between two ranks needs two devices).
"""

import json

import pytest
import torch

from distml.comm.compress import CODECS, build_codec

from procs import distml

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

SPECS = [n for n in CODECS.names() if CODECS.meta(n).get("kind") != "reducer"] + [
    {"name": "qsgd", "bits": 2}, {"name": "qsgd", "bits": 8}, {"name": "topk", "ratio": 0.3},
    ["topk", "fp16"], [{"name": "randomk", "ratio": 0.2}, "bf16"]]


@pytest.mark.parametrize("ef", [False, True])
@pytest.mark.parametrize("spec", SPECS, ids=str)
def test_codec_on_cuda_tensors_matches_the_cpu(spec, ef):
    """Payloads stay on the GPU, and three rounds decode to what the CPU decodes (random
    draws come from the same CPU generator on both devices)."""
    outs = {}
    for device in ("cpu", "cuda"):
        codec = build_codec(spec if isinstance(spec, list) else [spec], ef, seed=3, rank=1)
        x = torch.randn(37, 11, generator=torch.Generator().manual_seed(0)).to(device)
        state = codec.init(x)
        decoded = []
        for _ in range(3):
            payload, state = codec.compress(x, state)
            assert all(t.device.type == device for t in payload), (spec, [t.device for t in payload])
            y = codec.decompress(payload, x, state)
            assert y.device.type == device and y.shape == x.shape and y.dtype == x.dtype
            decoded.append(y.cpu())
        outs[device] = torch.stack(decoded)
    cpu, gpu = outs["cpu"], outs["cuda"]
    # a CUDA reduction may differ in the last bit; stochastic rounding can then flip a level
    assert (cpu - gpu).abs().gt(1e-4 * (1 + cpu.abs())).float().mean() < 2e-3, spec


CONFIG = """
name = "gpu"
seed = 0
workers = {workers}
[data]
source = {{ name = "synthetic", kind = "gaussian_mixture", n_train = 4000, n_test = 1000, dim = 32, num_classes = 4, noise = 1.0 }}
batch_size = 64
[model]
name = "mlp"
hidden = [64, 64]
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
[algorithm]
{algorithm}
[comm]
backend = "{backend}"
timeout_s = 60
{comm}
[train]
device = "{device}"
epochs = 2
progress = false
"""

RUNS = {
    "sync_sgd": ('name = "sync_sgd"', ""),
    "sync_sgd_qsgd": ('name = "sync_sgd"', 'codec = { name = "qsgd", bits = 4 }'),
    "sync_sgd_topk_dgc": ('name = "sync_sgd"\nmomentum_correction = true\nmomentum_masking = true',
                          'codec = { name = "topk", ratio = 0.05 }\nerror_feedback = true'),
    "sync_sgd_powersgd": ('name = "sync_sgd"', 'codec = { name = "powersgd", rank = 2 }'),
    "local_sgd": ('name = "local_sgd"\nperiod = 8', ""),
    "gossip": ('name = "gossip"\ngraph = "ring"', ""),
}


def _run(tmp_path, name, workers, backend, device):
    algorithm, comm = RUNS[name]
    cfg = tmp_path / f"{name}-{device}.toml"
    cfg.write_text(CONFIG.format(workers=workers, algorithm=algorithm, backend=backend, comm=comm,
                                 device=device))
    out = tmp_path / f"{name}-{device}"
    res = distml("run", str(cfg), "--out", str(out), timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "summary.json").read_text()), out


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", list(RUNS))
def test_two_workers_train_on_the_gpu_as_on_the_cpu(tmp_path, name):
    """Two ranks on one GPU (gloo carries CUDA tensors): the run trains, its log says
    cuda, and the accuracy is the CPU run's within a point."""
    gpu, out = _run(tmp_path, name, 2, "gloo", "cuda")
    cpu, _ = _run(tmp_path, name, 2, "gloo", "cpu")
    assert "device cuda:0" in (out / "logs" / "rank0.log").read_text()
    assert gpu["test_accuracy"] > 0.6
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) <= 0.01, (gpu["test_accuracy"],
                                                                     cpu["test_accuracy"])
    assert gpu["bytes_sent"] == cpu["bytes_sent"]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", ["sync_sgd", "sync_sgd_topk_dgc"])
def test_one_rank_runs_on_the_nccl_backend(tmp_path, name):
    """NCCL end to end with the one GPU there is (momentum correction keeps the codec in
    the path even alone)."""
    s, out = _run(tmp_path, name, 1, "nccl", "cuda")
    assert "backend nccl, device cuda:0" in (out / "logs" / "rank0.log").read_text()
    assert s["test_accuracy"] > 0.6


@pytest.mark.timeout(300)
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL puts one rank on each GPU")
@pytest.mark.parametrize("name", ["sync_sgd", "sync_sgd_topk_dgc", "sync_sgd_powersgd", "gossip"])
def test_two_ranks_on_the_nccl_backend_train_as_on_the_cpu(tmp_path, name):
    gpu, out = _run(tmp_path, name, 2, "nccl", "cuda")
    cpu, _ = _run(tmp_path, name, 2, "gloo", "cpu")
    assert "backend nccl" in (out / "logs" / "rank1.log").read_text()
    assert abs(gpu["test_accuracy"] - cpu["test_accuracy"]) <= 0.01
    assert gpu["bytes_sent"] == cpu["bytes_sent"]
