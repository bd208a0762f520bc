"""Hogwild!: lock-free (or locked) parallel SGD on one model in shared memory.

Niu, Recht, Ré & Wright 2011, "Hogwild!: A Lock-Free Approach to Parallelizing
Stochastic Gradient Descent" (NIPS); the PyTorch ``mnist_hogwild`` example. The model's
tensors are moved to shared memory (``share_memory()``); N processes read it, compute
gradients on their own shard of the data (online or offline) and write their updates
into it concurrently. ``lock = true`` puts every update (the optimizer step, i.e. the
write) under one inter-process lock; the time spent acquiring it is the lock's cost,
reported as wait time and as ``lock_wait_seconds``.

Process design: shared memory means one host, so the launcher starts a single process
(``launch_size`` returns 1; the runtime's world has one rank) and :meth:`Hogwild.run`
forks ``workers`` training processes with torch.multiprocessing. The parent paces them
by epochs (a "go" token per epoch, a report back), evaluates between epochs (the
children are idle then), and terminates them on every exit path; children also exit if
the parent disappears. Liveness is a heartbeat, not a deadline: every child stamps its
slot of a shared array after every batch (and every second while idle); the parent
fails the run when a child dies or its stamp is older than ``comm.timeout_s`` (a stuck
worker), so an epoch may take any time. Each run writes ``hogwild.json``: throughput, final loss, lock
wait.
"""

from __future__ import annotations

import json
import os
import queue
import time
import traceback
from typing import Any

import torch
import torch.multiprocessing as mp

from distml.algorithms.base import Algorithm, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.errors import ConfigError, PeerError
from distml.optim import build_optimizer, is_full_batch, needs_closure
from distml.partition import PARTITIONS, make_loader
from distml.partition.steps import total_steps
from distml.registry import split_spec


@ALGORITHMS.register("hogwild", topology="shared memory (one host)", pace="none",
                     paper="Niu et al. 2011 (Hogwild!); PyTorch mnist_hogwild example",
                     summary="N processes update one shared-memory model without (or with) a lock")
