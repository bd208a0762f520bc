"""The worker loop: forward, backward and optimizer step, with the algorithm's hooks.

The loop calls the hooks of :class:`~distml.algorithms.base.Algorithm` explicitly
(no patching of optimizers), measures each step's compute / communication / wait time,
evaluates on rank 0 (evaluation time is excluded from the wall clock, docs/design.md §5),
and writes checkpoints that resume bit-for-bit.
"""

from __future__ import annotations

import contextlib
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from distml.config import RunConfig
from distml.errors import PeerError, UserError
from distml.partition.steps import batches
from distml.runtime.build import Parts, shard_loader
from distml.runtime.checkpoint import Checkpoints
from distml.runtime.elastic import GroupGrew
from distml.runtime.evaluate import evaluate
from distml.runtime.faults import make_faults
from distml.runtime.metrics import RunLog, StepClock

log = logging.getLogger("distml")


class DivergenceError(UserError):
    """The loss or the gradients stopped being finite."""


@dataclass
class LoopResult:
    steps: int                 # total steps done (resumed runs included)
    steps_this_run: int
    wall_seconds: float
    time_to_target: float | None
    final_eval: dict[str, Any]
    train_loss: float | None
    clock: StepClock
    completed: bool


class TrainLoop:
    """One worker's training run.

    Args:
        config: the run's config.
        parts: what :func:`~distml.runtime.build.build_parts` built for this rank.
        transport: this rank's transport.
        out_dir: the run folder (``runs/<name>``).
        device: where batches go.
        launch_rank: the rank the launcher started this process as (its files and injected
            faults); differs from ``transport.rank`` for a replacement (runtime/elastic.py).
    """

    def __init__(self, config: RunConfig, parts: Parts, transport, out_dir: Path,
                 device: torch.device | str = "cpu", launch_rank: int | None = None):
        self.config = config
        self.parts = parts
        self.transport = transport
        self.rank = transport.rank
        self.launch_rank = transport.rank if launch_rank is None else launch_rank
        self.out_dir = Path(out_dir)
        self.device = device
        self.dtype = getattr(torch, config.train.dtype)
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", transport.rank)
        self.clock = StepClock(transport.stats)
        self.classification = parts.source.info.task == "classification"
        self.test_data = parts.source.test() if self.rank == 0 else None
        self.start_step = 0
        self.wall_before = 0.0           # wall seconds of earlier (resumed) runs
        self.time_to_target: float | None = None
        self.last_eval: dict[str, Any] = {}
        # what the worker entry asked for, so an ``owns_loop`` algorithm can call run() with it
        self.resume_requested: bool = False
        self.stop_after: int | None = None
        # injected stragglers / delays (runtime/faults.py); None without a [faults] section
        self.faults = make_faults(config.faults, self.launch_rank, config.seed, transport.stats)
        self.algorithm_metrics: dict[str, Any] = {}   # the last Algorithm.at_eval() figures
        # [faults] on_worker_loss = "continue": regroups after a worker loss (runtime/elastic.py)
        self.survivors = None
        self._applied = False        # the step in flight applied its optimizer step
        # fp16 autocast: the loss is scaled so small gradients survive float16
        self.scaler = torch.amp.GradScaler(torch.device(device).type) \
            if config.train.precision == "fp16" else None

    # ---- checkpoints ------------------------------------------------------------------
    def _state(self, next_step: int, wall: float, loss_window: list[float]) -> dict[str, Any]:
        p = self.parts
        return {"step": next_step, "model": p.model.state_dict(),
                "optimizer": p.optimizer.state_dict(), "schedule": p.schedule.state_dict(),
                "algorithm": p.algorithm.state_dict(), "rng": torch.get_rng_state(),
                "clock": self.clock.state_dict(), "stats": self.transport.stats.snapshot(),
                "wall": wall, "time_to_target": self.time_to_target, "loss_window": loss_window,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def save_checkpoint(self, next_step: int, wall: float, loss_window: list[float]) -> None:
        self.check_finite_model(next_step)
        self.checkpoints.write(next_step, self._state(next_step, wall, loss_window))
        self.transport.barrier()     # every rank wrote before the marker moves
        if self.rank == 0:
            self.checkpoints.commit(next_step, self.transport.world_size)

    def check_finite_model(self, done: int) -> None:
        """Refuse to keep a model that stopped being finite.

        The loss is checked every step; a finite loss with non-finite gradients (or an
        update that overflows) poisons the parameters, which the next step's loss shows.
        A checkpoint or the final model written in between would keep the poison, so the
        parameters are checked here, once per checkpoint, instead of the gradients every
        step (a pass over all gradients costs several percent of a small model's step).

        Raises:
            DivergenceError: a floating-point parameter holds inf or nan.
        """
        for name, t in self.parts.model.named_parameters():   # not buffers: a mask may hold -inf
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise DivergenceError(
                    f"parameter '{name}' is not finite after step {done - 1} on rank {self.rank}; "
                    "lower optim.lr (not saved: the last good checkpoint is kept)")

    def transfer_state(self) -> dict[str, Any]:
        """What a peer needs to take over this rank's training: model, optimizer, schedule
        and algorithm state (not the rank's own RNG, clocks or counters)."""
        p = self.parts
        return {"model": p.model.state_dict(), "optimizer": p.optimizer.state_dict(),
                "schedule": p.schedule.state_dict(), "algorithm": p.algorithm.transfer_state()}

    def load_transfer_state(self, state: dict[str, Any]) -> None:
        """Load :meth:`transfer_state` (from a checkpoint or a peer)."""
        p = self.parts
        p.model.load_state_dict(state["model"])
        p.optimizer.load_state_dict(state["optimizer"])
        p.schedule.load_state_dict(state["schedule"])
        p.algorithm.load_state_dict(state["algorithm"])

    def regroup(self, transport) -> None:
        """Continue as ``transport.rank`` of the survivors' new group (runtime/elastic.py):
        this rank's shard of the data among them, the algorithm adapted, and rank 0's
        duties (evaluation, the summary) wherever rank 0 now is."""
        p = self.parts
        self.transport, self.rank = transport, transport.rank
        self.checkpoints = Checkpoints(self.out_dir / "checkpoints", transport.rank)
        if self.rank == 0 and self.test_data is None:
            self.test_data = p.source.test()
        p.loader = shard_loader(self.config, p.source, transport.rank, transport.world_size)
        p.algorithm.regroup(transport)

    @property
    def regrouped(self) -> bool:
        """A worker was lost and the survivors went on: mid-run checkpoints stop (a resume
        would restart the original number of workers from the smaller group's files)."""
        return self.survivors is not None and self.survivors.generation > 0

    def resume(self) -> list[float]:
        """Restore the latest committed checkpoint, if any; returns the loss window."""
        step = self.checkpoints.latest_step()
        if step is None:
            return []
        state = self.checkpoints.load(step)
        self.load_transfer_state(state)
        torch.set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.clock.load_state_dict(state["clock"])
        self.transport.stats.load_snapshot(state["stats"])
        self.start_step = int(state["step"])
        self.wall_before = float(state["wall"])
        self.time_to_target = state["time_to_target"]
        log.info("resumed from step %d", self.start_step)
        return list(state["loss_window"])

    # ---- evaluation -------------------------------------------------------------------
    def evaluate(self, step: int, wall: float, sink: RunLog | None) -> dict[str, Any]:
        """Rank 0 evaluates the algorithm's model; the others wait (time not counted)."""
        result: dict[str, Any] = {}
        # every rank, same point: the algorithm may communicate (gather an ensemble, ...)
        extra = self.parts.algorithm.at_eval(step)
        if self.rank == 0:
            self.algorithm_metrics = extra
            result = evaluate(self.parts.algorithm.eval_model(), self.test_data, self.parts.loss_fn,
                              self.config.data.test_batch_size, self.device, self.classification,
                              dtype=self.dtype)
            slow = self.config.faults.slow_eval
            if slow is not None:         # injected: the others must outwait it (faults.py)
                time.sleep(slow.seconds)
            result.update(step=step, epoch=step / self.parts.steps_per_epoch, wall_seconds=wall,
                          bytes_sent_rank0=self.transport.stats.bytes_sent, **extra)
            target = self.config.train.target_accuracy
            acc = result.get("test_accuracy")
            if (self.time_to_target is None and target is not None and acc is not None
                    and acc >= target):
                self.time_to_target = wall
            if sink is not None:
                sink.record("eval", result)
        if self.parts.algorithm.synchronous_eval:
            # the barrier's time is evaluation time, excluded from every clock
            saved = self.transport.stats.wait_seconds
            self.transport.barrier(timeout_s=self.transport.eval_wait_s)
            self.transport.stats.wait_seconds = saved
        self.last_eval = result
        return result

    # ---- the loop -----------------------------------------------------------------------
    def _one_step(self, micro: list[tuple[torch.Tensor, torch.Tensor]], step: int) -> float:
        """One optimizer step over ``micro``, its ``accumulate_steps`` batches; the mean loss.

        Each batch's forward and loss run under ``[train] precision``'s autocast; its loss,
        divided by the number of batches, is backpropagated (scaled for fp16), inside the
        algorithm's ``no_sync()`` for every batch but the last, so the algorithm communicates
        once per step. ``clip_grad_norm`` then acts on the gradient the optimizer steps with:
        after ``after_backward`` (for sync_sgd the average) and after the unscaling.
        """
        p = self.parts
        model, algo, opt = p.model, p.algorithm, p.optimizer
        if p.needs_closure:       # (one batch, fp32, no clipping: build.py refuses the rest)
            return self._closure_step(*micro[0], step)
        opt.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i, (x, y) in enumerate(micro):
            with algo.no_sync() if i < len(micro) - 1 else contextlib.nullcontext():
                with self._autocast():
                    loss = p.loss_fn(model(x), y)
                extra = algo.loss_terms(model)
                if extra is not None:
                    loss = loss + extra
                scaled = loss / len(micro) if len(micro) > 1 else loss
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
            loss_sum += float(loss.detach())
        algo.after_backward(step)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.config.train.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), self.config.train.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(opt)      # skipped when the unscaled gradient is not finite
            self.scaler.update()
        else:
            opt.step()
        p.schedule.step()
        self._applied = True         # a failure from here on leaves the local update made
        algo.after_step(step)
        return loss_sum / len(micro)

    def _closure_step(self, x, y, step: int) -> float:
        """A step of an optimizer that re-evaluates the loss (L-BFGS, Newton-CG)."""
        p = self.parts
        model, algo, opt = p.model, p.algorithm, p.optimizer

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = p.loss_fn(model(x), y)
            extra = algo.loss_terms(model)
            if extra is not None:
                loss = loss + extra
            loss.backward()
            algo.after_backward(step)
            return algo.global_loss(loss)

        loss = opt.step(closure)
        p.schedule.step()
        self._applied = True
        algo.after_step(step)
        return float(loss.detach())

    def _autocast(self):
        """``[train] precision``'s autocast (a no-op context for fp32)."""
        precision = self.config.train.precision
        return torch.autocast(torch.device(self.device).type, enabled=precision != "fp32",
                              dtype=torch.float16 if precision == "fp16" else torch.bfloat16)

    # ---- the loop API for algorithms that own their loop (algorithms/base.py) -------------
    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        """Move a batch tensor to the device; floating tensors also take the run's dtype."""
        if t.is_floating_point():
            return t.to(self.device, dtype=self.dtype, non_blocking=True)
        return t.to(self.device, non_blocking=True)

    @property
    def total_steps(self) -> int:
        """The run's steps (:func:`distml.partition.steps.total_steps`)."""
        return self.parts.total_steps

    @property
    def steps_per_epoch(self) -> int:
        return self.parts.steps_per_epoch

    def batches(self, start: int | None = None):
        """Yield this rank's ``(step, x, y)`` from ``start`` (default: where the run resumes)
        to the last step (:func:`distml.partition.steps.batches`), one batch per step.
        (The worker loop's own steps take ``accumulate_steps`` batches each: :meth:`_steps`.)"""
        p = self.parts
        return batches(p.loader, p.steps_per_epoch, p.total_steps,
                       self.start_step if start is None else start, full_batch=p.full_batch)

    def _steps(self):
        """Yield ``(step, micro)``: each optimizer step's ``accumulate_steps`` batches, on the device."""
        p, k = self.parts, self.config.train.accumulate_steps
        # with accumulate_steps = k a step is k batches: the iterator counts batches, from
        # k·start_step to k·total_steps, over the loader's own epochs
        per_epoch = 1 if p.full_batch else p.loader.steps_per_epoch
        micro = []
        for batch, x, y in batches(p.loader, per_epoch, p.total_steps * k, self.start_step * k,
                                   full_batch=p.full_batch):
            micro.append((self.to_device(x), self.to_device(y)))
            if len(micro) == k:
                yield batch // k, micro
                micro = []

    def run(self, resume: bool = False, stop_after: int | None = None) -> LoopResult:
        cfg = self.config.train
        p = self.parts
        loss_window = self.resume() if resume else []
        out = self.out_dir
        # a replacement starts mid-run (start_step > 0): it appends to its rank's events
        sink = RunLog(out, self.launch_rank, tensorboard=cfg.tensorboard, lead=self.rank == 0,
                      resume_step=self.start_step if resume or self.start_step else None)
        p.model.train()
        bar = _progress(self.rank == 0 and cfg.progress, p.total_steps, self.start_step)
        eval_every = cfg.eval_every or p.steps_per_epoch
        done = self.start_step
        t_start = time.perf_counter()
        eval_time = 0.0
        last_loss = None

        def wall() -> float:
            return self.wall_before + (time.perf_counter() - t_start - eval_time)

        if self.start_step == 0 and p.total_steps > 0:
            self.evaluate(0, 0.0, sink)          # the starting point of every curve
            eval_time = time.perf_counter() - t_start

        try:
            while True:     # more than once only after a worker loss (runtime/elastic.py)
                try:
                    for step, micro in self._steps():  # noqa: B007
                        self.clock.start()
                        if self.faults is not None:
                            self.faults.begin(step)
                        loss = self._one_step(micro, step)
                        self._applied = False    # the step is complete: nothing in flight
                        if self.faults is not None:
                            self.faults.end(step)        # an injected slow step counts as compute
                        self.clock.stop()
                        if not math.isfinite(loss):
                            raise DivergenceError(
                                f"loss became {loss} at step {step} on rank {self.rank}; lower optim.lr "
                                "(the last good checkpoint is kept)")
                        last_loss = loss
                        loss_window = (loss_window + [loss])[-cfg.log_every:]
                        done = step + 1
                        if self.survivors is not None:
                            self.survivors.step_completed()
                        if done % cfg.log_every == 0 or done == p.total_steps:
                            st = self.transport.stats
                            sink.record("step", {"step": done, "epoch": done / p.steps_per_epoch,
                                                 "loss": sum(loss_window) / len(loss_window),
                                                 "wall_seconds": wall(), "compute_seconds": self.clock.compute,
                                                 "comm_seconds": self.clock.comm, "wait_seconds": self.clock.wait,
                                                 "bytes_sent": st.bytes_sent, "bytes_received": st.bytes_received,
                                                 "lr": p.optimizer.param_groups[0]["lr"]})
                        if bar is not None:
                            bar.update(1)
                            if done % cfg.log_every == 0:
                                bar.set_postfix(loss=f"{loss:.4f}", acc=_fmt(self.last_eval.get("test_accuracy")))
                        if done % eval_every == 0 and done != p.total_steps:
                            t0 = time.perf_counter()
                            self.evaluate(done, wall(), sink)
                            eval_time += time.perf_counter() - t0
                            if cfg.stop_at_target and self._agree_to_stop(self.time_to_target is not None):
                                break
                        if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and \
                                done != p.total_steps and not self.regrouped:
                            self.save_checkpoint(done, wall(), loss_window)
                        if stop_after is not None and done >= stop_after and done != p.total_steps:
                            self.save_checkpoint(done, wall(), loss_window)
                            return LoopResult(done, done - self.start_step, wall(), self.time_to_target,
                                              {}, last_loss, self.clock, completed=False)
                        if self.survivors is not None:     # a replacement may join here
                            self.survivors.between_steps(self, done)
                    p.algorithm.on_train_end(done)   # e.g. a parameter-server worker's last push and final pull
                    self.check_finite_model(done)    # before model.pt and the summary are written
                    total_wall = wall()
                    t0 = time.perf_counter()
                    final = self.evaluate(done, total_wall, sink)
                    eval_time += time.perf_counter() - t0
                    train_loss = sum(loss_window) / len(loss_window) if loss_window else last_loss
                    return LoopResult(done, done - self.start_step, total_wall, self.time_to_target, final,
                                      train_loss, self.clock, completed=True)
                except PeerError as e:
                    if self.survivors is None:
                        raise
                    done = self.survivors.recover(self, e, done, self._applied)
                    self.start_step, self._applied = done, False
                    if self.rank == 0:
                        sink.lead(out)
                except GroupGrew as e:       # read the new group's shards from the join point
                    done = self.start_step = e.step
        finally:
            if bar is not None:
                bar.close()
            sink.close()

    def run_steps(self, step_fn, total_steps: int, steps_per_epoch: int = 1) -> LoopResult:
        """Drive an ``owns_loop`` algorithm's own step with this loop's clocks and logs.

        ``step_fn(step)`` does one step (a round, a pipeline schedule, ...) and returns its
        loss, or a dict with ``loss`` and more fields for the events log, or None to stop
        early (every rank must agree, e.g. on an all-reduced test); this
        method times it (compute / comm / wait), writes ``events-rank{r}.jsonl`` every
        ``log_every`` steps, evaluates ``algorithm.eval_model()`` every ``eval_every`` steps
        (time excluded from the wall clock), honours ``stop_at_target`` and shows the
        progress bar; ``algorithm.at_eval`` runs on every rank before each evaluation (e.g.
        to gather a model split over ranks). No mid-run checkpoints: owned loops run from
        step 0.
        """
        cfg = self.config.train
        sink = RunLog(self.out_dir, self.rank, tensorboard=cfg.tensorboard)
        bar = _progress(self.rank == 0 and cfg.progress, total_steps, 0)
        eval_every = cfg.eval_every or steps_per_epoch
        t_start, eval_time, done, window = time.perf_counter(), 0.0, 0, []

        def wall() -> float:
            return time.perf_counter() - t_start - eval_time

        self.evaluate(0, 0.0, sink)              # the starting point of every curve
        eval_time = time.perf_counter() - t_start
        try:
            for step in range(total_steps):
                if self.faults is not None:
                    self.faults.stop_if_hung(step)     # the one per-step fault an owned step takes
                self.clock.start()
                out = step_fn(step)
                self.clock.stop()
                if out is None:          # the algorithm converged (all ranks agree): stop
                    break
                extra = dict(out) if isinstance(out, dict) else {"loss": out}
                loss = float(extra.pop("loss"))
                if not math.isfinite(loss):
                    raise DivergenceError(f"loss became {loss} at step {step} on rank {self.rank}; "
                                          "lower the step size")
                done, window = step + 1, (window + [loss])[-cfg.log_every:]
                if done % cfg.log_every == 0 or done == total_steps:
                    st = self.transport.stats
                    sink.record("step", {"step": done, "epoch": done / steps_per_epoch, "loss": loss,
                                         "wall_seconds": wall(), "compute_seconds": self.clock.compute,
                                         "comm_seconds": self.clock.comm, "wait_seconds": self.clock.wait,
                                         "bytes_sent": st.bytes_sent, "bytes_received": st.bytes_received,
                                         **extra})
                if bar is not None:
                    bar.update(1)
                if done % eval_every == 0 and done != total_steps:
                    t0 = time.perf_counter()
                    self.evaluate(done, wall(), sink)
                    eval_time += time.perf_counter() - t0
                    if cfg.stop_at_target and self._agree_to_stop(self.time_to_target is not None):
                        break
            total_wall = wall()
            final = self.evaluate(done, total_wall, sink)
            return LoopResult(done, done, total_wall, self.time_to_target, final,
                              sum(window) / len(window) if window else None, self.clock,
                              completed=True)
        finally:
            if bar is not None:
                bar.close()
            sink.close()

    def _agree_to_stop(self, mine: bool) -> bool:
        """Rank 0 decides to stop at the target; every rank must learn it at the same step.

        An algorithm whose workers are not in step (a parameter server's ASP/SSP) agrees
        its own way (``agree_to_stop``), so this is no hidden barrier.
        """
        own = self.parts.algorithm.agree_to_stop(mine and self.rank == 0)
        if own is not None:
            return own
        flag = torch.tensor([1.0 if (mine and self.rank == 0) else 0.0])
        self.transport.broadcast(flag, src=0)
        return bool(flag.item())


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def _progress(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    import threading

    from tqdm import tqdm
    # tqdm's default lock is a multiprocessing semaphore, which a worker that exits with
    # os._exit would leak; one bar per process needs only a thread lock
    tqdm.set_lock(threading.RLock())
    return tqdm(total=total, initial=initial, desc="train", unit="step", file=sys.stderr,
                dynamic_ncols=True, mininterval=0.5, disable=None)
