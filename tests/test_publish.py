"""bench/publish.py renders docs/benchmarks.md from result files, and the page is current."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _publish():
    spec = importlib.util.spec_from_file_location("bench_publish", REPO / "bench" / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _result(bench: str, headline: str, tables=(), plots=()) -> dict:
    return {"bench": bench, "line": {"bench": bench, "speedup": 3.2, "headline": headline},
            "protocol": {"seeds": [0, 1, 2], "target": 0.8},
            "details": {"tables": list(tables), "plots": list(plots)},
            "command": f"python bench/{bench}.py --seeds 3", "commit": "abc1234",
            "date": "2026-12-07 12:00 UTC", "machine": "2 CPUs", "loadavg": [3.0, 2.5, 2.0],
            "quick": False}


def test_renders_notes_command_tables_and_intervals(tmp_path: Path) -> None:
    publish = _publish()
    results, notes, docs = tmp_path / "results", tmp_path / "notes", tmp_path / "docs"
    for d in (results, notes, docs, results / "quick"):
        d.mkdir()
    tab = {"title": "Time to target", "columns": ["method", "seconds (95% CI)"],
           "rows": [["fp32", "10.5 [9.8, 11.2]"], ["sign_ef", 3.25]]}
    (results / "fastbench.json").write_text(json.dumps(
        _result("fastbench", "3.2× [2.9, 3.5] faster than fp32", [tab], ["docs/img/fast.png"])))
    (results / "bare.json").write_text(json.dumps(_result("bare", "no notes")))
    (results / "quick" / "fastbench.json").write_text(json.dumps(_result("fastbench", "QUICK")))
    (notes / "fastbench.md").write_text("## Fast things (`bench/fastbench.py`)\n\nWhat we learned.\n")
    page = docs / "benchmarks.md"
    text = publish.render(results, notes, page)

    assert "| [Fast things](#fast-things-benchfastbenchpy) | 3.2× [2.9, 3.5] faster than fp32 | " \
           "`python bench/fastbench.py --seeds 3` |" in text
    assert "| fp32 | 10.5 [9.8, 11.2] |" in text and "| sign_ef | 3.25 |" in text
    assert "What we learned." in text and "commit `abc1234`" in text
    assert "![fast](img/fast.png)" in text
    assert "## Bare (`bench/bare.py`)" in text          # a result without notes still renders
    assert "QUICK" not in text                          # quick runs are never published
    assert text.index("## Bare") < text.index("## Fast things")

    page.write_text(text)
    assert publish.main(["--check", "--results", str(results), "--notes", str(notes),
                         "--out", str(page)]) == 0
    page.write_text(text + "edited by hand\n")
    assert publish.main(["--check", "--results", str(results), "--notes", str(notes),
                         "--out", str(page)]) == 1


def test_the_repository_page_is_up_to_date() -> None:
    assert _publish().main(["--check"]) == 0, "run `python bench/publish.py`"
