"""2-worker synchronous SGD equals single-process SGD on the concatenated batch (docs/design.md §3).

The comparison runs in float64: in float32 the CNN's two mathematically equal sums
(mean of two half-batch gradients vs the gradient of the whole batch) round differently,
and 50 steps of momentum SGD amplify that to ~2e-4 — in one process just as across two.
float64 leaves the algorithm's exactness as the only thing measured.
"""

import pytest
import torch

from procs import distml
from references import concatenated_sgd
from distml.config import load_config
from distml.partition import SOURCES
from distml.runtime.build import build_model_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(240)]

STEPS = 50

CONFIG = """
name = "diff"
seed = 3
workers = 2
[data]
source = {{ name = "fashion_mnist" }}
partition = {{ name = "shuffle_split", reshuffle = "global" }}
batch_size = 32
[model]
name = "{model}"
[optim]
name = "sgd"
lr = 0.05
momentum = 0.9
[algorithm]
name = "sync_sgd"
bucket_mb = {bucket_mb}
[train]
dtype = "float64"
max_steps = {steps}
eval_every = 100000
progress = false
"""


@pytest.mark.parametrize("model,bucket_mb", [("mlp", 0.5), ("cnn", 25)])
def test_two_workers_equal_single_process(tmp_path, model, bucket_mb):
    from conftest import fmnist_or_skip
    fmnist_or_skip()
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(model=model, steps=STEPS, bucket_mb=bucket_mb))
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=200)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    ref = concatenated_sgd(load_config(path), STEPS)[0].state_dict()
    assert got.keys() == ref.keys()
    worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-5, f"max abs parameter difference {worst}"
    # and the run really moved the weights (the comparison is not trivially true)
    torch.manual_seed(0)
    init = build_model_for(load_config(path), SOURCES.build("fashion_mnist").info).double().state_dict()
    assert max((got[k] - init[k]).abs().max().item() for k in ref) > 1e-3