class Hogwild(Algorithm):
    """Shared-memory parallel SGD.

    Args:
        lock: apply each update under an inter-process lock (False: lock-free Hogwild!).
    """

    owns_loop = True
    mid_run_checkpoints = False     # run_steps: a restart starts over from step 0
    synchronous_eval = False

    buffers = "shared"
    supports = Supports(wrap=False, precisions=("fp32",))

    def __init__(self, lock: bool = False):
        if not isinstance(lock, bool):
            raise ConfigError(f"hogwild: lock must be true or false, got {lock!r}")
        self.lock = lock

    def launch_size(self, workers: int) -> int:
        return 1                             # the one process forks the workers itself

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "Hogwild", "lock": self.lock,
                "processes": "1 launched; it forks `workers` sharing the model"}

    def check_config(self, config) -> None:
        """Refuse full-batch / closure optimizers and schedules (before any process starts)."""
        name = split_spec(config.optim.spec(), "optimizer")[0]
        if needs_closure(name) or is_full_batch(name):
            raise ConfigError(f"hogwild needs a stochastic optimizer (sgd, momentum, adam, ...), "
                              f"got {name!r}")
        if split_spec(config.optim.schedule, "schedule")[0] != "constant":
            raise ConfigError("hogwild: optim.schedule is not supported (workers step independently)")

    def run(self, loop):
        p, cfg = loop.parts, loop.config
        self.check_config(cfg)
        n = cfg.workers
        model = p.model
        model.share_memory()
        ctx = mp.get_context("fork")         # children inherit the model, data and loaders
        lock = ctx.Lock() if self.lock else None
        reports = ctx.Queue()
        gos = [ctx.Queue() for _ in range(n)]
        loaders = [make_loader(p.source, PARTITIONS.build(cfg.data.partition), c, n,
                               cfg.data.batch_size, cfg.seed,
                               samples_per_epoch=cfg.data.samples_per_epoch) for c in range(n)]
        epochs = total_steps(cfg.train.epochs, 1, cfg.train.max_steps)   # one step = one epoch
        args = (model, p.loss_fn, cfg.optim.spec(), lock, reports, os.getpid(),
                cfg.train.threads_per_worker, loop.dtype, cfg.seed)
        beats = torch.full((n,), time.monotonic(), dtype=torch.float64).share_memory_()
        procs = [ctx.Process(target=_child, args=(c, loaders[c], gos[c], beats, *args), daemon=True)
                 for c in range(n)]
        timeout = cfg.comm.timeout_s

        def check_alive(e: int) -> None:
            dead = [c for c, pr in enumerate(procs) if not pr.is_alive()]
            if dead:
                raise PeerError(f"hogwild: worker {dead[0]} died in epoch {e} "
                                f"(exit code {procs[dead[0]].exitcode})")
            now = time.monotonic()
            silent = [c for c in range(n) if now - float(beats[c]) > timeout]
            if silent:
                raise PeerError(f"hogwild: worker {silent[0]} is stuck in epoch {e}: no heartbeat "
                                f"for {now - float(beats[silent[0]]):.0f} s (comm.timeout_s = "
                                f"{timeout:g})")
        self.totals = {"samples": 0, "seconds": 0.0, "lock_wait_seconds": 0.0}

        def epoch(e: int) -> dict[str, float]:
            t0 = time.perf_counter()
            for q in gos:
                q.put(e)
            got = []
            while len(got) < n:
                try:
                    msg = reports.get(timeout=1.0)
                except queue.Empty:
                    check_alive(e)
                    continue
                if msg[0] == "error":
                    raise PeerError(f"hogwild: worker {msg[1]} failed: {msg[2]}")
                got.append(msg)
            dt = time.perf_counter() - t0
            samples = sum(m[3] for m in got)
            wait = sum(m[4] for m in got)
            self.totals["samples"] += samples
            self.totals["seconds"] += dt
            self.totals["lock_wait_seconds"] += wait
            loop.transport.stats.wait_seconds += wait / n      # per-worker mean, like every clock
            return {"loss": sum(m[2] for m in got) / max(samples, 1),
                    "samples_per_second": samples / dt, "lock_wait_seconds": wait / n}

        try:
            for pr in procs:
                pr.start()
            result = loop.run_steps(epoch, epochs, steps_per_epoch=1)
        finally:
            for q in gos:
                q.put(None)
            for pr in procs:
                pr.join(timeout=5)
                if pr.is_alive():
                    pr.kill()
                    pr.join()
        final = self._final_loss(loop)
        t = self.totals
        (loop.out_dir / "hogwild.json").write_text(json.dumps({
            "workers": n, "lock": self.lock, "epochs": result.steps, "samples": t["samples"],
            "train_seconds": t["seconds"],
            "samples_per_second": t["samples"] / t["seconds"] if t["seconds"] else None,
            "lock_wait_seconds": t["lock_wait_seconds"] / n, "final_loss": final}))
        return result

    @torch.no_grad()
    def _final_loss(self, loop) -> float:
        """The loss of the final model on the training set (offline) or the test set (online).

        In eval mode: a forward in train mode would move BatchNorm's running statistics
        after the final evaluation, and ``model.pt`` would no longer be the evaluated model.
        """
        p = loop.parts
        data = p.source.test() if p.source.online else p.source.train()
        total, count = 0.0, 0
        was_training = p.model.training
        p.model.eval()
        try:
            for start in range(0, len(data), 4096):
                x, y = data.take(torch.arange(start, min(start + 4096, len(data))).numpy())
                x, y = loop.to_device(x), loop.to_device(y)
                total += float(p.loss_fn(p.model(x), y)) * len(y)
                count += len(y)
        finally:
            p.model.train(was_training)
        return total / count


def _child(c: int, loader, go, beats: torch.Tensor, model, loss_fn, optim_spec, lock, reports,
           parent: int, threads: int, dtype, seed: int) -> None:
    """One Hogwild worker: for every "go" token, one epoch of its shard, then a report;
    ``beats[c]`` is stamped after every batch and every second while idle."""
    try:
        torch.set_num_threads(threads)
        torch.manual_seed(seed * 100003 + c)
        opt = build_optimizer(optim_spec, model.parameters())
        while True:
            beats[c] = time.monotonic()
            try:
                e = go.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:   # the parent is gone: do not outlive it
                    return
                continue
            if e is None:
                return
            loss_sum, samples, wait = 0.0, 0, 0.0
            for x, y in loader.batches(e):
                x = x.to(dtype) if x.is_floating_point() else x
                y = y.to(dtype) if y.is_floating_point() else y
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(x), y)
                loss.backward()
                if lock is not None:
                    t0 = time.perf_counter()
                    with lock:
                        wait += time.perf_counter() - t0
                        opt.step()
                else:
                    opt.step()
                loss_sum += float(loss.detach()) * len(y)
                samples += len(y)
                beats[c] = time.monotonic()
            reports.put(("ok", c, loss_sum, samples, wait))
    except Exception as e:  # report, so the parent fails fast with the cause
        reports.put(("error", c, f"{type(e).__name__}: {e}\n{traceback.format_exc()[-2000:]}"))
