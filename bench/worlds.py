"""What the test-bed benches share (bench/scale.py, bench/cost_model.py): worlds of cells on
namespace hosts, and step times read from a run's events.

A *cell* is one training run (a config dict and a run folder). Cells of the same world
size run one after another in one world (``python -m distml.runtime.testbed cells``), so a
run costs its training and not a process start; a bench lists its repeats interleaved so
the machine's load hits every method alike.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

from distml.runtime.testbed import can_make_namespaces, hosts, run_ranks, set_rate


class Session:
    """A test-bed bench's start: ``--quick`` parsed, namespaces checked, the protocol in
    force (``PROTOCOL`` with its ``"quick"`` overrides under ``--quick``), the load
    averages seen (``loads``), and :meth:`log` (stderr, recording the load each time)."""

    def __init__(self, bench: str, doc: str, protocol: dict, quick_help: str,
                 parts: tuple[str, ...] = ()):
        ap = argparse.ArgumentParser(description=doc.split("\n")[0])
        ap.add_argument("--quick", action="store_true", help=quick_help)
        if parts:
            ap.add_argument("--parts", default=",".join(parts),
                            help=f"comma-separated parts to run (default: all of {', '.join(parts)})")
        args = ap.parse_args()
        self.quick = args.quick
        self.parts = [x for x in parts if x in args.parts.split(",")] if parts else []
        unknown = set(args.parts.split(",")) - set(parts) if parts else set()
        if unknown or (parts and not self.parts):
            raise SystemExit(f"bench/{bench}.py: --parts takes {', '.join(parts)}, got {args.parts!r}")
        reason = can_make_namespaces()
        if reason:
            raise SystemExit(f"bench/{bench}.py needs network namespaces: {reason}")
        self.p = {k: v for k, v in protocol.items() if k != "quick"}
        if self.quick:
            self.p.update(protocol["quick"])
        self.loads = [os.getloadavg()]
        self.t0 = time.perf_counter()

    def log(self, line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        self.loads.append(os.getloadavg())

    def record(self) -> dict:
        """What every result file says about the run's conditions."""
        return {"load_average": [[round(x, 2) for x in la] for la in self.loads],
                "bench_seconds": round(time.perf_counter() - self.t0)}


def processes(cfg: dict) -> int:
    """Hosts a config takes: its workers, plus the parameter server's servers."""
    algorithm = cfg["algorithm"]
    servers = algorithm.get("servers", 1) if algorithm["name"] == "ps" else 0
    return cfg["workers"] + servers


def add_cell(worlds: dict, tmp: Path, key: str, cfg: dict, rep: int, limited: bool = True) -> None:
    """Queue ``cfg`` (repeat ``rep``) in the world of its size; ``limited``: on rate-limited links."""
    worlds.setdefault((processes(cfg), limited), []).append(
        {"key": key, "rep": rep, "config": cfg, "out": str(tmp / f"{key.replace('/', '-')}-r{rep}"),
         "limited": limited})


def by_key(worlds: dict) -> dict[str, list[dict]]:
    """Every cell by key, its repeats in order."""
    out: dict[str, list[dict]] = {}
    for cells in worlds.values():
        for c in cells:
            out.setdefault(c["key"], []).append(c)
    return {k: sorted(v, key=lambda c: c["rep"]) for k, v in out.items()}


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def run_worlds(worlds: dict, tmp: Path, rate: str, both_ways: bool, log: Callable[[str], None]) -> None:
    """One test bed as large as the largest world; each world runs on its first hosts,
    the unlimited ones (profiles) first."""
    biggest = max(size for size, _ in worlds)
    with hosts(biggest, rate=rate, both_ways=both_ways) as hs:
        for (size, limited), cells in sorted(worlds.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            set_rate(hs, rate if limited else None, both_ways=both_ways)
            listing = tmp / f"cells-{size}-{'limited' if limited else 'free'}.json"
            listing.write_text(json.dumps([{"config": c["config"], "out": c["out"]} for c in cells]))
            t0 = time.perf_counter()
            run_ranks(hs[:size], ["-m", "distml.runtime.testbed", "cells", str(listing)], timeout=3000)
            log(f"  world of {size} ({'limited' if limited else 'unlimited'} links): "
                f"{len(cells)} cells in {time.perf_counter() - t0:.0f} s (load {load()})")


def _intervals(run_dir: Path) -> list[dict]:
    events = [json.loads(line) for line in (run_dir / "events-rank0.jsonl").read_text().splitlines()
              if line.strip()]
    events = [e for e in events if "compute_seconds" in e]
    if len(events) < 3:
        raise SystemExit(f"{run_dir}: too few logged intervals; raise the steps")
    return events[1:]                   # the first interval is warm-up


def measured_step(run_dir: Path) -> float:
    """Median seconds per step over rank 0's logging intervals, the first one dropped."""
    ev = _intervals(Path(run_dir))
    return statistics.median((b["wall_seconds"] - a["wall_seconds"]) / (b["step"] - a["step"])
                             for a, b in zip(ev, ev[1:]))


def mean_step(run_dir: Path) -> tuple[float, float]:
    """Mean seconds per step and mean compute seconds per step on rank 0, from the end of
    the first logging interval (warm-up) to the last."""
    ev = _intervals(Path(run_dir))
    steps = ev[-1]["step"] - ev[0]["step"]
    return ((ev[-1]["wall_seconds"] - ev[0]["wall_seconds"]) / steps,
            (ev[-1]["compute_seconds"] - ev[0]["compute_seconds"]) / steps)
