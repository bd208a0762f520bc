"""``distml report``: plots and a comparison table from finished runs.

Reads only the documented result files (``summary.json``, ``eval.jsonl``,
``events-rank*.jsonl``), so it works on any set of runs, from any algorithm.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distml.errors import UserError

TABLE_COLUMNS = [
    ("run", "run"), ("algorithm", "algorithm"), ("workers", "workers"),
    ("test acc", "test_accuracy"), ("test loss", "test_loss"), ("steps", "steps"),
    ("wall s", "wall_seconds"), ("time to target s", "time_to_target"),
    ("MB sent", "mb_sent"), ("comm/compute", "comm_compute_ratio"),
]


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_run(run_dir: Path) -> dict[str, Any]:
    """A finished run's summary, evaluation points and per-rank events.

    Raises:
        UserError: the folder has no summary.json (not a finished run).
    """
    run_dir = Path(run_dir)
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        raise UserError(f"{summary_path} not found: is {run_dir} a finished distml run?")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{summary_path} is not valid JSON ({e})") from None
    events = {int(p.stem.split("rank")[1]): _jsonl(p) for p in sorted(run_dir.glob("events-rank*.jsonl"))}
    return {"dir": run_dir, "label": run_dir.name, "summary": summary,
            "evals": _jsonl(run_dir / "eval.jsonl"), "events": events}


def table_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run with the comparison metrics (numbers straight from summary.json)."""
    rows = []
    for r in runs:
        s = r["summary"]
        compute = s.get("compute_seconds") or 0.0
        rows.append({
            "run": r["label"], "algorithm": s.get("algorithm"), "workers": s.get("workers"),
            "test_accuracy": s.get("test_accuracy"), "test_loss": s.get("test_loss"),
            "steps": s.get("steps"), "wall_seconds": s.get("wall_seconds"),
            "time_to_target": s.get("time_to_target"),
            "mb_sent": (s.get("bytes_sent") or 0) / 1e6,
            "comm_compute_ratio": (s.get("comm_seconds") or 0.0) / compute if compute > 0 else None,
        })
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = "| " + " | ".join(h for h, _ in TABLE_COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in TABLE_COLUMNS) + "|"
    body = ["| " + " | ".join(_cell(row[k]) for _, k in TABLE_COLUMNS) + " |" for row in rows]
    return "\n".join([head, sep, *body])


def terminal_table(rows: list[dict[str, Any]]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table
    t = Table(show_header=True)
    for h, _ in TABLE_COLUMNS:
        t.add_column(h, justify="left" if h in ("run", "algorithm") else "right")
    for row in rows:
        t.add_row(*(_cell(row[k]) for _, k in TABLE_COLUMNS))
    buf = StringIO()
    Console(file=buf, width=160, force_terminal=False).print(t)
    return buf.getvalue().rstrip()


def _curves(ax, runs, x_key: str, y_key: str, xlabel: str, ylabel: str) -> bool:
    drawn = False
    for r in runs:
        pts = [(e.get(x_key), e.get(y_key)) for e in r["evals"]
               if e.get(x_key) is not None and e.get(y_key) is not None]
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=3, label=r["label"])
            drawn = True
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=7)
    return drawn


