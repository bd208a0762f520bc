"""The live per-rank view the launcher shows while a run trains.

The launcher tails every rank's ``events-rank{r}.jsonl`` (written every
``train.log_every`` steps) and shows, per rank, the step, the training loss, the
throughput and the share of time spent waiting for peers, and names the slowest rank.
On a terminal it is a table redrawn in place (rich ``Live``), which replaces rank 0's
progress bar; otherwise (a log file, CI) one summary line every ``LINE_EVERY_S`` seconds.

The figures come from pure functions of the event records (:func:`rank_statuses`,
:func:`slowest_rank`, :func:`summary_line`, :func:`status_table`), so what the view
says can be checked without a terminal.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

REDRAW_EVERY_S = 1.0
LINE_EVERY_S = 30.0


@dataclass
class RankStatus:
    rank: int
    step: int
    epoch: float | None
    loss: float | None
    steps_per_s: float | None
    samples_per_s: float | None
    compute_per_step: float | None   # seconds of this rank's own work per step
    comm_share: float | None         # shares of the step time over the last interval; time
    wait_share: float | None         # blocked in a collective counts as communication


_START = {"step": 0, "wall_seconds": 0.0, "compute_seconds": 0.0, "comm_seconds": 0.0, "wait_seconds": 0.0}


def rank_status(rank: int, records: list[dict[str, Any]], samples_per_step: int | None) -> RankStatus:
    """One rank's figures over its last interval: between its last two step records, or
    from the start to its only one."""
    a, b = (records[-2] if len(records) > 1 else _START), records[-1]

    def delta(key: str) -> float:
        return (b.get(key) or 0.0) - (a.get(key) or 0.0)

    steps, wall = b["step"] - a["step"], delta("wall_seconds")
    compute, comm, wait = delta("compute_seconds"), delta("comm_seconds"), delta("wait_seconds")
    timed = compute + comm + wait
    rate = steps / wall if wall > 0 and steps > 0 else None
    return RankStatus(
        rank=rank, step=int(b["step"]), epoch=b.get("epoch"), loss=b.get("loss"), steps_per_s=rate,
        samples_per_s=rate * samples_per_step if rate is not None and samples_per_step else None,
        compute_per_step=compute / steps if steps > 0 else None,
        comm_share=comm / timed if timed > 0 else None,
        wait_share=wait / timed if timed > 0 else None)


def rank_statuses(records_by_rank: dict[int, list[dict[str, Any]]],
                  samples_per_step: int | None) -> list[RankStatus]:
    """Every rank that has written a step record, by rank."""
    return [rank_status(r, recs, samples_per_step) for r, recs in sorted(records_by_rank.items()) if recs]


def slowest_rank(rows: list[RankStatus]) -> int | None:
    """The rank the others wait for: the most compute time per step.

    Not the least step time: in a synchronous run every rank's step ends at the same
    collective, where the fast ranks' waiting counts as communication. Compute (the step
    minus communication and waiting) is each rank's own work, so it names a straggler in
    synchronous and asynchronous runs alike. None with fewer than two ranks to compare.
    """
    timed = [r for r in rows if r.compute_per_step is not None]
    if len(timed) < 2:
        return None
    return max(timed, key=lambda r: r.compute_per_step).rank


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _span(values: list[float], fmt: str) -> str:
    lo, hi = format(min(values), fmt), format(max(values), fmt)
    return lo if lo == hi else f"{lo}-{hi}"


def summary_line(rows: list[RankStatus]) -> str:
    """One line for a log: the ranks' step, loss, throughput, comm and wait, the slowest rank."""
    if not rows:
        return "distml: waiting for the first step records"
    parts = [f"step {_span([r.step for r in rows], 'd')}"]
    for name, values, fmt in (("loss", [r.loss for r in rows], ".4f"),
                              ("comm %", [r.comm_share for r in rows], ".0%"),
                              ("wait %", [r.wait_share for r in rows], ".0%")):
        known = [v for v in values if v is not None]
        if known:
            parts.append(f"{name.rstrip(' %')} {_span(known, fmt)}")
    samples = [r.samples_per_s for r in rows if r.samples_per_s is not None]
    if samples:
        parts.append(f"{sum(samples):.0f} samples/s in all")
    slow = slowest_rank(rows)
    if slow is not None:
        parts.append(f"slowest rank {slow}")
    return f"distml: {len(rows)} ranks: " + ", ".join(parts)


