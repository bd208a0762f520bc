"""One worker process: join the world, build, train, write results, leave cleanly.

The same entry point runs under the local launcher (which hands it a store on
127.0.0.1) and under ``torchrun`` (which hands it the ``env://`` variables).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from distml.comm.transport import Transport
from distml.config import RunConfig, parse_config
from distml.errors import CheckpointError, PeerError, UserError
from distml.runtime.build import UserParts, build_parts, restore_registrations
from distml.runtime.checkpoint import Checkpoints, agree_on_resume, save_torch_atomic
from distml.runtime.devices import resolve_device
from distml.runtime.elastic import Replacement, Survivors, await_seat
from distml.runtime.faults import arm_crash
from distml.runtime.hang import HangWatch
from distml.runtime.loop import TrainLoop
from distml.runtime.metrics import summarize, write_json_atomic
from distml.runtime.rundir import rank_log_path

log = logging.getLogger("distml")

EXIT_USER = 2
EXIT_INTERNAL = 1


@dataclass
class WorkerJob:
    """What every worker receives (picklable: no process groups, no open files)."""

    config: dict[str, Any]
    out_dir: str
    resume: bool = False
    stop_after: int | None = None
    user: UserParts | None = None
    registrations: list = field(default_factory=list)   # user entries from distml.register
    # restarts so far: the local launcher's count (restart_log: what it restarted from), or
    # this torchrun agent's TORCHELASTIC_RESTART_COUNT
    restarts: int = 0
    restart_log: list = field(default_factory=list)
    # torchrun: after a restart, continue from rank 0's committed checkpoint if there is one
    elastic: bool = False
    # [faults] on_worker_loss = "continue" with --max-restarts: replacements may join
    admit_replacements: bool = False
    # this process replaces a lost worker and joins the running group (runtime/elastic.py)
    replacement: Replacement | None = None


@dataclass
class Rendezvous:
    """Where the world meets: a store on ``host:port`` hosted by the launcher, or env://."""

    host: str | None = None
    port: int | None = None
    local_world_size: int | None = None    # ranks on this host; None: all of them

    def local_world(self, world: int) -> int:
        return self.local_world_size or world

    def store(self, timeout_s: float):
        if self.host is None:
            return None
        return Transport.store_client(self.host, self.port, timeout_s)


def choose_device(config: RunConfig, local_rank: int, local_world: int = 1) -> tuple[torch.device, str]:
    """The rank's device and the matching backend (NCCL when CUDA is there, else gloo).

    NCCL refuses two ranks of one communicator on one GPU ("invalid usage"), so more
    local ranks than GPUs on the NCCL backend is a config error, said before joining.
    """
    kind, backend = resolve_device(config.train.device, config.comm.backend, local_world)
    device = torch.device("cuda", local_rank % torch.cuda.device_count()) if kind == "cuda" \
        else torch.device("cpu")
    return device, backend