def _bytes_axis(runs) -> None:
    # eval points carry rank 0's bytes; every worker of a data-parallel run sends alike,
    # so scale to all workers to match summary.json's totals
    for r in runs:
        workers = r["summary"].get("workers") or 1
        for e in r["evals"]:
            if e.get("bytes_sent_rank0") is not None:
                e["mb_sent_all"] = e["bytes_sent_rank0"] * workers / 1e6


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_runs(runs: list[dict[str, Any]], out: Path) -> list[Path]:
    """Write the report's PNGs into ``out``; returns their paths."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _bytes_axis(runs)
    written = []
    classification = any(r["summary"].get("test_accuracy") is not None for r in runs)
    metrics = [("test_accuracy", "test accuracy")] if classification else []
    metrics.append(("test_loss", "test loss"))
    for key, label in metrics:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4))
        _curves(axes[0], runs, "wall_seconds", key, "wall seconds (evaluation excluded)", label)
        _curves(axes[1], runs, "step", key, "steps", label)
        _curves(axes[2], runs, "mb_sent_all", key, "MB sent (all workers)", label)
        fig.suptitle(f"{label} vs time, steps and bytes")
        written.append(_save(fig, out / f"{key}.png"))

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * sum(len(r["summary"].get("per_rank", [])) for r in runs)), 4))
    labels, compute, comm, wait = [], [], [], []
    for r in runs:
        for pr in r["summary"].get("per_rank", []):
            labels.append(f"{r['label']}\nrank {pr['rank']}")
            compute.append(pr.get("compute_seconds", 0.0))
            comm.append(pr.get("comm_seconds", 0.0))
            wait.append(pr.get("wait_seconds", 0.0))
    xs = range(len(labels))
    ax.bar(xs, compute, label="compute")
    ax.bar(xs, comm, bottom=compute, label="communication")
    ax.bar(xs, wait, bottom=[a + b for a, b in zip(compute, comm)], label="wait")
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, fontsize=7)
    ax.set_ylabel("seconds")
    ax.set_title("time per worker")
    ax.legend()
    written.append(_save(fig, out / "time_breakdown.png"))

    hist_runs = [r for r in runs if r["summary"].get("staleness_histogram")]
    if hist_runs:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in hist_runs:
            h = {int(k): v for k, v in r["summary"]["staleness_histogram"].items()}
            ax.bar([k + 0.1 * hist_runs.index(r) for k in sorted(h)], [h[k] for k in sorted(h)],
                   width=0.1 if len(hist_runs) > 1 else 0.8, label=r["label"])
        ax.set_xlabel("staleness (clocks)")
        ax.set_ylabel("pulls")
        ax.legend()
        written.append(_save(fig, out / "staleness.png"))

    def consensus_points(r):
        # gossip logs it at evaluations (eval.jsonl); rank 0's step events may carry it too
        pts = [e for e in r["evals"] if e.get("consensus_distance") is not None]
        return pts or [e for e in r["events"].get(0, []) if e.get("consensus_distance") is not None]

    cons_runs = [r for r in runs if consensus_points(r)]
    if cons_runs:
        fig, ax = plt.subplots(figsize=(7, 4))
        for r in cons_runs:
            evs = [e for e in consensus_points(r) if e["consensus_distance"] > 0]   # log axis
            ax.plot([e["step"] for e in evs], [e["consensus_distance"] for e in evs], marker="o",
                    markersize=3, label=r["label"])
        ax.set_xlabel("steps")
        ax.set_ylabel("consensus distance")
        ax.set_yscale("log")
        ax.legend()
        written.append(_save(fig, out / "consensus.png"))
    return written


def make_report(run_dirs: list[Path], out: Path) -> dict[str, Any]:
    """Write plots and ``report.md`` for ``run_dirs`` into ``out``.

    Returns:
        ``{"rows": [...], "plots": [...], "markdown": path}``.
    """
    if not run_dirs:
        raise UserError("give at least one run folder (e.g. runs/quickstart)")
    runs = [load_run(Path(d)) for d in run_dirs]
    labels = [r["label"] for r in runs]
    for r in runs:                      # same folder names from different parents: disambiguate
        if labels.count(r["label"]) > 1:
            r["label"] = f"{r['dir'].parent.name}/{r['label']}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = plot_runs(runs, out)
    rows = table_rows(runs)
    md = ["# distml report", "", markdown_table(rows), ""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    md_path = out / "report.md"
    md_path.write_text("\n".join(md) + "\n", encoding="utf-8")
    (out / "report.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return {"rows": rows, "plots": [str(p) for p in plots], "markdown": str(md_path)}
