"""Hogwild! on a sparse problem: 2 processes sharing one model reach the sequential loss."""

import json

import pytest

from procs import distml

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(300)]

CONFIG = """
name = "hw"
seed = 0
workers = {workers}
[data]
source = {{ name = "synthetic", kind = "sparse_logistic", n_train = 3000, dim = 200, density = 0.05 }}
batch_size = 1
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 0.05
[algorithm]
name = "hogwild"
lock = {lock}
[train]
epochs = 2
progress = false
"""


def _run(tmp_path, workers, lock):
    path = tmp_path / f"c{workers}{lock}.toml"
    path.write_text(CONFIG.format(workers=workers, lock=lock))
    out = tmp_path / f"run{workers}{lock}"
    res = distml("run", str(path), "--out", str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads((out / "hogwild.json").read_text()), out


def test_hogwild_reaches_sequential_loss_and_reports_the_lock(tmp_path):
    seq, _ = _run(tmp_path, 1, "false")
    free, out = _run(tmp_path, 2, "false")
    locked, _ = _run(tmp_path, 2, "true")
    # the same number of samples touched: 2 epochs of the whole set, split over the workers
    assert seq["samples"] == free["samples"] == locked["samples"] == 6000
    for run in (free, locked):
        assert abs(run["final_loss"] - seq["final_loss"]) <= 0.02 * seq["final_loss"], (run, seq)
    assert seq["final_loss"] < 0.6                          # it learned (ln 2 = 0.69 at the start)
    assert free["lock_wait_seconds"] == 0 and locked["lock_wait_seconds"] > 0
    assert free["samples_per_second"] > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "hogwild" and summary["test_accuracy"] > 0.7
