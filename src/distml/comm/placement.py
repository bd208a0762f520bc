"""Where gloo's threads run: keep its TCP event loop off the CPU its own sender holds.

Why: on our 2-vCPU hosts 10–60 % of gloo collectives of any size took 2.5–3 ms instead of
0.3–0.6 ms (docs/benchmarks.md, "distml vs DDP"). ``perf sched`` showed the cause: gloo's
TCP event-loop thread (``gloo_tcp_loop``) handles a socket event only if it can *try*-lock
the pair; when it wakes on the CPU where a gloo work thread (``pt_gloo_runloop``) of the
same process holds that lock mid-send, it preempts the holder and spins on the same
level-triggered event until its time slice ends. Putting the two kinds of thread on
different CPUs removes the preemption; local rank ``r`` of ``L`` puts its event loop on
CPU ``r`` and its work threads on CPU ``r + 1`` (mod the CPUs it may use), so on two CPUs
each CPU carries one rank's loop and the other rank's sender. The compute (main) thread
is left where the OS puts it.

This is an operating-system placement of threads torch already made (like Horovod's
``HOROVOD_THREAD_AFFINITY``), it changes no result. It only helps when every local
rank can have a CPU of its own and the CPUs are not kept busy by other processes;
:func:`should_place` says when that holds (``[comm] place_threads = "auto"``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GLOO_LOOP_THREAD = "gloo_tcp_loop"
GLOO_WORK_THREAD = "pt_gloo_runloop"


@dataclass(frozen=True)
class Placement:
    """CPUs chosen for one process's gloo threads, and how many threads were moved."""

    loop_cpu: int
    work_cpu: int
    loop_threads: int
    work_threads: int


def threads_by_name(pid: str = "self") -> dict[str, list[int]]:
    """Thread ids of a process, grouped by their kernel name (``/proc/PID/task/*/comm``)."""
    out: dict[str, list[int]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except OSError:          # the thread ended meanwhile
            continue
        out.setdefault(name, []).append(int(tid))
    return out


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Decision:
    """Whether ``place_threads = "auto"`` places gloo's threads, and why (for the log)."""

    place: bool
    reason: str

    def __bool__(self) -> bool:
        return self.place


def should_place(local_world: int, cpus: list[int] | None = None, threads_per_rank: int = 1,
                 load: float | None = None) -> Decision:
    """What ``"auto"`` decides, from what this process can observe (not the CPU count):

    - the CPUs it may run on (``os.sched_getaffinity``: a ``taskset`` or cgroup limit
      counts, ``os.cpu_count()`` does not);
    - the ranks on this host and their compute threads: placement helps only when every
      rank can have a CPU of its own (``local_world × threads_per_rank ≤ CPUs``);
    - the other work on the host, the 1-minute load average less this host's ranks: a
      pinned thread cannot move to an idle CPU, so when other processes keep the CPUs
      busy (load above what our ranks leave spare, with half a CPU of slack) the pinned
      gloo threads would queue behind them and "auto" leaves them where the OS puts them.

    ``cpus`` and ``load`` are observed when None (tests pass them).
    """
    if not os.path.isdir("/proc/self/task") or not hasattr(os, "sched_setaffinity"):
        return Decision(False, "no per-thread CPU affinity here (not Linux)")
    cpus = usable_cpus() if cpus is None else cpus
    if len(cpus) < 2:
        return Decision(False, f"{len(cpus)} usable CPU: nowhere to put the threads apart")
    ours = local_world * threads_per_rank
    if ours > len(cpus):
        return Decision(False, f"{local_world} local ranks × {threads_per_rank} threads > "
                               f"{len(cpus)} usable CPUs: pinning would pile them up")
    load = os.getloadavg()[0] if load is None else load
    others = max(0.0, load - ours)
    spare = len(cpus) - ours
    if others > spare + 0.5:
        return Decision(False, f"load {load:.1f} on {len(cpus)} usable CPUs: other processes "
                               f"keep about {others:.1f} CPUs busy, {spare} spare")
    return Decision(True, f"{local_world} local ranks on {len(cpus)} usable CPUs, load {load:.1f}")


def place_gloo_threads(local_rank: int, cpus: list[int] | None = None) -> Placement:
    """Pin this process's gloo event-loop and work threads to two different CPUs.

    Call it once gloo has made its threads (after the process group's first collective).
    Threads that end meanwhile are skipped.
    """
    cpus = usable_cpus() if cpus is None else cpus
    loop_cpu = cpus[local_rank % len(cpus)]
    work_cpu = cpus[(local_rank + 1) % len(cpus)]
    threads = threads_by_name()
    moved = {GLOO_LOOP_THREAD: 0, GLOO_WORK_THREAD: 0}
    for name, cpu in ((GLOO_LOOP_THREAD, loop_cpu), (GLOO_WORK_THREAD, work_cpu)):
        for tid in threads.get(name, []):
            try:
                os.sched_setaffinity(tid, {cpu})
                moved[name] += 1
            except (ProcessLookupError, PermissionError, OSError):
                continue
    return Placement(loop_cpu, work_cpu, moved[GLOO_LOOP_THREAD], moved[GLOO_WORK_THREAD])


def unplace_gloo_threads(cpus: list[int] | None = None) -> int:
    """Undo :func:`place_gloo_threads`: let gloo's threads run on every usable CPU again
    (benchmarks that compare placed and unplaced runs in one process). Returns how many
    threads were reset."""
    allowed = set(usable_cpus() if cpus is None else cpus)
    threads = threads_by_name()
    reset = 0
    for tid in threads.get(GLOO_LOOP_THREAD, []) + threads.get(GLOO_WORK_THREAD, []):
        try:
            os.sched_setaffinity(tid, allowed)
            reset += 1
        except (ProcessLookupError, PermissionError, OSError):
            continue
    return reset