def status_table(rows: list[RankStatus], title: str = "distml", samples: bool = True):
    """The per-rank table (a rich ``Table``) with the slowest rank marked.

    ``samples``: the throughput column in samples/s (else steps/s).
    """
    from rich.table import Table
    slow = slowest_rank(rows)
    t = Table(title=title, title_justify="left", box=None, header_style="bold underline")
    for head in ("rank", "step", "epoch", "loss", "samples/s" if samples else "steps/s",
                 "compute s/step", "comm", "wait"):
        t.add_column(head, justify="right", no_wrap=True, min_width=len(head))
    t.add_column("", no_wrap=True, min_width=len("slowest"))
    for r in rows:
        rate = _num(r.samples_per_s, ".0f") if samples else _num(r.steps_per_s, ".2f")
        t.add_row(str(r.rank), str(r.step), _num(r.epoch, ".2f"), _num(r.loss, ".4f"), rate,
                  _num(r.compute_per_step, ".3g"), _pct(r.comm_share), _pct(r.wait_share),
                  "slowest" if r.rank == slow else "", style="bold" if r.rank == slow else None)
    if not rows:
        t.caption = "starting: the first figures come after train.log_every steps"
    return t


class EventTail:
    """Reads the lines appended to a rank's events file since the last call.

    A file started over (a new run or a resume rewrites it) is read from its start again;
    the view must never stop a run, so a line it cannot parse only makes it re-read.
    """

    def __init__(self, path: Path, keep: int = 2):
        self.path = path
        self.keep = keep
        self.records: list[dict[str, Any]] = []
        self._inode: int | None = None
        self._offset = 0
        self._partial = b""

    def poll(self) -> list[dict[str, Any]]:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self.records
        if st.st_ino != self._inode or st.st_size < self._offset:
            self._inode, self._offset, self._partial, self.records = st.st_ino, 0, b"", []
        if st.st_size > self._offset:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = self._partial + f.read()
            self._offset = st.st_size
            *lines, self._partial = data.split(b"\n")   # a line still being written waits
            try:
                self.records += [json.loads(line) for line in lines if line.strip()]
            except ValueError:      # rewritten in place between two polls: read it again
                self._inode = None
            self.records = self.records[-self.keep:]
        return self.records


class LiveView:
    """Shows the ranks' progress from their event files while the launcher waits.

    Args:
        out_dir: the run folder.
        world: the number of ranks.
        samples_per_step: samples one rank takes per step (None: not shown).
        stream: where to draw (a terminal gets the table, anything else summary lines).
        line_every_s: seconds between summary lines when ``stream`` is not a terminal.
    """

    def __init__(self, out_dir: Path, world: int, samples_per_step: int | None, stream: TextIO,
                 line_every_s: float = LINE_EVERY_S, title: str = "distml"):
        self.tails = {r: EventTail(Path(out_dir) / f"events-rank{r}.jsonl") for r in range(world)}
        self.samples_per_step = samples_per_step
        self.stream = stream
        self.line_every_s = line_every_s
        self.title = title
        self._last = time.monotonic()
        self._live = None
        self.on_terminal = stream.isatty()
        if self.on_terminal:
            from rich.console import Console
            from rich.live import Live
            self._live = Live(self._table([]), console=Console(file=stream), auto_refresh=False,
                              transient=False)
            self._live.start()

    def _table(self, rows: list[RankStatus]):
        return status_table(rows, self.title, samples=self.samples_per_step is not None)

    def rows(self) -> list[RankStatus]:
        return rank_statuses({r: t.poll() for r, t in self.tails.items()}, self.samples_per_step)

    def tick(self) -> None:
        now = time.monotonic()
        if self._live is not None and now - self._last >= REDRAW_EVERY_S:
            self._last = now
            self._live.update(self._table(self.rows()), refresh=True)
        elif self._live is None and now - self._last >= self.line_every_s:
            self._last = now
            print(summary_line(self.rows()), file=self.stream, flush=True)

    def close(self) -> None:
        if self._live is not None:
            self._live.update(self._table(self.rows()), refresh=True)
            self._live.stop()


def live_view(config: dict[str, Any], out_dir: str | Path, world: int,
              stream: TextIO | None = None) -> LiveView | None:
    """The launcher's view of a run, or None when ``train.progress`` is off."""
    train = config.get("train", {})
    if not train.get("progress", True):
        return None
    return LiveView(Path(out_dir), world, _samples_per_step(config), stream or sys.stderr,
                    title=f"distml: run '{config.get('name', 'run')}', {world} ranks")


def without_progress_bar(config: dict[str, Any]) -> dict[str, Any]:
    """The workers' config when the launcher shows the view: no second display from rank 0."""
    return {**config, "train": {**config.get("train", {}), "progress": False}}


def _samples_per_step(config: dict[str, Any]) -> int | None:
    """``data.batch_size``, unless the algorithm runs its own loop (its steps are rounds)."""
    from distml.runtime.build import registries
    algorithms = registries()["algorithm"]
    spec = config.get("algorithm", {})
    if spec.get("name") not in algorithms or algorithms.build(spec).owns_loop:
        return None
    return config.get("data", {}).get("batch_size")
