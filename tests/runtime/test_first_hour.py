"""What a new user meets first: an API call without the ``__main__`` guard, evaluating a
Python-API run, the resume hint of a taken run folder (issue 19, parts 2 and 4)."""

import json
import os
import re
import sys
import textwrap

import pytest

from procs import REPO, distml, run

pytestmark = [pytest.mark.multiprocess]

BLOBS = textwrap.dedent("""
    import torch
    from torch import nn
    from torch.utils.data import TensorDataset
    import distml

    class TinyNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.l = nn.Linear(8, 3)

        def forward(self, x):
            return self.l(x)

    def blobs(n, seed):
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 3, (n,), generator=g)
        return TensorDataset(torch.randn(n, 8, generator=g) + 3 * y[:, None], y)

    CONFIG = {"name": "api", "workers": 2, "data": {"batch_size": 8},
              "train": {"max_steps": 4, "progress": False}}
""")


def _env(tmp_path):
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(tmp_path)])}


@pytest.mark.timeout(150)
def test_script_without_main_guard_ends_with_exit_2_and_names_the_guard(tmp_path):
    """Before: every worker crashed with multiprocessing's bootstrapping RuntimeError."""
    script = tmp_path / "unguarded.py"
    script.write_text(BLOBS + textwrap.dedent("""
        distml.run(CONFIG, model=TinyNet(), train_data=blobs(64, 0), test_data=blobs(32, 1),
                   runs_root="runs")
        print("trained")
    """))
    res = run([sys.executable, str(script)], timeout=120, cwd=tmp_path, env=_env(tmp_path))
    assert res.returncode == 2, res.stderr[-3000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-3000:]
    assert lines[0].startswith("distml: error:") and 'if __name__ == "__main__":' in lines[0]
    assert "trained" not in res.stdout and "RuntimeError" not in res.stderr


@pytest.mark.timeout(170)
def test_evaluate_rebuilds_an_importable_factory_or_says_why_not(tmp_path):
    (tmp_path / "mymodels.py").write_text(textwrap.dedent("""
        from torch import nn

        def small_mlp(input_shape, num_classes):
            return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 16), nn.ReLU(),
                                 nn.Linear(16, num_classes))
    """))
    script = tmp_path / "guarded.py"
    script.write_text(BLOBS + textwrap.dedent("""
        import mymodels

        if __name__ == "__main__":
            digits = {**CONFIG, "name": "factory",
                      "data": {"source": {"name": "sklearn", "dataset": "digits"}, "batch_size": 8}}
            distml.run(digits, model=mymodels.small_mlp, out="runs/factory")
            distml.run(CONFIG, model=TinyNet(), train_data=blobs(64, 0), test_data=blobs(32, 1),
                       out="runs/own")
    """))
    res = run([sys.executable, str(script)], timeout=120, cwd=tmp_path, env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads((tmp_path / "runs/factory/user_parts.json").read_text())["model"] == \
        {"factory": "mymodels:small_mlp"}
    ev = run([sys.executable, "-m", "distml", "evaluate", "runs/factory"], timeout=60, cwd=tmp_path,
             env=_env(tmp_path))
    assert ev.returncode == 0, ev.stderr
    summary = json.loads((tmp_path / "runs/factory/summary.json").read_text())
    assert json.loads(ev.stdout)["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1e-9)
    ev = run([sys.executable, "-m", "distml", "evaluate", "runs/own"], timeout=60, cwd=tmp_path,
             env=_env(tmp_path))
    lines = ev.stderr.strip().splitlines()
    assert ev.returncode == 2 and len(lines) == 1, ev.stderr
    assert "cannot rebuild it" in lines[0] and "Python objects" in lines[0] and "TinyNet" in lines[0]


SMALL = """
name = "small"
workers = 2
[data]
source = { name = "sklearn", dataset = "digits" }
batch_size = 16
[model]
name = "mlp"
hidden = [16]
[train]
max_steps = 20
checkpoint_every = 5
progress = false
"""


@pytest.mark.timeout(170)
def test_stop_after_hint_and_summary_name_the_folder_really_used(tmp_path):
    (tmp_path / "c.toml").write_text(SMALL)
    taken = tmp_path / "runs" / "small"
    taken.mkdir(parents=True)
    (taken / "summary.json").write_text("{}")          # runs/small holds another run
    res = distml("run", "c.toml", "--stop-after", "10", timeout=120, cwd=tmp_path, env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert "continue with `distml run --resume --out runs/small-2`" in res.stdout, res.stdout
    assert re.search(r"^  results\s+runs/small-2$", res.stdout, re.M), res.stdout   # the plan, before
    assert (tmp_path / "runs/small-2/stopped.json").exists()
    res = distml("run", "c.toml", "--resume", "--out", "runs/small-2", "--json", timeout=120,
                 cwd=tmp_path, env=_env(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "runs/small-2/summary.json").read_text())
    assert summary["run_dir"] == "runs/small-2" and summary["steps"] == 20
    assert not (tmp_path / "runs/small-2/stopped.json").exists()
    lead = summary["per_rank"][0]
    assert lead["steps_this_run"] == 10 and lead["wall_seconds_this_run"] < summary["wall_seconds"]
    assert summary["steps_per_second"] == pytest.approx(10 / lead["wall_seconds_this_run"])
