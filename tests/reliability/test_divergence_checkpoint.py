"""Divergence stops the run with the last good checkpoint kept; checkpoint and output-folder
failures are one-line errors; an unwritable or full output folder is refused before training.

tests/runtime/test_run_lifecycle.py already checks that a truncated checkpoint file is
reported through ``distml run --resume`` (exit 2) and that resuming is bit-exact.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

from distml.cli import main
from distml.comm.transport import Transport
from distml.config import parse_config
from distml.errors import CheckpointError
from distml.runtime.build import UserParts, build_parts
from distml.runtime.checkpoint import Checkpoints
from distml.runtime.loop import DivergenceError, TrainLoop
from procs import distml

pytestmark = pytest.mark.timeout(60)


# ---- a finite loss with non-finite gradients, in one process (world of 1) ------------------
class _NanGrad(torch.autograd.Function):
    """Identity forward, nan backward: the loss stays finite, the gradients do not."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return torch.full_like(g, float("nan"))


class PoisonAt(nn.Module):
    """Softmax regression on iris whose gradients turn nan at training step ``at``."""

    def __init__(self, at: int):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.at, self.calls = at, 0

    def forward(self, x):
        out = self.lin(x)
        if self.training:             # one forward per training step (evaluation is eval mode)
            if self.calls == self.at:
                out = _NanGrad.apply(out)
            self.calls += 1
        return out


def run_poisoned(tmp_path: Path, at: int, checkpoint_every: int, steps: int = 10):
    cfg = parse_config({"name": "div", "workers": 1, "data": {"source": {"name": "sklearn", "dataset": "iris"},
                                                             "batch_size": 8},
                        "model": {"name": "softmax"}, "optim": {"name": "sgd", "lr": 0.1},
                        "train": {"max_steps": steps, "checkpoint_every": checkpoint_every,
                                  "eval_every": 1000, "progress": False}})
    parts = build_parts(cfg, 0, 1, "cpu", UserParts(model=PoisonAt(at)))
    transport = Transport(0, 1)
    parts.algorithm.setup(parts.model, parts.optimizer, transport)
    loop = TrainLoop(cfg, parts, transport, tmp_path)
    with pytest.raises(DivergenceError) as info:
        loop.run()
    return str(info.value), Checkpoints(tmp_path / "checkpoints", 0)


def assert_good(ckpts: Checkpoints, step: int) -> None:
    assert ckpts.latest_step() == step
    state = ckpts.load(step)
    assert state["step"] == step
    assert all(torch.isfinite(t).all() for t in state["model"].values())


def test_nan_gradients_stop_the_run_one_step_later(tmp_path):
    """Gradients are not checked every step: the poisoned update shows in the next loss."""
    message, ckpts = run_poisoned(tmp_path, at=4, checkpoint_every=2)
    assert message.startswith("loss became nan at step 5 on rank 0; lower optim.lr"), message
    assert_good(ckpts, 4)        # written after step 3, before the poisoned step 4


def test_a_poisoned_model_is_never_checkpointed(tmp_path):
    """The poisoned step is followed by a checkpoint: the parameter check refuses to write it."""
    message, ckpts = run_poisoned(tmp_path, at=3, checkpoint_every=2)
    assert re.match(r"parameter 'lin\.(weight|bias)' is not finite after step 3 on rank 0; "
                    r"lower optim\.lr \(not saved: the last good checkpoint is kept\)", message), message
    assert_good(ckpts, 2)
    assert not list((tmp_path / "checkpoints").glob("step000000004*"))


def test_a_poisoned_final_model_is_not_saved(tmp_path):
    message, _ = run_poisoned(tmp_path, at=9, checkpoint_every=0, steps=10)
    assert "is not finite after step 9" in message, message


# ---- the same through the command line, with 2 workers ----------------------------------------
DIVERGING = """
name = "div"
seed = 1
workers = 2
[data]
source = { name = "sklearn", dataset = "digits" }
batch_size = 16
[model]
name = "mlp"
hidden = [16]
[optim]
name = "sgd"
lr = 1e6            # far too large: the weights grow ~1e5x per step until they overflow
[comm]
timeout_s = 20
[train]
max_steps = 30
eval_every = 1000
checkpoint_every = 1
progress = false
"""


