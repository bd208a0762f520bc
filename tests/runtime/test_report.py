"""`distml compare` and `distml report` on two small real runs; `distml list` vs the registry."""

import json
from pathlib import Path

import pytest

import sys

from procs import distml, run
from tiny_runs import digits_config

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(180)]

CONFIG = digits_config("cmp", """
[train]
epochs = 1
eval_every = 5
""")


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
    page = (out / "report.html").read_text()          # compare writes the HTML page too
    assert page.count("data:image/png;base64,") >= 3 and "lr=0.02" in page

    sim = distml("simulate", "--profile", str(runs[0]), "--workers", "2,16", "--bandwidth", "1Gbit",
                 "--latency", "1ms", "--software-latency", "calibrated", "--json", timeout=60)
    assert sim.returncode == 0, sim.stderr
    out_sim = json.loads(sim.stdout)
    s = json.loads((runs[0] / "summary.json").read_text())
    # per-step traffic: the all-reduces, without rank 0's one-off broadcast of the model
    ar = out_sim["profile"]["ops"]["all_reduce"]
    sent = sum(pr["ops"]["all_reduce"]["bytes_sent"] for pr in s["per_rank"])
    assert ar["bytes"] == pytest.approx(sent / s["workers"] / s["steps"])
    eff, a_sw = out_sim["goodput"], out_sim["software_latency_s"]
    assert eff == pytest.approx(1448 / 1547) and a_sw >= 0
    assert a_sw == out_sim["calibrated_software_latency_s"]
    ring16 = next(r for r in out_sim["projection"] if r["workers"] == 16
                  and r["topology"] == "ring_allreduce" and r["payload"] == "run")
    # 2(N-1)/N·M/(η·B) + calls·2(N-1)·(α_net + α_sw)
    expected = 2 * 15 / 16 * ar["bytes"] / (eff * 125e6) + ar["calls"] * 2 * 15 * (1e-3 + a_sw)
    assert ring16["comm_seconds"] == pytest.approx(expected)
    assert ring16["step_seconds"] == pytest.approx(expected + s["compute_seconds"] / s["steps"])
    plain = distml("simulate", "--profile", str(runs[0]), "--workers", "16", "--bandwidth", "1Gbit",
                   "--latency", "1ms", "--goodput", "1", "--json", timeout=60)   # software latency 0 by default
    ring = next(r for r in json.loads(plain.stdout)["projection"] if r["topology"] == "ring_allreduce")
    assert ring["comm_seconds"] == pytest.approx(2 * 15 / 16 * ar["bytes"] / 125e6
                                                 + ar["calls"] * 2 * 15 * 1e-3)

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


def test_consensus_plot_reads_the_evaluation_points(tmp_path):
    """gossip logs consensus_distance in eval.jsonl; the report plots it from there."""
    from distml.runtime.report import make_report
    run_dir = tmp_path / "gossip"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(
        {"algorithm": "gossip", "workers": 4, "steps": 100, "test_accuracy": 0.8,
         "bytes_sent": 1000, "compute_seconds": 1.0, "comm_seconds": 0.5, "per_rank": []}))
    (run_dir / "eval.jsonl").write_text("".join(
        json.dumps({"step": s, "wall_seconds": s / 10, "test_accuracy": 0.5, "test_loss": 1.0,
                    "consensus_distance": d}) + "\n" for s, d in ((0, 0.0), (50, 0.3), (100, 0.2))))
    result = make_report([run_dir], tmp_path / "rep")
    assert _is_png(tmp_path / "rep" / "consensus.png")
    assert any(str(p).endswith("consensus.png") for p in result["plots"])
