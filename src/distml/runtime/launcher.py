"""The embedded launcher: N local worker processes on 127.0.0.1, watched until they end.

The launcher hosts the rendezvous store itself, on a socket bound to 127.0.0.1, so no
port race and nothing reachable from other hosts; gloo is pinned to the loopback
interface. When a worker fails, the others get the configured timeout to notice and
exit on their own, then the launcher ends them: no process outlives a run. The first
failure is reported in one line that names its rank.

With restarts (``distml run --max-restarts N``, the local equivalent of torchrun's),
a failed group is stopped as a whole and started again from the latest committed
checkpoint, up to N times, with one line per restart. With ``[faults] on_worker_loss =
"continue"`` a lost worker is replaced instead: a new process of its rank joins the
survivors, who never stopped (runtime/elastic.py).
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import multiprocessing.connection
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from distml.comm.transport import Transport
from distml.errors import PeerError, UserError
from distml.runtime.checkpoint import Checkpoints
from distml.runtime.elastic import (BELOW_MIN_WORKERS, EXIT_KEY, LOST_SERVER, Replacement,
                                      incarnation_key)
from distml.runtime.hang import HangCollector
from distml.runtime.live import live_view, without_progress_bar
from distml.runtime.worker import EXIT_USER, Rendezvous, WorkerJob, run_worker_process

LOOPBACK = "127.0.0.1"
_ERROR_KEY = "distml/error/{rank}"
_EXIT_KEY = EXIT_KEY      # set by the launcher: how a rank ended (not a peer echo)
STOPPED_AFTER_PEER = "stopped by the launcher after a peer failed"
# a worker that stopped because the user's script, re-imported by it, called distml.run again
EXIT_MAIN_REIMPORTED = 3
UNGUARDED_MAIN = ("each worker process re-ran the script's top-level code, which starts distml "
                  "again; put the distml.run(...) call under `if __name__ == \"__main__\":` "
                  "(worker processes import the script that starts them)")


def refuse_in_worker_import() -> None:
    """Stop a worker that is importing the user's script and reached a second distml.run.

    Workers import the main script as ``__mp_main__`` (forked from the fork server or
    spawned); a script without the ``__main__`` guard would start workers from every
    worker. CPython marks that import phase with ``_inheriting`` (what its own
    "bootstrapping phase" check reads). The worker exits quietly with
    :data:`EXIT_MAIN_REIMPORTED` (``os._exit``: the fork server's child turns a
    ``SystemExit`` raised while it prepares into exit code 1); the launcher turns that
    into one line naming the fix.
    """
    if getattr(mp.current_process(), "_inheriting", False):
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_MAIN_REIMPORTED)


@dataclass
class WorkerExit:
    rank: int
    code: int
    line: str
    at: float


class LaunchFailed(Exception):
    """A worker failed: ``first`` is the failure that started it."""

    def __init__(self, first: WorkerExit, exits: list[WorkerExit], replaced: int = 0):
        self.first = first
        self.exits = exits
        self.replaced = replaced      # replacements started before it failed
        super().__init__(f"rank {first.rank}: {first.line}")

    @property
    def user_error(self) -> bool:
        return self.first.code == EXIT_USER


def _loopback_env(env: dict[str, str]) -> None:
    # gloo binds its pair sockets to the interface of the hostname unless told otherwise
    env.setdefault("GLOO_SOCKET_IFNAME", "lo")


_PR_SET_PDEATHSIG = 1     # <linux/prctl.h>


def die_with_launcher(launcher_pid: int) -> None:
    """SIGTERM this process when its launcher ``launcher_pid`` dies; exit at once if it
    already has.

    A launcher killed from outside (SIGKILL, or SIGTERM, whose default action skips every
    ``finally``) cannot stop its workers itself; without this they would train on as
    orphans. A direct child (``distml launch``'s subprocesses) asks the kernel:
    Linux's ``prctl(PR_SET_PDEATHSIG)``, whose signal follows the death of the thread
    that started the child (the launchers below wait in that same thread); the check
    after it closes the race prctl leaves. A worker forked by the launcher's fork server
    (:func:`worker_context`) is not the launcher's child, and the server outlives the
    launcher while its children live, so a daemon thread waits on the launcher's pidfd
    (Linux 5.3; elsewhere it polls once a second) and then sends the same SIGTERM.
    """
    if os.getppid() != launcher_pid:
        _watch_launcher(launcher_pid)
        return
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):   # no libc symbol: keep the check below
            pass
    if os.getppid() != launcher_pid:
        os._exit(128 + int(signal.SIGTERM))


def _watch_launcher(launcher_pid: int) -> None:
    try:
        fd = os.pidfd_open(launcher_pid)
    except ProcessLookupError:
        os._exit(128 + int(signal.SIGTERM))
    except (AttributeError, OSError):      # no pidfd here: poll
        fd = None
        if not _alive(launcher_pid):
            os._exit(128 + int(signal.SIGTERM))

    def wait() -> None:
        if fd is not None:
            select.select([fd], [], [])
        else:
            while _alive(launcher_pid):
                time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=wait, daemon=True, name="distml-launcher-watch").start()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:     # exists, owned by another user
        return True


#: imported once in the fork server instead of once in every worker: torch, and
#: torch._dynamo, which every torch optimizer imports when it is built (together about
#: 2-4 s of CPU per process: most of what a small run costs)
WORKER_PRELOAD = ("distml.runtime.launcher", "torch._dynamo")


def worker_context():
    """Where worker processes come from: a fork server that has imported
    :data:`WORKER_PRELOAD` (a fresh interpreter started once per launcher; each worker is
    a fork of it, single-threaded, so no lock is copied held), else ``spawn``.

    Workers import the main script like spawned ones do (``__mp_main__``), and see the
    environment the launcher had when it started its first workers.
    """
    if "forkserver" not in mp.get_all_start_methods():     # Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(WORKER_PRELOAD))
    return ctx


def _child(rank: int, world: int, port: int, job: WorkerJob, timeout_s: float,
           launcher_pid: int) -> None:
    die_with_launcher(launcher_pid)
    _loopback_env(os.environ)
    store_box: dict[str, Any] = {}
    incarnation = job.replacement.incarnation if job.replacement is not None else 0

    def report(r: int, code: int, line: str) -> None:
        try:
            store = store_box.get("s") or Transport.store_client(LOOPBACK, port, 10.0)
            store.set(incarnation_key(_ERROR_KEY.format(rank=r), incarnation), f"{code}\n{line}")
        except Exception:   # the launcher then reports the exit code alone
            pass

    def dead_peers(wait_s: float = 2.0) -> str:
        """Which peers the launcher saw die (it notices within milliseconds; a partition
        leaves nothing to find, and the wait ends after ``wait_s``)."""
        try:
            store = Transport.store_client(LOOPBACK, port, 10.0)
            deadline = time.monotonic() + wait_s
            while True:
                keys = {r: _EXIT_KEY.format(rank=r) for r in range(world) if r != rank}
                dead = [f"rank {r} {store.get(k).decode()}" for r, k in keys.items() if store.check([k])]
                if dead or time.monotonic() > deadline:
                    return ", ".join(dead)
                time.sleep(0.1)
        except Exception:   # the launcher's line still names the rank
            return ""

    code = run_worker_process(rank, world, rank, Rendezvous(LOOPBACK, port), job, report=report,
                              dead_peers=dead_peers)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)   # skip atexit handlers of torch that can abort after a failed group


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _listen_loopback() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    sock.listen(128)
    return sock


def _host_store(timeout_s: float):
    """The rendezvous store on a fresh 127.0.0.1 port; the store owns the socket from here on."""
    sock = _listen_loopback()
    port = sock.getsockname()[1]
    store = Transport.host_store(sock, timeout_s)
    sock.detach()
    return store, port


def _read_error(store, rank: int, incarnation: int = 0) -> tuple[int, str] | None:
    try:
        key = incarnation_key(_ERROR_KEY.format(rank=rank), incarnation)
        if store.check([key]):
            code, _, line = store.get(key).decode().partition("\n")
            return int(code), line
    except Exception:
        return None
    return None


def _stop(procs, grace_s: float = 5.0) -> None:
    """SIGTERM the live processes we started, then SIGKILL whatever is left after ``grace_s``."""
    procs = [p for p in procs if p.pid is not None]     # a failed start leaves some unstarted
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)


def oversubscribed(config: dict[str, Any], world: int, say=None) -> dict[str, Any]:
    """The workers' config when ``world`` ranks share fewer CPUs than ranks on this host.

    Each rank then gets one intra-op thread (``train.threads_per_worker = 1``): more threads
    than cores would only make the ranks preempt each other. Says so in one line.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if world <= cpus:
        return config
    (say or (lambda line: print(line, file=sys.stderr, flush=True)))(
        f"distml: warning: {world} ranks on {cpus} CPUs: one thread per rank; step times "
        "include CPU contention (use fewer workers, or more hosts, to time the algorithm)")
    return {**config, "train": {**config.get("train", {}), "threads_per_worker": 1}}


def launch_local(job: WorkerJob, world: int, timeout_s: float, replacements: int = 0,
                 say=None) -> int:
    """Run ``world`` workers on this host and wait for them.

    With ``[faults] on_worker_loss = "continue"`` a worker that dies (anything but a
    user error) does not stop the others: they regroup (runtime/elastic.py) and the run
    succeeds if they finish; one line per lost worker says so. With ``replacements``
    (``--max-restarts``), each lost worker is also replaced, up to that many times in
    all: a new process of the same launch rank that joins the running group.

    Returns:
        the number of replacements started.

    Raises:
        LaunchFailed: a worker failed; the others were given ``timeout_s`` to exit and
            then stopped.
    """
    job = replace(job, config=oversubscribed(job.config, world))
    faults = job.config.get("faults") or {}
    survivable = faults.get("on_worker_loss") == "continue"
    job = replace(job, admit_replacements=survivable and replacements > 0)
    store, port = _host_store(timeout_s)
    view = live_view(job.config, job.out_dir, world)    # every rank's progress, from here
    if view is not None:
        job = replace(job, config=without_progress_bar(job.config))
    ctx = worker_context()

    def start(rank: int, incarnation: int) -> mp.Process:
        rjob = job if not incarnation else _replacement_job(job, incarnation)
        p = ctx.Process(target=_child, args=(rank, world, port, rjob, timeout_s, os.getpid()),
                        name=f"distml-rank{rank}" + (f".{incarnation}" if incarnation else ""),
                        daemon=False)
        p.start()
        return p

    # one entry per process started: (launch rank, incarnation), the process
    slots: list[tuple[int, int]] = [(r, 0) for r in range(world)]
    procs: list = []
    exits: dict[int, WorkerExit] = {}
    hangs = HangCollector(world)
    replaced = 0
    try:
        for r in range(world):
            try:
                procs.append(start(r, 0))
            except (pickle.PicklingError, AttributeError, TypeError) as e:
                raise UserError(f"the model, data or registered parts given to distml cannot be "
                                f"sent to worker processes ({e}); define them at the top level "
                                "of a module, not inside a function or as a lambda") from None
        deadline = None
        while len(exits) < len(procs):
            multiprocessing.connection.wait([p.sentinel for i, p in enumerate(procs) if i not in exits],
                                            timeout=0.5)
            if view is not None:
                view.tick()
            hang = hangs.poll(store)
            if hang is not None:    # the ranks' own lines come later, when the op times out
                print(f"distml: hang: {hang} (stacks in {job.out_dir}/logs)", file=sys.stderr, flush=True)
            now = time.monotonic()
            for i, p in enumerate(list(procs)):
                if i in exits or p.exitcode is None:
                    continue
                r, incarnation = slots[i]
                reported = _read_error(store, r, incarnation)
                code = p.exitcode
                line = reported[1] if reported else _describe_exit(code)
                if code == EXIT_MAIN_REIMPORTED and reported is None:
                    code, line = EXIT_USER, UNGUARDED_MAIN
                exits[i] = WorkerExit(r, code, line, now)
                if code != 0 and not _is_peer_echo(line):
                    try:        # lets the survivors name the dead rank in their own errors
                        store.set(incarnation_key(_EXIT_KEY.format(rank=r), incarnation),
                                  _describe_exit(code) if reported is None else f"failed: {line}")
                    except Exception:
                        pass
                lost = survivable and _is_loss(exits[i])
                if code != 0 and deadline is None and not lost:
                    deadline = now + timeout_s + 5.0
                if lost and deadline is None and replaced < replacements:
                    replaced += 1
                    (say or _say)(f"distml: replacement {replaced}/{replacements}: rank {r}: "
                                  f"{line}; a new process joins the running group")
                    nxt = 1 + max(inc for rr, inc in slots if rr == r)
                    slots.append((r, nxt))
                    procs.append(start(r, nxt))
            if deadline is not None and now > deadline:
                _stop(procs)
                for i, p in enumerate(procs):
                    if i not in exits:
                        exits[i] = WorkerExit(slots[i][0], p.exitcode if p.exitcode is not None else -9,
                                              STOPPED_AFTER_PEER, time.monotonic())
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        _stop(procs)
        del store
        if view is not None:
            view.close()
    failed = sorted((e for e in exits.values() if e.code != 0), key=lambda e: (e.at, e.code != EXIT_USER))
    if survivable and failed and len(failed) < len(procs) and all(_is_loss(e) for e in failed):
        for e in failed:        # the survivors finished without them
            print(f"distml: worker lost: rank {e.rank}: {e.line}; the others continued",
                  file=sys.stderr, flush=True)
        return replaced
    if failed:
        below = [e for e in failed if BELOW_MIN_WORKERS in e.line or LOST_SERVER in e.line]
        raise LaunchFailed(below[0] if below else _first_cause(failed), failed, replaced)
    return replaced


def _replacement_job(job: WorkerJob, incarnation: int) -> WorkerJob:
    """The job of a process that replaces a lost worker: it joins the running group (no
    resume from a checkpoint), and an injected ``[faults] crash`` is for the original only."""
    faults = {k: v for k, v in (job.config.get("faults") or {}).items() if k != "crash"}
    return replace(job, config={**job.config, "faults": faults}, resume=False,
                   replacement=Replacement(incarnation=incarnation, started_at=time.time()))


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def launch_local_restarting(job: WorkerJob, world: int, timeout_s: float, max_restarts: int,
                            say=None, why_no_checkpoint: str | None = None) -> int:
    """:func:`launch_local`, restarting the whole group after a failure, up to ``max_restarts`` times.

    Every restart resumes from the run folder's latest committed checkpoint; without one
    (``train.checkpoint_every = 0``, a failure before the first checkpoint, or an
    algorithm that owns its loop and writes no mid-run checkpoints) it starts over from
    step 0, and the restart line says so. User errors (exit code 2: config, data, a
    corrupt checkpoint, divergence) are not restarted: they would fail the same way.

    Args:
        say: prints one line per restart (default: to stderr).
        why_no_checkpoint: why this run never has a checkpoint, for the restart line
            (e.g. ``"train.checkpoint_every = 0"``).

    Returns:
        the number of restarts it took.

    Raises:
        LaunchFailed: a user error, or a failure after ``max_restarts`` restarts.
    """
    say = say or _say
    ckpts = Checkpoints(Path(job.out_dir) / "checkpoints", rank=0)
    log: list[dict] = list(job.restart_log)
    replaced = 0        # with on_worker_loss = "continue", a replacement counts as a restart
    while True:
        try:
            replaced += launch_local(job, world, timeout_s, replacements=max_restarts - len(log) - replaced,
                                     say=say)
            return len(log) + replaced
        except LaunchFailed as e:
            replaced += e.replaced
            if e.user_error or len(log) + replaced >= max_restarts:
                raise
            step = ckpts.latest_step()
            where = (f"resuming from the checkpoint at step {step}" if step is not None else
                     f"{why_no_checkpoint or 'no checkpoint committed yet'}: starting over from step 0")
            log.append({"rank": e.first.rank, "cause": e.first.line, "resumed_from_step": step,
                        "at": time.time()})
            say(f"distml: restart {len(log)}/{max_restarts}: rank {e.first.rank}: {e.first.line}; {where}")
            job = replace(job, resume=step is not None, restarts=len(log), restart_log=list(log))


def _is_peer_echo(line: str) -> bool:
    """A rank that failed because a peer did (its line says so), not on its own; a rank the
    launcher stopped afterwards (a hung one) did not start the failure either."""
    return any(s in line for s in ("a peer died or did not answer", "could not join",
                                   "a server died or did not answer", "a worker died or stalled",
                                   STOPPED_AFTER_PEER))


def _is_loss(e: WorkerExit) -> bool:
    """A worker that died on its own (killed, crashed), which survivors may outlive; not a
    user error (which would fail everywhere) and not a survivor's own failure."""
    return e.code not in (0, EXIT_USER) and not _is_peer_echo(e.line) \
        and BELOW_MIN_WORKERS not in e.line and LOST_SERVER not in e.line


def _first_cause(failed: list[WorkerExit]) -> WorkerExit:
    """The failure that started it: a user error or a killed/crashed rank before a peer error."""
    own = [e for e in failed if not _is_peer_echo(e.line)]
    return (own or failed)[0]


def launch_script(script: str, args: list[str], world: int, timeout_s: float = 60.0) -> int:
    """``distml launch -n N script.py``: start N copies of a user script with env:// variables.

    The store is hosted here on 127.0.0.1 (torchrun's agent-store convention), so
    ``distml.init()`` or ``torch.distributed.init_process_group("gloo")`` in the script
    just connects.

    Returns:
        0 when every copy succeeded, else the first failing copy's exit code.
    """
    store, port = _host_store(timeout_s)
    procs: list[subprocess.Popen] = []
    try:
        for r in range(world):
            env = dict(os.environ, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(world),
                       LOCAL_WORLD_SIZE=str(world), MASTER_ADDR=LOOPBACK, MASTER_PORT=str(port),
                       TORCHELASTIC_USE_AGENT_STORE="True", TORCHELASTIC_RESTART_COUNT="0")
            _loopback_env(env)
            procs.append(subprocess.Popen([sys.executable, script, *args], env=env,
                                          preexec_fn=lambda pid=os.getpid(): die_with_launcher(pid)))
        first_bad, deadline = 0, None
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
            for p in procs:
                if p.poll() not in (None, 0) and deadline is None:
                    first_bad = p.returncode
                    deadline = time.monotonic() + timeout_s + 5.0
            if deadline is not None and time.monotonic() > deadline:
                break
        codes = [p.poll() for p in procs]
        bad = [c for c in codes if c not in (None, 0)]
        return first_bad or (bad[0] if bad else 0)
    except KeyboardInterrupt:
        return 130
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        del store


__all__ = ["LaunchFailed", "launch_local", "launch_local_restarting", "launch_script", "PeerError",
           "UserError"]