@pytest.mark.multiprocess
@pytest.mark.timeout(120)
def test_divergence_through_the_cli_keeps_the_last_good_checkpoint(tmp_path):
    (tmp_path / "div.toml").write_text(DIVERGING)
    out = tmp_path / "run"
    res = distml("run", str(tmp_path / "div.toml"), "--out", str(out), timeout=100)
    assert res.returncode == 2, res.stderr[-3000:]
    first = res.stderr.splitlines()[0]
    m = re.match(r"distml: error: rank [01]: (loss became (nan|inf|-inf) at step (\d+)|"
                 r"parameter '.+' is not finite after step (\d+)) on rank [01]; lower optim\.lr", first)
    assert m, res.stderr
    bad_step = int(m.group(3) or m.group(4))
    latest = json.loads((out / "checkpoints" / "latest.json").read_text())["step"]
    assert 1 <= latest <= bad_step, (latest, first)
    for rank in (0, 1):
        state = Checkpoints(out / "checkpoints", rank).load(latest)
        assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert not (out / "summary.json").exists() and not (out / "model.pt").exists()


# ---- checkpoint files ------------------------------------------------------------------------
def test_corrupt_sidecar_and_marker_are_one_line_errors(tmp_path):
    ck = Checkpoints(tmp_path, 0)
    ck.write(3, {"w": torch.ones(3)})
    ck.commit(3, 1)
    ck._file(3).with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"step000000003-rank0.json is corrupt"):
        ck.load(3)
    (tmp_path / "latest.json").write_text("[]")
    with pytest.raises(CheckpointError, match=r"latest.json is corrupt"):
        ck.latest_step()


@contextlib.contextmanager
def tmpfs(where: Path, options: str):
    """A fresh tmpfs at ``where`` (needs root and CAP_SYS_ADMIN, else the test is skipped)."""
    where.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip() or res.returncode})")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path):
    with tmpfs(tmp_path / "small", "size=64k") as disk:
        ck = Checkpoints(disk / "checkpoints", 0)
        ck.write(1, {"w": torch.ones(100)})
        ck.commit(1, 1)
        with pytest.raises(CheckpointError, match=r"cannot write .*step000000002-rank0.pt: "
                                                  r"No space left on device; free disk space"):
            ck.write(2, {"w": torch.ones(50_000)})      # 200 kB on a 64 kB disk
        assert not [p.name for p in (disk / "checkpoints").iterdir() if ".tmp" in p.name]
        assert ck.latest_step() == 1 and torch.equal(ck.load(1)["w"], torch.ones(100))


# ---- the output folder is checked before any worker starts ---------------------------------------
SMALL = """
name = "small"
workers = 2
[data]
source = { name = "sklearn", dataset = "iris" }
batch_size = 8
[model]
name = "softmax"
[train]
max_steps = 5
progress = false
"""


def cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        rc = main(list(argv))
    return rc, err.getvalue()


def refused_before_training(tmp_path: Path, out: Path, reason: str) -> None:
    (tmp_path / "c.toml").write_text(SMALL)
    rc, err = cli("run", str(tmp_path / "c.toml"), "--out", str(out))
    lines = err.splitlines()
    assert rc == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"distml: error: cannot write to the run folder {out}: {reason}"), err


def test_output_folder_under_a_regular_file(tmp_path):
    (tmp_path / "file").write_text("x")        # root can write anywhere, but not below a file
    refused_before_training(tmp_path, tmp_path / "file" / "run",
                            f"{tmp_path / 'file'} is not a folder; choose another --out")


def test_output_folder_in_proc(tmp_path):
    refused_before_training(tmp_path, Path("/proc/distml-reliability-test"), "No such file or directory")


def test_output_folder_on_a_read_only_file_system(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=1m") as disk:
        refused_before_training(tmp_path, disk / "run", f"{disk} is on a read-only file system")


def test_output_folder_on_a_full_disk(tmp_path):
    with tmpfs(tmp_path / "full", "size=32k") as disk:    # smaller than the 64 kB write probe
        refused_before_training(tmp_path, disk / "run", "No space left on device")
        assert not list((disk / "run").iterdir())
