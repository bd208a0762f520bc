"""Injected faults: stragglers, random per-step delays, a fixed compute time, crashes.

They make pace strategies comparable on one machine (docs/design.md §2.4, issue 3). A slow
step is emulated with a sleep *after* the step, scaled from the step's measured compute
time (wall time minus the time inside the transport):

- ``straggler = {ranks = [2], slowdown = 3.0}``: those workers' steps take 3× as long
  (a sleep of 2× the compute time);
- ``delay = {name = "exponential", mean = 1.0}``: every step sleeps an extra time drawn
  from an exponential distribution with mean ``mean`` × the compute time;
  ``delay = {name = "bernoulli", p = 0.33, slowdown = 3.0}``: with probability ``p`` a
  step takes ``slowdown`` × as long; ``ranks = [...]`` limits either to some workers;
- ``compute_s = 0.02``: pad every step's compute to 20 ms with a sleep before the
  factors apply. On an oversubscribed machine (2 cores, 4 processes) the real compute
  time varies with contention; a fixed step time makes the *pace* what a benchmark
  measures. Sleeps count as compute time;
- ``slow_eval = {seconds = 5.0}``: rank 0 sleeps that long in every evaluation, as a
  large test set or model would (tests that the others' waits outlast ``comm.timeout_s``);
- ``crash = {rank = 1, after_s = 2.0}``: that process dies with SIGKILL 2 s after it
  joined the world (tests of failure detection); ``crash = {rank = 1, step = 5}``: before
  step 5 of the worker loop (tests of in-place recovery, runtime/elastic.py);
- ``hang = {rank = 1, step = 3}``: that worker stops for good before step 3 (alive, in
  no operation), so its peers wait in that step's collective: tests of hang reports
  (runtime/hang.py).

Draws are seeded by (seed, rank, step), so a resumed run draws the same delays.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time

from distml.config import FaultsConfig
from distml.errors import ConfigError


def check_faults(cfg: FaultsConfig, workers: int, processes: int) -> None:
    """Refuse ranks that do not exist.

    Raises:
        ConfigError: a straggler/delay rank outside ``[0, workers)`` or a crash rank
            outside ``[0, processes)``.
    """
    for what, ranks in (("faults.straggler.ranks", cfg.straggler.ranks if cfg.straggler else []),
                        ("faults.delay.ranks", (cfg.delay.ranks or []) if cfg.delay else [])):
        bad = [r for r in ranks if not 0 <= r < workers]
        if bad:
            raise ConfigError(f"{what} must be worker ranks in [0, {workers - 1}], got {bad}")
    if cfg.crash is not None and not cfg.crash.rank < processes:
        raise ConfigError(f"faults.crash.rank must be in [0, {processes - 1}], got {cfg.crash.rank}")
    if cfg.hang is not None and not cfg.hang.rank < workers:
        raise ConfigError(f"faults.hang.rank must be a worker rank in [0, {workers - 1}], "
                          f"got {cfg.hang.rank}")


def check_worker_loss(cfg: FaultsConfig, workers: int, algorithm, name: str) -> None:
    """Refuse an ``on_worker_loss`` / ``min_workers`` the run cannot honour.

    Raises:
        ConfigError: "continue" with an algorithm that cannot regroup (``Algorithm.elastic``),
            ``min_workers`` above ``workers``, or ``min_workers`` without "continue".
    """
    if cfg.on_worker_loss != "continue":
        if cfg.min_workers != 1 or cfg.join_wait_s:
            what = "min_workers" if cfg.min_workers != 1 else "join_wait_s"
            raise ConfigError(f"faults.{what} applies to on_worker_loss = 'continue' only; "
                              "remove it or set faults.on_worker_loss = 'continue'")
        return
    if not algorithm.elastic:
        from distml.algorithms import ALGORITHMS
        from distml.algorithms.base import Algorithm
        classes = {n: ALGORITHMS.get(n) for n in ALGORITHMS.names()}
        able = [n for n, c in classes.items()
                if isinstance(c, type) and issubclass(c, Algorithm) and c.elastic]
        raise ConfigError(f"algorithm '{name}' cannot continue after a worker loss "
                          f"(faults.on_worker_loss = 'continue' works with {', '.join(able)}); "
                          "use on_worker_loss = 'stop' or 'restart'")
    if cfg.min_workers > workers:
        raise ConfigError(f"faults.min_workers must be in [1, workers = {workers}], "
                          f"got {cfg.min_workers}")


class FaultInjector:
    """Per-step sleeps of one worker; ``begin()`` before a step, ``end(step)`` after it.

    Args:
        cfg: the ``[faults]`` section.
        rank: this worker's rank.
        seed: the run's seed.
        stats: the transport's counters (their time is not compute).
    """

    def __init__(self, cfg: FaultsConfig, rank: int, seed: int, stats):
        self.cfg, self.rank, self.seed, self.stats = cfg, rank, seed, stats
        s = cfg.straggler
        self.slowdown = s.slowdown if s is not None and rank in s.ranks else 1.0
        d = cfg.delay
        self.delay = d if d is not None and (d.ranks is None or rank in d.ranks) else None
        self.slept = 0.0

    def stop_if_hung(self, step: int) -> None:
        """``faults.hang``: stop here for good, alive, until the launcher ends the process."""
        if self.cfg.hang is not None and self.cfg.hang.rank == self.rank and step >= self.cfg.hang.step:
            threading.Event().wait()

    def begin(self, step: int) -> None:
        self.stop_if_hung(step)
        crash = self.cfg.crash
        if crash is not None and crash.rank == self.rank and crash.step == step:
            os.kill(os.getpid(), signal.SIGKILL)
        self._t0 = time.perf_counter()
        self._busy0 = self.stats.comm_seconds + self.stats.wait_seconds

    def extra(self, step: int, compute: float) -> float:
        """Seconds to sleep after a step whose compute took ``compute`` s."""
        base = max(compute, self.cfg.compute_s or 0.0)
        extra = (base - compute) + base * (self.slowdown - 1.0)
        if self.delay is not None:
            rng = random.Random((self.seed * 1_000_003 + self.rank) * 1_000_003 + step)
            if self.delay.name == "exponential":
                extra += rng.expovariate(1.0 / self.delay.mean) * base
            elif rng.random() < self.delay.p:
                extra += (self.delay.slowdown - 1.0) * base
        return extra

    def end(self, step: int) -> float:
        busy = self.stats.comm_seconds + self.stats.wait_seconds - self._busy0
        compute = max(time.perf_counter() - self._t0 - busy, 0.0)
        extra = self.extra(step, compute)
        if extra > 0:
            time.sleep(extra)
            self.slept += extra
        return extra


def make_faults(cfg: FaultsConfig, rank: int, seed: int, stats) -> FaultInjector | None:
    """The injector of a worker, or None when no per-step fault applies."""
    stepped_crash = cfg.crash is not None and cfg.crash.step is not None
    if cfg.straggler is None and cfg.delay is None and cfg.compute_s is None and cfg.hang is None \
            and not stepped_crash:
        return None
    return FaultInjector(cfg, rank, seed, stats)


def arm_crash(cfg: FaultsConfig, rank: int) -> threading.Timer | None:
    """If ``faults.crash`` names this rank, kill this process after ``after_s`` seconds."""
    if cfg.crash is None or cfg.crash.rank != rank or cfg.crash.after_s is None:
        return None
    timer = threading.Timer(cfg.crash.after_s, os.kill, (os.getpid(), signal.SIGKILL))
    timer.daemon = True
    timer.start()
    return timer
