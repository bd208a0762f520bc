"""Run distml commands in their own session and always kill the whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


@contextmanager
def session(cmd: list[str], cwd: Path | str | None = None, env: dict | None = None):
    """Start ``cmd`` as the leader of a new session; on exit kill its process group."""
    p = subprocess.Popen(cmd, cwd=cwd, env=env, start_new_session=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield p
    finally:
        _kill_group(p.pid)
        try:
            p.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def run(cmd: list[str], timeout: float, cwd=None, env=None) -> subprocess.CompletedProcess:
    """Run ``cmd`` to the end within ``timeout`` s; kill its whole group however it ends.

    Also checks that nothing of the group outlives the command (no orphaned workers).
    """
    with session(cmd, cwd=cwd, env=env) as p:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(p.pid)
            out, err = p.communicate(timeout=10)
            raise AssertionError(f"timed out after {timeout} s: {' '.join(cmd)}\n{err[-3000:]}")
        deadline = time.monotonic() + 10
        while group_alive(p.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        leftover = group_alive(p.pid)
    assert not leftover, f"processes of {' '.join(cmd)} outlived it"
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def distml(*args: str, timeout: float = 120, cwd=None, env=None) -> subprocess.CompletedProcess:
    """``python -m distml ARGS`` with progress bars off."""
    e = dict(os.environ if env is None else env)
    e.setdefault("PYTHONUNBUFFERED", "1")
    return run([sys.executable, "-m", "distml", *args], timeout=timeout, cwd=cwd, env=e)



def side_by_side(commands: dict[str, list[str]], deadline_s: float) -> dict[str, tuple]:
    """Run every command at once, each in its own session (small runs spend most of their
    time starting, waiting on each other or asleep, so side by side they cost little more
    than the longest).

    Returns name -> (exit code, stdout, stderr, processes of its group left after 10 s).
    Every process group is killed at the end, always, even when a command overruns.
    """
    procs, done = {}, {}
    try:
        for name, cmd in commands.items():
            ctx = session(cmd)
            procs[name] = (ctx, ctx.__enter__())
        deadline = time.monotonic() + deadline_s
        for name, (_, p) in procs.items():
            out, err = p.communicate(timeout=max(1.0, deadline - time.monotonic()))
            settle = time.monotonic() + 10
            while group_alive(p.pid) and time.monotonic() < settle:
                time.sleep(0.1)
            done[name] = (p.returncode, out, err, group_alive(p.pid))
    finally:
        for ctx, p in procs.values():
            _kill_group(p.pid)
            ctx.__exit__(None, None, None)
    return done


def run_side_by_side(folder: Path, configs: dict[str, Path], deadline_s: float,
                     extra_args: tuple[str, ...] = ()) -> dict[str, tuple]:
    """``distml run CONFIG --out folder/NAME [extra_args]`` for every entry, side by side.

    Returns name -> (exit code, stderr, output folder, processes left after 10 s, config).
    """
    done = side_by_side({name: [sys.executable, "-m", "distml", "run", str(cfg),
                                "--out", str(folder / name), *extra_args]
                         for name, cfg in configs.items()}, deadline_s)
    return {name: (code, err, folder / name, leftover, configs[name])
            for name, (code, _, err, leftover) in done.items()}
