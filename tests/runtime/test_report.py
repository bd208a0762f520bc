"""`distml compare` and `distml report` on two small real runs; `distml list` vs the registry."""

import json
from pathlib import Path

import pytest

import sys

from procs import distml, run

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

CONFIG = """
name = "cmp"
workers = 2
[data]
source = { name = "sklearn", dataset = "digits" }
batch_size = 32
[model]
name = "softmax"
[optim]
name = "sgd"
lr = 0.1
[train]
epochs = 1
eval_every = 5
"""


def _is_png(path: Path) -> bool:
    import matplotlib.image as mpimg
    data = path.read_bytes()
    return data[:8] == b"\x89PNG\r\n\x1a\n" and mpimg.imread(path).shape[0] > 100


def test_compare_then_report(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "cmp"
    res = distml("compare", str(cfg), "--vary", "optim.lr=0.02,0.3", "--out", str(out), timeout=150)
    assert res.returncode == 0, res.stderr[-3000:]
    runs = sorted(p for p in out.iterdir() if (p / "summary.json").exists())
    assert [p.name for p in runs] == ["lr=0.02", "lr=0.3"]
    for name in ("test_accuracy.png", "test_loss.png", "time_breakdown.png"):
        assert _is_png(out / name), name
    rows = json.loads((out / "report.json").read_text())
    assert [r["run"] for r in rows] == ["lr=0.02", "lr=0.3"]
    for row, run in zip(rows, runs):
        s = json.loads((run / "summary.json").read_text())
        assert row["test_accuracy"] == s["test_accuracy"] and row["steps"] == s["steps"]
        assert row["mb_sent"] == pytest.approx(s["bytes_sent"] / 1e6)
    md = (out / "report.md").read_text()
    assert md.count("| lr=") == 2 and "![test_accuracy](test_accuracy.png)" in md
    assert "lr=0.3" in res.stdout                     # the terminal table

    sim = distml("simulate", "--profile", str(runs[0]), "--workers", "2,16", "--bandwidth", "1Gbit",
                 "--latency", "1ms", "--json", timeout=60)
    assert sim.returncode == 0, sim.stderr
    out_sim = json.loads(sim.stdout)
    s = json.loads((runs[0] / "summary.json").read_text())
    m = s["bytes_sent"] / s["workers"] / s["steps"]
    ring16 = next(r for r in out_sim["projection"]
                  if r["workers"] == 16 and r["topology"] == "ring_allreduce")
    expected = 2 * 15 / 16 * m / 125e6 + 2 * 15 * 1e-3      # 2(N-1)/N·M/B + 2(N-1)·α
    assert ring16["comm_seconds"] == pytest.approx(expected)
    assert ring16["step_seconds"] == pytest.approx(expected + s["compute_seconds"] / s["steps"])

    again = distml("report", *map(str, runs), "--out", str(tmp_path / "rep"), timeout=60)
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "rep" / "report.json").read_text()) == rows


def test_report_on_a_non_run_is_a_user_error(tmp_path):
    res = distml("report", str(tmp_path), timeout=60)
    assert res.returncode == 2 and "summary.json not found" in res.stderr


def test_list_matches_the_registry():
    res = distml("list", timeout=60)
    assert res.returncode == 0, res.stderr
    listed = {}
    kind = None
    for line in res.stdout.splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            kind = line[:-1]
            listed[kind] = set()
        elif line.startswith("  ") and line[2:3] != " ":
            listed[kind].add(line.split()[0])
    # the registry as a fresh process sees it (other tests register entries in this one)
    fresh = run([sys.executable, "-c", "import json; from distml.runtime.build import registries; "
                 "print(json.dumps({k: r.names() for k, r in registries().items()}))"], timeout=60)
    expected = {k: set(v) for k, v in json.loads(fresh.stdout).items()}
    assert listed == expected
    assert expected["algorithm"] >= {"sync_sgd", "local_sgd", "ps", "gossip"}
