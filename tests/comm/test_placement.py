"""gloo thread placement: threads found by their kernel name, pinned to two different CPUs."""

import ctypes
import os
import threading

import pytest

from distml.comm.placement import (GLOO_LOOP_THREAD, GLOO_WORK_THREAD, place_gloo_threads,
                                   should_place, threads_by_name, unplace_gloo_threads)

pytestmark = pytest.mark.timeout(30)
PR_SET_NAME = 15


def _named_thread(name: str, ready: threading.Event, stop: threading.Event, tids: list):
    def body():
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode(), 0, 0, 0)   # the kernel's thread name
        tids.append(threading.get_native_id())
        ready.set()
        stop.wait(20)
    return threading.Thread(target=body, daemon=True)


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and 2 CPUs")
def test_loop_and_work_threads_go_to_different_cpus():
    stop, made = threading.Event(), []
    for name in (GLOO_LOOP_THREAD, GLOO_WORK_THREAD, GLOO_WORK_THREAD):
        ready, tids = threading.Event(), []
        t = _named_thread(name, ready, stop, tids)
        t.start()
        ready.wait(5)
        made.append((name, tids[0]))
    try:
        assert sorted(threads_by_name()[GLOO_WORK_THREAD]) == sorted(t for n, t in made if n == GLOO_WORK_THREAD)
        cpus = sorted(os.sched_getaffinity(0))[:2]
        for local_rank in (0, 1):
            placed = place_gloo_threads(local_rank, cpus)
            assert (placed.loop_threads, placed.work_threads) == (1, 2)
            assert placed.loop_cpu == cpus[local_rank] and placed.work_cpu == cpus[1 - local_rank]
            for name, tid in made:
                want = placed.loop_cpu if name == GLOO_LOOP_THREAD else placed.work_cpu
                assert os.sched_getaffinity(tid) == {want}
        assert os.sched_getaffinity(0) != {cpus[0]}     # the calling (compute) thread is untouched
        assert unplace_gloo_threads() == 3
        assert all(os.sched_getaffinity(tid) == os.sched_getaffinity(0) for _, tid in made)
    finally:
        stop.set()


def test_placement_only_when_every_local_rank_can_have_a_cpu():
    assert should_place(2, [0, 1], load=0.0)
    assert not should_place(3, [0, 1], load=0.0)       # more ranks than CPUs: pinning would pile them up
    assert not should_place(1, [0], load=0.0)          # one CPU: nowhere to put them apart
    assert not should_place(2, [0, 1], threads_per_rank=2, load=0.0)   # compute threads fill them


def test_auto_decides_from_the_allowed_cpus_and_the_load_not_the_cpu_count():
    # 2 ranks allowed 4 of the host's CPUs: our own load leaves 2 spare
    assert should_place(2, [4, 5, 6, 7], load=3.5)
    # the same host kept busy by other processes: pinned threads could not escape them
    busy = should_place(2, [4, 5, 6, 7], load=6.0)
    assert not busy and "load 6.0" in busy.reason
    # two CPUs, two ranks: no spare CPU, so any other work turns placement off
    assert should_place(2, [0, 1], load=2.3)
    assert not should_place(2, [0, 1], load=7.0)
    # observed: this process's affinity, not os.cpu_count()
    ok = should_place(1, load=0.0)
    assert bool(ok) == (len(os.sched_getaffinity(0)) >= 2)
