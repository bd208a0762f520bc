"""``distml report``: plots, a comparison table and a self-contained HTML page from finished runs.

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
    config_path = run_dir / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.exists() else None
    return {"dir": run_dir, "label": run_dir.name, "summary": summary, "config": config,
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


# every text on a plot at 10 pt or more (matplotlib's default legend in a crowded panel is
# unreadable); applied per figure through rc_context, not to the global rcParams
_STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "xtick.labelsize": 10,
          "ytick.labelsize": 10, "legend.fontsize": 10, "figure.titlesize": 13}


def zoomed_limits(values: list[float], lo_bound: float | None = None,
                  hi_bound: float | None = None) -> tuple[float, float] | None:
    """Axis limits that hold ``values`` with a 8% margin, clipped to the bounds (e.g. 0 and 1)."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    margin = max((hi - lo) * 0.08, abs(hi) * 0.01, 1e-3)
    lo, hi = lo - margin, hi + margin
    if lo_bound is not None:
        lo = max(lo, lo_bound)
    if hi_bound is not None:
        hi = min(hi, hi_bound)
    return lo, hi


def _eval_points(r, x_key: str, y_key: str) -> list[tuple[float, float]]:
    return [(e[x_key], e[y_key]) for e in r["evals"]
            if e.get(x_key) is not None and e.get(y_key) is not None]


def _curves(ax, runs, x_key: str, y_key: str, xlabel: str, ylabel: str) -> bool:
    """One line per run; the y axis zoomed to the evaluations after step 0.

    Every curve starts at the untrained model (step 0: chance accuracy, a high loss); an
    axis that holds it squashes the range where runs differ, so that point may fall below
    (accuracy) or above (loss) the axis.
    """
    drawn = False
    trained = []
    for r in runs:
        pts = _eval_points(r, x_key, y_key)
        if pts:
            xs, ys = zip(*pts)
            ax.plot(xs, ys, marker="o", markersize=4, label=r["label"])
            drawn = True
            trained += [e[y_key] for e in r["evals"] if e.get(y_key) is not None and e.get("step", 0) > 0]
    accuracy = "accuracy" in y_key
    limits = zoomed_limits(trained, 0.0, 1.0 if accuracy else None)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend()
    return drawn


def training_loss(r) -> list[tuple[int, float, float]]:
    """``(step, wall seconds, loss)`` from the step records: the mean over the ranks that
    logged the step (each rank's loss is its mean over the last ``log_every`` steps)."""
    by_step: dict[int, list[tuple[float, float]]] = {}
    for events in r["events"].values():
        for e in events:
            if e.get("loss") is not None:
                by_step.setdefault(e["step"], []).append((e.get("wall_seconds") or 0.0, e["loss"]))
    return [(step, max(w for w, _ in v), sum(loss for _, loss in v) / len(v))
            for step, v in sorted(by_step.items())]


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

    with plt.rc_context(_STYLE):
        return _plot_runs(runs, out, plt)


