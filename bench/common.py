"""What every bench shares: intervals over seeds, and one result file per bench.

A bench declares its protocol in a module-level ``PROTOCOL`` dict at the top of its file
(hyper-parameters, seeds, target, the tuning grid: identical for every method it
compares), prints one JSON line with its headline figures (DESIGN.md §5) and, through
:func:`finish`, writes ``bench/results/<bench>.json``: that line, the protocol, the exact
command, the commit and the machine. ``python bench/publish.py`` renders
``docs/benchmarks.md`` from those files, so every number in the docs has a result file
and a commit behind it. ``--quick`` runs write ``bench/results/quick/`` instead (smoke
checks are never published).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

RESULTS = Path(__file__).resolve().parent / "results"


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval ``(mean, low, high)`` over independent repeats (seeds).

    One value gives a degenerate interval (low = high = mean): report ``n`` beside it.
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("mean_ci needs at least one value")
    m = statistics.fmean(xs)
    if len(xs) < 2:
        return m, m, m
    from scipy import stats      # only here: the benches need scipy, the library does not
    half = float(stats.t.ppf(0.5 + confidence / 2, len(xs) - 1)) * statistics.stdev(xs) / math.sqrt(len(xs))
    return m, m - half, m + half


def paired_ci(a: Sequence[float], b: Sequence[float],
              confidence: float = 0.95) -> tuple[float, float, float]:
    """Interval of the mean paired difference ``a − b`` (methods run on the same seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired_ci needs pairs, got {len(a)} and {len(b)} values")
    return mean_ci([x - y for x, y in zip(a, b)], confidence)


def ratio_ci(a: Sequence[float], b: Sequence[float],
             confidence: float = 0.95) -> tuple[float, float, float]:
    """Interval of the ratio ``mean(a) / mean(b)`` by the paired log-ratio (same seeds):
    ``exp`` of the t-interval of ``log(a_i / b_i)``."""
    m, lo, hi = paired_ci([math.log(x) for x in a], [math.log(y) for y in b], confidence)
    return math.exp(m), math.exp(lo), math.exp(hi)


def interval(values: Sequence[float], digits: int = 4) -> dict[str, Any]:
    """``{"mean", "ci95": [low, high], "n"}`` for a result file."""
    m, lo, hi = mean_ci(values)
    return {"mean": round(m, digits), "ci95": [round(lo, digits), round(hi, digits)],
            "n": len(values)}


def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """One table for ``details["tables"]`` (a list of these): ``bench/publish.py`` renders
    every such table under the bench's section of ``docs/benchmarks.md``, after the prose
    in ``bench/notes/<bench>.md`` (setup, protocol in words, what we learned)."""
    return {"title": title, "columns": list(columns), "rows": [list(r) for r in rows]}


def _commit() -> str:
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                             capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return sha + ("+dirty" if dirty else "")


def finish(line: dict[str, Any], protocol: dict[str, Any], quick: bool = False,
           details: dict[str, Any] | None = None) -> int:
    """Print the bench's one JSON line and write its result file; returns 0 (exit code).

    Args:
        line: the headline figures; must hold ``"bench"`` (the file's name).
        protocol: the bench's ``PROTOCOL`` (what was fixed before the run).
        quick: a ``--quick`` run (written under ``results/quick/``, never published).
        details: per-method/per-seed numbers; ``details["tables"]`` (a list of
            :func:`table`) is what ``bench/publish.py`` renders, and ``details["plots"]``
            (paths under ``docs/img/``) the figures it links.
    """
    name = line["bench"]
    record = {"bench": name, "line": line, "protocol": protocol, "details": details or {},
              "command": "python " + " ".join(shlex.quote(a) for a in
                                              [os.path.relpath(sys.argv[0])] + sys.argv[1:]),
              "commit": _commit(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "machine": f"{os.cpu_count()} CPUs, {platform.machine()}, Python "
                         f"{platform.python_version()}",
              # the machine is shared: how loaded it was when the bench ended
              "loadavg": [round(x, 2) for x in os.getloadavg()],
              "quick": bool(quick)}
    folder = RESULTS / "quick" if quick else RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{name}.json.tmp"
    tmp.write_text(json.dumps(record, indent=1, default=str) + "\n")
    os.replace(tmp, folder / f"{name}.json")        # atomic: never a half-written result
    print(json.dumps(line, default=str), flush=True)
    return 0
