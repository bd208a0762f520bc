"""``[train] accumulate_steps`` and ``clip_grad_norm`` on 2 sync_sgd ranks equal single-process SGD.

The reference steps once per optimizer step on the concatenation of every rank's
micro-batches of that step (equal sizes: the mean loss of the concatenation is the mean
of the micro-batch means), clipping that gradient with the same threshold. float64, so
only the algorithm is measured (see test_sync_sgd_differential.py).
"""

import pytest
import torch

from procs import distml
from references import concatenated_sgd
from distml.config import load_config
from distml.partition import SOURCES
from distml.runtime.build import build_model_for

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(150)]

STEPS = 20

CONFIG = """
name = "features"
seed = 4
workers = 2
[data]
source = {{ name = "sklearn", dataset = "digits" }}
batch_size = 8
[model]
name = "mlp"
[optim]
name = "sgd"
lr = 0.1
momentum = 0.9
[algorithm]
name = "sync_sgd"
bucket_mb = 0.01
[train]
dtype = "float64"
max_steps = {steps}
accumulate_steps = {accumulate}
{clip}
eval_every = 100000
progress = false
"""


@pytest.mark.parametrize("accumulate,clip", [(4, None), (1, 0.5)])
def test_two_workers_equal_single_process(tmp_path, accumulate, clip):
    path = tmp_path / "c.toml"
    path.write_text(CONFIG.format(steps=STEPS, accumulate=accumulate,
                                  clip="" if clip is None else f"clip_grad_norm = {clip}"))
    res = distml("run", str(path), "--out", str(tmp_path / "run"), timeout=140)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    cfg = load_config(path)
    model, clipped = concatenated_sgd(cfg, STEPS, accumulate=accumulate, clip=clip)
    ref = model.state_dict()
    worst = max((got[k] - ref[k]).abs().max().item() for k in ref)
    assert worst <= 1e-5, f"max abs parameter difference {worst}"
    if clip is not None:
        assert clipped >= STEPS // 2, f"the clip shortened only {clipped} of {STEPS} gradients"
    init = build_model_for(cfg, SOURCES.build(cfg.data.source, seed=cfg.seed).info).double().state_dict()
    assert max((got[k] - init[k]).abs().max().item() for k in ref) > 1e-3
