"""Per-rank event logs, evaluation points, TensorBoard scalars and the run summary (docs/design.md §5)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Literal

from distml.config import tensorboard_installed

log = logging.getLogger("distml")

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


PROGRESS_EVERY_S = 10.0     # at most one progress line per this many seconds in a rank's log


class RunLog:
    """Every metric a rank writes goes through :meth:`record`, to all of its sinks at once.

    - ``"step"`` records (every ``log_every`` steps, every rank): ``events-rank{r}.jsonl``,
      TensorBoard tags ``train/<key>`` in ``tensorboard/rank{r}/``, and a progress line in
      ``logs/rank{r}.log`` (the first one, then at most one per ``PROGRESS_EVERY_S``).
    - ``"eval"`` records (rank 0 only): ``eval.jsonl``, TensorBoard tags ``eval/<key>``
      in ``tensorboard/rank0/``, and a line in the rank's log.

    TensorBoard gets every numeric field under its JSON key, so the event files and the
    JSON-lines files always hold the same numbers (staleness and consensus distance
    included, where an algorithm reports them).

    Args:
        out_dir: the run folder.
        rank: this process's rank.
        resume_step: the checkpoint's step when resuming: later records of the previous
            attempt are dropped (JSON lines) or purged (TensorBoard); None starts afresh.
        tensorboard: write event files; None: when the ``tensorboard`` package is installed.
    """

    def __init__(self, out_dir: Path, rank: int, resume_step: int | None = None,
                 tensorboard: bool | None = None, lead: bool | None = None):
        out_dir = Path(out_dir)
        self.events = JsonlLog(out_dir / f"events-rank{rank}.jsonl", resume_step)
        # the evaluating rank (default rank 0; a replacement of launch rank 0 is not it)
        lead = rank == 0 if lead is None else lead
        self.evals = JsonlLog(out_dir / "eval.jsonl", resume_step) if lead else None
        self._tb = None
        if tensorboard if tensorboard is not None else tensorboard_installed():
            self._tb = _tensorboard_writer(out_dir / "tensorboard" / f"rank{rank}", resume_step)
        self._last_progress: float | None = None

    def lead(self, out_dir: Path) -> None:
        """This rank became rank 0 (its predecessor died, runtime/elastic.py): it writes
        the evaluations from now on, after the ones already in ``eval.jsonl``."""
        if self.evals is None:
            self.evals = JsonlLog(Path(out_dir) / "eval.jsonl", resume_step=sys.maxsize)

    def record(self, kind: Literal["step", "eval"], fields: dict[str, Any]) -> None:
        fields = {k: clean_float(v) if isinstance(v, float) else v for k, v in fields.items()}
        if kind == "eval" and self.evals is None:
            return
        (self.events if kind == "step" else self.evals).write(fields)
        if self._tb is not None:
            prefix = "train" if kind == "step" else "eval"
            for key, value in fields.items():
                if key not in ("step", "epoch") and _is_number(value):
                    self._tb.add_scalar(f"{prefix}/{key}", value, global_step=int(fields["step"]))
        now = time.monotonic()
        if kind == "eval" or self._last_progress is None or now - self._last_progress >= PROGRESS_EVERY_S:
            if kind == "step":
                self._last_progress = now
            log.info("%s", progress_line(kind, fields))

    def close(self) -> None:
        self.events.close()
        if self.evals is not None:
            self.evals.close()
        if self._tb is not None:
            self._tb.close()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _tensorboard_writer(folder: Path, resume_step: int | None):
    from torch.utils.tensorboard import SummaryWriter
    if resume_step is None and folder.exists():
        shutil.rmtree(folder)       # a run started over: the old curves are not this run's
    # purge_step: TensorBoard hides the previous attempt's points after the checkpoint
    return SummaryWriter(str(folder), purge_step=None if resume_step is None else resume_step + 1,
                         flush_secs=10)


def progress_line(kind: str, fields: dict[str, Any]) -> str:
    """One readable line for a rank's log from a step or evaluation record."""
    def fmt(key: str, v: Any) -> str:
        if key == "bytes_sent" or key == "bytes_received":
            return f"{key[6:]} {v / 1e6:.3g} MB"
        if key.endswith("_seconds"):
            return f"{key[:-8]} {v:.3g}s"
        return f"{key} {v:.4g}" if isinstance(v, float) else f"{key} {v}"
    shown = ", ".join(fmt(k, v) for k, v in fields.items()
                      if k not in ("step", "epoch") and _is_number(v))
    return f"{'progress' if kind == 'step' else 'evaluation'} at step {fields['step']}: {shown}"


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
        # this run's steps over this run's wall time (a resumed run's wall_seconds adds the earlier runs')
        "steps_per_second": (per_rank[0]["steps_this_run"] / this_run
                             if (this_run := per_rank[0].get("wall_seconds_this_run", wall_seconds)) > 0
                             and per_rank[0].get("steps_this_run") else None),
        "per_rank": per_rank,
    }
    for key in LM_KEYS:
        if key in final_eval:
            summary[key] = clean_float(final_eval[key]) if key != "test_tokens" else final_eval[key]
    if extra:
        summary.update(extra)
    return summary
