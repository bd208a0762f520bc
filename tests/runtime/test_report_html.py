"""`distml report --html` on two real runs, rendered in a real headless browser; the plots' axes."""

import json
import re
import shutil
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from procs import distml
from tiny_runs import digits_config

CONFIG = digits_config("html", """
[train]
max_steps = 20
log_every = 5
eval_every = 10
progress = false
""")

# appended to a copy of the page: the browser writes what it decoded into the DOM
PROBE = """<script>
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({
    images: Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight]),
    rows: Array.from(document.querySelectorAll("#runs tbody tr")).map(
      tr => Array.from(tr.cells).map(td => td.textContent)),
    configs: Array.from(document.querySelectorAll("details pre")).map(p => p.textContent)});
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    pytest.skip("no headless browser: apt-get install chromium (scripts/setup.sh '[test]' does)")


def _render(page: Path) -> dict:
    """Open ``page`` in headless chromium and return what the probe found."""
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run(
            [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="probe">(.*?)</pre>', res.stdout, re.S)
    assert m, f"the page did not load (rc {res.returncode}): {res.stderr[-2000:]}"
    return json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                      .replace("&amp;", "&"))


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


@pytest.mark.multiprocess
@pytest.mark.timeout(240)
def test_html_report_opens_in_a_browser_with_plots_table_and_configs(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(CONFIG)
    runs = []
    for lr in ("0.1", "0.02"):
        out = tmp_path / f"lr{lr}"
        res = distml("run", str(cfg), "--out", str(out), "--set", f"optim.lr={lr}", timeout=120)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(out)
    rep = tmp_path / "rep"
    res = distml("report", "--html", *map(str, runs), "--out", str(rep), timeout=120)
    assert res.returncode == 0, res.stderr[-3000:]
    page = rep / "report.html"
    assert f"report: {page}" in res.stdout
    html = page.read_text()
    srcs = re.findall(r'src="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)   # nothing to fetch
    assert "http" not in re.sub(r'src="data:[^"]*"', "", html)        # no link, script or style to load

    plots = sorted(rep.glob("*.png"))
    assert {p.stem for p in plots} >= {"test_accuracy", "test_loss", "train_loss", "time_breakdown"}
    # the browser opens a copy with the probe, away from the PNG files: the page stands alone
    alone = tmp_path / "alone"
    alone.mkdir()
    probe_page = alone / "report.html"
    probe_page.write_text(html.replace("</body>", PROBE + "</body>"))
    seen = _render(probe_page)

    decoded = {alt: (ok, w, h) for alt, ok, w, h in seen["images"]}
    assert set(decoded) == {p.stem for p in plots}
    for p in plots:
        assert decoded[p.stem] == (True, *_png_size(p)), p.stem

    rows = json.loads((rep / "report.json").read_text())
    assert [r[0] for r in seen["rows"]] == [r["run"] for r in rows] == ["lr0.1", "lr0.02"]
    for cells, run in zip(seen["rows"], runs):
        s = json.loads((run / "summary.json").read_text())
        assert cells[3] == f"{s['test_accuracy']:.4g}" and cells[5] == str(s["steps"])
    assert [json.loads(c)["optim"]["lr"] for c in seen["configs"]] == [0.1, 0.02]


def test_axes_zoom_to_the_trained_points():
    from distml.runtime.report import zoomed_limits
    lo, hi = zoomed_limits([0.91, 0.95, 0.97], 0.0, 1.0)
    assert 0.85 < lo < 0.91 and 0.97 < hi <= 1.0
    assert zoomed_limits([0.2, 0.4]) == pytest.approx((0.2 - 0.016, 0.4 + 0.016))
    assert zoomed_limits([]) is None


def test_training_loss_is_the_mean_over_the_ranks_at_each_step():
    from distml.runtime.report import training_loss
    run = {"events": {0: [{"step": 5, "wall_seconds": 1.0, "loss": 2.0},
                          {"step": 10, "wall_seconds": 2.0, "loss": 1.0}],
                      1: [{"step": 5, "wall_seconds": 1.5, "loss": 3.0}]}}
    assert training_loss(run) == [(5, 1.5, 2.5), (10, 2.0, 1.0)]