def _setup_logging(out_dir: Path, rank: int) -> None:
    path = rank_log_path(out_dir, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s rank" + str(rank) + " %(levelname)s %(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def train_worker(rank: int, world: int, local_rank: int, rendezvous: Rendezvous, job: WorkerJob) -> None:
    """Train as rank ``rank``; raises UserError / PeerError / anything else on failure."""
    restore_registrations(job.registrations)
    config = parse_config(job.config)
    out_dir = Path(job.out_dir)
    _setup_logging(out_dir, rank)
    torch.set_num_threads(config.train.threads_per_worker)
    device, backend = choose_device(config, local_rank, rendezvous.local_world(world))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    log.info("starting: pid %d, world %d, backend %s, device %s", os.getpid(), world, backend, device)
    # build before joining: a data or config error then fails fast on every rank
    parts = build_parts(config, rank, world, device, job.user)
    store, seat = rendezvous.store(config.comm.timeout_s), None
    if job.replacement is not None:     # ask the running group for a seat (runtime/elastic.py)
        seat = await_seat(store, rank, job.replacement, wait_s=10 * config.comm.timeout_s)
        if seat is None:
            log.info("the run finished before this replacement could join")
            return
    transport = Transport.connect(store, seat["rank"] if seat else rank,
                                  seat["world"] if seat else world,
                                  backend=backend, timeout_s=config.comm.timeout_s,
                                  latency_ms=config.comm.latency_ms,
                                  device_id=device if device.type == "cuda" else None,
                                  prefix=seat["prefix"] if seat else None)
    if config.comm.place_threads == "auto" and seat is None:
        placed = transport.place_threads(local_rank, rendezvous.local_world(world),
                                         threads_per_rank=config.train.threads_per_worker)
        if placed is not None:
            log.info("gloo threads placed: %s", placed)
    if seat is None:    # [faults] crash: tests of failure detection (the original process only)
        arm_crash(config.faults, rank)
    # reports who waits for whom when an operation nears comm.timeout_s (runtime/hang.py)
    watch = HangWatch(transport.oplog, rank, config.comm.timeout_s, rank_log_path(out_dir, rank),
                      rendezvous.store(config.comm.timeout_s)).start()
    try:
        train_joined(rank, config, parts, transport, job, device, backend, seat)
        del parts
        gc.collect()
        transport.close()
    except BaseException:
        Transport.abort()
        raise
    finally:
        watch.stop()


def train_joined(rank: int, config: RunConfig, parts, transport: Transport, job: WorkerJob,
                 device: torch.device, backend: str, seat: dict | None = None) -> None:
    """Train ``parts`` as ``rank`` of the world ``transport`` has joined, and write the results.

    Everything a worker does between joining and leaving: resume agreement, the
    algorithm's setup, the loop, the summary and ``model.pt`` (rank 0). The world stays
    joined afterwards, so a caller may train another config in it (the compatibility
    matrix test does) before it closes the transport. ``seat``: a replacement's place in
    the running group (``rank`` is then its launch rank).
    """
    out_dir = Path(job.out_dir)
    resume, restarts, resume_step = job.resume, job.restarts, None
    if job.resume or job.elastic:   # before any other collective: every rank takes part
        resume_step, restarts = agree_on_resume(
            transport, Checkpoints(out_dir / "checkpoints", rank), job.restarts)
        resume = job.resume or (restarts > 0 and resume_step is not None)
        if job.resume and resume_step is None:
            raise CheckpointError(f"--resume: rank 0 found no committed checkpoint in "
                                  f"{out_dir}/checkpoints")
    # a replacement sets its algorithm up alone (the group is mid-run, it makes no setup
    # collectives), then takes the lead's state and regroups like a survivor
    parts.algorithm.setup(parts.model, parts.optimizer,
                          transport if seat is None else Transport(0, 1, config.comm.timeout_s))
    torch.manual_seed(config.seed * 100003 + rank)    # dropout etc. differ across ranks
    loop = TrainLoop(config, parts, transport, out_dir, device, launch_rank=rank)
    if resume:
        loop.checkpoints.pin(resume_step)
        log.info("resuming from rank 0's checkpoint at step %d (restarts so far: %d)",
                 resume_step, restarts)
    loop.resume_requested, loop.stop_after = resume, job.stop_after
    if config.faults.on_worker_loss == "continue":
        loop.survivors = Survivors(transport.store, rank, len(seat["incarnations"]) if seat
                                   else transport.world_size, config.faults.min_workers,
                                   servers=transport.world_size - config.workers,
                                   admit=job.admit_replacements,
                                   join_wait_s=config.faults.join_wait_s)
        if seat is not None:
            loop.survivors.take_seat(loop, seat, job.replacement)
    if parts.algorithm.owns_loop:
        result = parts.algorithm.run(loop)
    else:
        result = loop.run(resume=resume, stop_after=job.stop_after)
    # after a worker loss the survivors train in a new group, with new ranks (otherwise
    # loop.transport may be a narrowed subgroup, e.g. the parameter server's workers, and
    # the summary below gathers over every process)
    if loop.survivors is not None:
        loop.survivors.finish(loop)
    if loop.regrouped:     # the survivors' world (servers included), not the workers' group
        transport = loop.transport.parent or loop.transport
        rank = transport.rank
    totals = {"rank": rank, "steps": result.steps, "steps_this_run": result.steps_this_run,
              "wall_seconds_this_run": result.wall_seconds - loop.wall_before,   # after --resume
              "train_loss": result.train_loss,
              "compute_seconds": result.clock.compute, "comm_seconds": result.clock.comm,
              "wait_seconds": result.clock.wait,
              "bytes_sent": transport.stats.bytes_sent,
              "bytes_received": transport.stats.bytes_received,
              "messages": transport.stats.messages,
              "ops": transport.stats.snapshot()["ops"]}
    totals.update(parts.algorithm.rank_metrics())   # e.g. role, staleness, server counters (ps)
    if loop.survivors is not None:
        totals["elastic"] = loop.survivors.rank_record(parts.model)
    # ranks that finished first (servers, asynchronous workers) outwait rank 0's final evaluation
    transport.barrier(timeout_s=transport.eval_wait_s)
    all_ranks = transport.all_gather_json(totals)
    # servers (ps) are not workers: totals and means are over workers (docs/design.md §5)
    per_rank = [r for r in all_ranks if r.get("role", "worker") == "worker"]
    if rank == 0 and result.completed:
        summary = summarize(per_rank, result.final_eval, algorithm=config.algorithm.name,
                            workers=len(per_rank), wall_seconds=result.wall_seconds,
                            time_to_target=result.time_to_target,
                            extra={"name": config.name, "backend": backend,
                                   "device": str(device), "target_accuracy":
                                   config.train.target_accuracy, "completed": True,
                                   "restarts": restarts, "restart_log": job.restart_log,
                                   "algorithm_metrics": loop.algorithm_metrics,
                                   "workers_at_start": config.workers,
                                   "membership": loop.survivors.summary(
                                       [r.get("elastic") for r in all_ranks])
                                   if loop.survivors is not None else [],
                                   **parts.algorithm.summary_extra(all_ranks)})
        save_torch_atomic(out_dir / "model.pt", parts.algorithm.eval_model().state_dict())
        write_json_atomic(out_dir / "summary.json", summary)
        (out_dir / "stopped.json").unlink(missing_ok=True)     # an earlier --stop-after's marker
    elif rank == 0:
        write_json_atomic(out_dir / "stopped.json", {"step": result.steps, "completed": False})
    log.info("finished at step %d", result.steps)
    parts.algorithm.close()


def run_worker_process(rank: int, world: int, local_rank: int, rendezvous: Rendezvous,
                       job: WorkerJob, report=None, dead_peers=None) -> int:
    """Run a worker and turn its outcome into an exit code and one line.

    ``report(rank, code, line)`` lets the local launcher collect the line (through the
    store) instead of every rank printing it; ``dead_peers()`` names the peers the
    launcher saw die, so a rank that lost a peer says which one.
    """
    code, line = 0, ""
    try:
        train_worker(rank, world, local_rank, rendezvous, job)
    except UserError as e:
        code, line = EXIT_USER, str(e)
    except PeerError as e:
        code, line = EXIT_INTERNAL, str(e)
        dead = dead_peers() if dead_peers is not None else ""
        if dead:
            line = f"{line}; dead peer: {dead}"
    except KeyboardInterrupt:
        code, line = 130, "interrupted"
    except Exception as e:  # an internal failure: the log gets the traceback
        code, line = EXIT_INTERNAL, f"rank {rank}: internal error: {type(e).__name__}: {e}"
        log.error("internal error\n%s", traceback.format_exc())
    if code:
        log.error("%s", line)
        if report is not None:
            report(rank, code, line)
        else:
            print(f"distml: error: rank {rank}: {line}", file=sys.stderr)
    return code


def torchrun_main(job: WorkerJob) -> int:
    """Entry point when started by ``torchrun`` (RANK/WORLD_SIZE/LOCAL_RANK in the env)."""
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    restarts = int(os.environ.setdefault("TORCHELASTIC_RESTART_COUNT", "0"))
    if rank == 0:
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(job.out_dir) / "config.json", job.config)
    else:
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
    # torchrun --max-restarts N restarts every worker with the same arguments: continue
    # from rank 0's committed checkpoint (train.checkpoint_every) instead of from scratch
    job = replace(job, restarts=restarts, elastic=True)
    if parse_config(job.config).faults.on_worker_loss == "continue":
        print("distml: error: faults.on_worker_loss = 'continue' needs the local launcher "
              "(`distml run` without torchrun): torchrun's agent stops every worker of the "
              "group when one fails; use 'stop' or 'restart' under torchrun", file=sys.stderr)
        return EXIT_USER
    if restarts and local_rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        # restarted workers then find the previous attempt's keys in the agent's store and
        # may fail to join (pytorch issue #135712)
        print("distml: warning: torchrun restarted the workers on its shared rendezvous store; "
              "if they cannot rejoin, run torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1",
              file=sys.stderr)
    return run_worker_process(rank, world, local_rank, Rendezvous(local_world_size=local_world), job)


def read_summary(out_dir: Path) -> dict[str, Any] | None:
    path = Path(out_dir) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None
