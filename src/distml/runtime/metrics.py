"""Per-rank event logs, evaluation points and the run summary (DESIGN.md §5)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

SUMMARY_KEYS = ("test_accuracy", "test_loss", "train_loss", "steps", "wall_seconds", "bytes_sent",
                "bytes_received", "compute_seconds", "comm_seconds", "wait_seconds",
                "time_to_target", "algorithm", "workers")
LM_KEYS = ("bits_per_token", "perplexity", "test_tokens")   # language-modelling runs only


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temp file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, default=_jsonable)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(x: Any) -> Any:
    if hasattr(x, "item"):
        return x.item()
    return str(x)


def clean_float(x: float | None) -> float | None:
    """JSON has no NaN/inf: report them as null."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


class JsonlLog:
    """Append-only JSON-lines file; on resume, lines past the checkpoint's step are dropped."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [ln for ln in path.read_text(encoding="utf-8").splitlines()
                    if ln.strip() and json.loads(ln).get("step", 0) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept), encoding="utf-8")
        elif path.exists():
            path.unlink()
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, default=_jsonable) + "\n")
        self._f.flush()

    def close(self) -> None:
        self._f.close()


class StepClock:
    """Splits each step's wall time into compute, communication and wait.

    Communication and wait come from the transport's counters (time inside its calls,
    time blocked on peers); compute is the rest of the step, data loading included.
    """

    def __init__(self, stats):
        self.stats = stats
        self.compute = 0.0
        self.comm = 0.0
        self.wait = 0.0
        self.steps = 0

    def start(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = self.stats.comm_seconds
        self._w0 = self.stats.wait_seconds

    def stop(self) -> float:
        dt = time.perf_counter() - self._t0
        comm = self.stats.comm_seconds - self._c0
        wait = self.stats.wait_seconds - self._w0
        self.comm += comm
        self.wait += wait
        self.compute += max(dt - comm - wait, 0.0)
        self.steps += 1
        return dt

    def state_dict(self) -> dict[str, float]:
        return {"compute": self.compute, "comm": self.comm, "wait": self.wait, "steps": self.steps}

    def load_state_dict(self, d: dict[str, float]) -> None:
        self.compute, self.comm, self.wait = d["compute"], d["comm"], d["wait"]
        self.steps = int(d["steps"])


def summarize(per_rank: list[dict[str, Any]], final_eval: dict[str, Any], *, algorithm: str,
              workers: int, wall_seconds: float, time_to_target: float | None,
              extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build ``summary.json`` from every rank's totals (gathered at the end of the run).

    Byte totals are summed over workers; compute/comm/wait seconds are per-worker means.
    A language model's final evaluation also gives ``bits_per_token``, ``perplexity``
    and ``test_tokens`` (``test_loss`` is then nats per token).
    """
    n = len(per_rank)
    losses = [r["train_loss"] for r in per_rank if r.get("train_loss") is not None]
    summary = {
        "test_accuracy": clean_float(final_eval.get("test_accuracy")),
        "test_loss": clean_float(final_eval.get("test_loss")),
        "train_loss": clean_float(sum(losses) / len(losses)) if losses else None,
        "steps": int(per_rank[0]["steps"]),
        "wall_seconds": wall_seconds,
        "bytes_sent": int(sum(r["bytes_sent"] for r in per_rank)),
        "bytes_received": int(sum(r["bytes_received"] for r in per_rank)),
        "compute_seconds": sum(r["compute_seconds"] for r in per_rank) / n,
        "comm_seconds": sum(r["comm_seconds"] for r in per_rank) / n,
        "wait_seconds": sum(r["wait_seconds"] for r in per_rank) / n,
        "time_to_target": time_to_target,
        "algorithm": algorithm,
        "workers": workers,
        "steps_per_second": (per_rank[0]["steps_this_run"] / wall_seconds
                             if wall_seconds > 0 and per_rank[0].get("steps_this_run") else None),
        "per_rank": per_rank,
    }
    for key in LM_KEYS:
        if key in final_eval:
            summary[key] = clean_float(final_eval[key]) if key != "test_tokens" else final_eval[key]
    if extra:
        summary.update(extra)
    return summary