def _plot_runs(runs, out: Path, plt) -> list[Path]:
    _bytes_axis(runs)
    written = []
    classification = any(r["summary"].get("test_accuracy") is not None for r in runs)
    metrics = [("test_accuracy", "test accuracy")] if classification else []
    metrics.append(("test_loss", "test loss"))
    for key, label in metrics:
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        _curves(axes[0], runs, "wall_seconds", key, "wall seconds (evaluation excluded)", label)
        _curves(axes[1], runs, "step", key, "steps", label)
        _curves(axes[2], runs, "mb_sent_all", key, "MB sent (all workers)", label)
        fig.suptitle(f"{label} vs time, steps and bytes (y axis zoomed to the trained points)")
        written.append(_save(fig, out / f"{key}.png"))

    loss_runs = [(r, training_loss(r)) for r in runs]
    loss_runs = [(r, pts) for r, pts in loss_runs if pts]
    if loss_runs:
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
        for r, pts in loss_runs:
            axes[0].plot([p[0] for p in pts], [p[2] for p in pts], label=r["label"])
            axes[1].plot([p[1] for p in pts], [p[2] for p in pts], label=r["label"])
        for ax, xlabel in zip(axes, ("steps", "wall seconds (evaluation excluded)")):
            ax.set_xlabel(xlabel)
            ax.set_ylabel("training loss")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("training loss (mean over ranks of each rank's last log_every steps)")
        written.append(_save(fig, out / "train_loss.png"))

    n_bars = sum(len(r["summary"].get("per_rank", [])) for r in runs)
    fig, ax = plt.subplots(figsize=(max(7, 1.4 * n_bars), 4.8))
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
    ax.set_xticklabels(labels)
    ax.set_ylabel("seconds")
    ax.set_title("time per worker")
    ax.legend()
    written.append(_save(fig, out / "time_breakdown.png"))

    hist_runs = [r for r in runs if r["summary"].get("staleness_histogram")]
    if hist_runs:
        fig, ax = plt.subplots(figsize=(8, 4.8))
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
        fig, ax = plt.subplots(figsize=(8, 4.8))
        for r in cons_runs:
            evs = [e for e in consensus_points(r) if e["consensus_distance"] > 0]   # log axis
            ax.plot([e["step"] for e in evs], [e["consensus_distance"] for e in evs], marker="o",
                    markersize=4, label=r["label"])
        ax.set_xlabel("steps")
        ax.set_ylabel("consensus distance")
        ax.set_yscale("log")
        ax.legend()
        written.append(_save(fig, out / "consensus.png"))
    return written


def html_report(runs: list[dict[str, Any]], rows: list[dict[str, Any]], plots: list[Path]) -> str:
    """One self-contained HTML page: the table, the plots inlined as base64 PNGs, each
    run's config. It needs no server and no other file."""
    import base64
    from html import escape

    head = "".join(f"<th>{escape(h)}</th>" for h, _ in TABLE_COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{escape(_cell(row[k]))}</td>" for _, k in TABLE_COLUMNS)
                   + "</tr>\n" for row in rows)
    figures = "".join(
        f'<figure><img alt="{escape(p.stem)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode("ascii")}"><figcaption>{escape(p.stem)}'
        f"</figcaption></figure>\n" for p in plots)
    configs = "".join(
        f"<details><summary>{escape(r['label'])} ({escape(str(r['dir']))})</summary>"
        f"<pre>{escape(json.dumps(r['config'], indent=2) if r['config'] is not None else 'no config.json')}"
        f"</pre></details>\n" for r in runs)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>distml report</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #bbb; padding: 0.3em 0.6em; text-align: right; }}
th:nth-child(-n+2), td:nth-child(-n+2) {{ text-align: left; }}
img {{ max-width: 100%; }}
figure {{ margin: 1.5em 0; }}
pre {{ background: #f5f5f5; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
<h1>distml report</h1>
<h2>Runs</h2>
<table id="runs"><thead><tr>{head}</tr></thead><tbody>
{body}</tbody></table>
<h2>Plots</h2>
{figures}<h2>Configs</h2>
{configs}</body></html>
"""


def make_report(run_dirs: list[Path], out: Path, html: bool = False) -> dict[str, Any]:
    """Write plots, ``report.md`` and ``report.json`` for ``run_dirs`` into ``out``, and
    with ``html`` also ``report.html`` (self-contained: plots inlined).

    Returns:
        ``{"rows": [...], "plots": [...], "markdown": path, "html": path or None}``.
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
    html_path = None
    if html:
        html_path = out / "report.html"
        html_path.write_text(html_report(runs, rows, plots), encoding="utf-8")
    return {"rows": rows, "plots": [str(p) for p in plots], "markdown": str(md_path),
            "html": str(html_path) if html_path else None}
