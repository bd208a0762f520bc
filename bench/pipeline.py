"""Pipeline bubble: measured idle fraction per stage against GPipe's (K−1)/(M+K−1).

An MLP (input 64 → ``--layers`` hidden Linear(d, d)+ReLU → 10 classes) trains on a fixed
global batch B cut into M ∈ {1, 2, 4, 8} micro-batches, K = 2 stages (2 processes under
``distml launch -n 2``, 1 thread each, gloo on 127.0.0.1), with torch.distributed.pipelining's
``ScheduleGPipe`` — the schedule ``algorithms/pipeline.py`` runs. The stages are cut for
every M by **measured time**: ``distml.algorithms.pipeline.layer_times`` (rank 0 times
each layer's forward + backward on one micro-batch of B/M rows, the times are broadcast)
and ``balance`` (the cut minimising the slower stage), exactly as ``balance = "time"``.

Instrumentation (in the child processes only; torch's code is wrapped, not changed):
- *compute*: the stage's ``forward_one_chunk`` and ``backward_one_chunk`` and the
  schedule's loss computation, timed around each call;
- *p2p*: every call that posts or waits for a send or a receive (torch's
  ``_sorted_batch_p2p`` and ``_wait_batch_p2p``) — time blocked on the other stage;
- *send*: the time it takes to send this stage's activations (stage 0) or activation
  gradients (stage 1): M × the one-way time of one such message, measured for every M
  just before the steps by a ping-pong of the same tensor between the two stage
  processes with the receiver already waiting. It is measured apart because gloo's
  send is a rendezvous: a send's ``wait()`` returns only once the peer has posted the
  matching receive (checked: an isend to a peer that posts its recv 1 s late waits
  1 s), so the time blocked in send waits is mostly waiting for the peer, not sending;
- *idle (the bubble)* = p2p − send: time blocked on the other stage, less the wire time,
  plus the time from this stage's end of the step to the other stage's (a step ends
  when both stages are done: GPipe flushes the pipeline every batch);
- *other*: the rest of the step (schedule bookkeeping, micro-batch splitting, gradient
  scaling) — reported, not counted as idle.
Each step starts after a barrier and is timed by each stage from entering
``schedule.step`` to leaving it. Per stage and M the figures are medians over the
measured steps (after ``--warmup``), then medians over ``--repeats`` (M order rotated per
repeat). Throughput: B ÷ the median step time of the slower stage; GPipe predicts
throughput ∝ M/(M+K−1) (relative to M = 1: 2M/(M+1) for K = 2).

    python bench/pipeline.py --repeats 3        # the documented run (docs/benchmarks.md)
    python bench/pipeline.py --quick            # smoke check: same code path, smaller model

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "pipeline", "bubble": {M: ...}, "predicted": {M: ...}, "max_abs_error": ..., ...}

``concurrent_compute_slowdown`` (measured before and after the steps, in the same two
processes): the time of a fixed compute burst run by both stages at once ÷ run by each
alone. A pipeline can only overlap its stages if this is near 1; at 2 the two
processes share one core's worth of CPU and no schedule can beat M = 1.

``bubble`` = the larger of the two stages' idle fractions per M (``bubble_by_stage`` has
both); ``max_abs_error`` = the largest |measured − predicted| over stages and M;
``not_busy`` = (step − compute − send) / step, i.e. idle + other, for the reader who
counts bookkeeping as idle too.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish  # noqa: E402

K = 2
MS = (1, 2, 4, 8)


# ---- child mode (one process per stage, under `distml launch -n 2`) -------------------
def child(args) -> None:
    import torch
    import torch.distributed.pipelining.schedules as S
    from torch import nn
    from torch.distributed.pipelining import PipelineStage, ScheduleGPipe

    import distml
    from distml.algorithms.pipeline import balance, layer_times

    torch.set_num_threads(1)
    t = distml.init(timeout_s=300)
    rank = t.rank
    if args.place_threads == "auto":      # what a distml worker does ([comm] place_threads)
        t.place_threads(rank, K)
    if args.pin and len(os.sched_getaffinity(0)) >= K:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[rank]})   # one core per stage
    torch.manual_seed(0)
    layers = [nn.Linear(64, args.width), nn.ReLU()]
    for _ in range(args.layers):
        layers += [nn.Linear(args.width, args.width), nn.ReLU()]
    layers.append(nn.Linear(args.width, 10))
    x = torch.randn(args.batch, 64)
    y = torch.randint(0, 10, (args.batch,))
    loss_fn = nn.CrossEntropyLoss()

    acc = {"compute": 0.0, "p2p": 0.0}
    orig_sorted, orig_wait = S._sorted_batch_p2p, S._wait_batch_p2p

    def sorted_p2p(ops, desc=None):
        t0 = time.perf_counter()
        try:
            return orig_sorted(ops, desc)
        finally:
            acc["p2p"] += time.perf_counter() - t0

    def wait_p2p(work):
        t0 = time.perf_counter()
        try:
            orig_wait(work)
        finally:
            acc["p2p"] += time.perf_counter() - t0

    def one_way(shape) -> float:
        """Median one-way seconds of one message of ``shape`` (ping-pong, receiver waiting)."""
        buf = torch.zeros(shape)
        rtts = []
        for _ in range(args.pingpong + 1):
            t.barrier()
            t0 = time.perf_counter()
            if rank == 0:
                t.send(buf, 1)
                t.recv(buf, 1)
            else:
                t.recv(buf, 0)
                t.send(buf, 0)
            rtts.append(time.perf_counter() - t0)
        return float(t.broadcast(torch.tensor([statistics.median(rtts[1:]) / 2],
                                              dtype=torch.float64), src=0)[0])

    def timed(fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc["compute"] += time.perf_counter() - t0
        return wrapper

    def burst() -> float:
        """Seconds of a fixed compute burst: 3 forward + backward passes of the whole model."""
        m = nn.Sequential(*copy.deepcopy(layers))
        t0 = time.perf_counter()
        for _ in range(3):
            loss_fn(m(x), y).backward()
        return time.perf_counter() - t0

    def concurrency() -> float:
        """How much the two stage processes slow each other when both compute at once: the
        median over 3 tries of (burst time, both ranks together) ÷ (burst time, alone).
        1.0: two free cores; 2.0: the two processes effectively share one core."""
        ratios = []
        for _ in range(3):
            alone = 0.0
            for r in range(K):
                t.barrier()
                if rank == r:
                    alone = burst()
                t.barrier()
            t.barrier()
            ratios.append(burst() / alone)
        return float(t.all_reduce(torch.tensor([statistics.median(ratios)], dtype=torch.float64))[0]) / K

    S._sorted_batch_p2p, S._wait_batch_p2p = sorted_p2p, wait_p2p
    results: dict[str, list] = {"concurrency": [concurrency()]}
    order = list(MS)
    try:
        for rep in range(args.repeats):
            for m in order[rep % len(order):] + order[:rep % len(order)]:
                times = torch.zeros(len(layers), dtype=torch.float64)
                if rank == 0:
                    times = torch.tensor(layer_times(layers, x[: args.batch // m]), dtype=torch.float64)
                bounds = balance([float(v) for v in t.broadcast(times, src=0)], K)
                lo, hi = bounds[rank], bounds[rank + 1]
                with torch.no_grad():
                    width = nn.Sequential(*layers[:bounds[1]])(x[:1]).shape[1]
                send_s = m * one_way((args.batch // m, width))   # this stage's M messages
                mod = nn.Sequential(*layers[lo:hi])
                stage = PipelineStage(mod, rank, K, torch.device("cpu"), group=t.group)
                sched = ScheduleGPipe(stage, m, loss_fn=loss_fn)
                stage.forward_one_chunk = timed(stage.forward_one_chunk)
                stage.backward_one_chunk = timed(stage.backward_one_chunk)
                sched._maybe_compute_loss = timed(sched._maybe_compute_loss)
                steps = []
                for s in range(args.warmup + args.steps):
                    mod.zero_grad(set_to_none=True)
                    for key in acc:
                        acc[key] = 0.0
                    t.barrier()
                    t0 = time.perf_counter()
                    if rank == 0:
                        sched.step(x)
                    else:
                        sched.step(target=y, losses=[])
                    wall = time.perf_counter() - t0
                    if s >= args.warmup:
                        steps.append({"wall": wall, "compute": acc["compute"], "send": send_s,
                                      "recv": acc["p2p"] - send_s, "p2p": acc["p2p"]})
                share = sum(times[lo:hi].tolist()) / max(sum(times.tolist()), 1e-12)
                results.setdefault(str(m), []).append(
                    {"steps": steps, "bounds": bounds, "time_share": share, "send_s": send_s,
                     "boundary": [args.batch // m, width],
                     "stage_params": sum(q.numel() for q in mod.parameters())})
                del sched, stage, mod
        results["concurrency"].append(concurrency())
    finally:
        S._sorted_batch_p2p, S._wait_batch_p2p = orig_sorted, orig_wait
    Path(f"{args.child}.rank{rank}.json").write_text(json.dumps(results))
    import gc
    gc.collect()
    t.barrier()
    t.close()


# ---- parent ---------------------------------------------------------------------------
def predicted(m: int) -> float:
    return (K - 1) / (m + K - 1)


def run_children(args) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "pp")
        cmd = [sys.executable, "-m", "distml", "launch", "-n", str(K), __file__, "--child", prefix,
               "--width", str(args.width), "--layers", str(args.layers), "--batch", str(args.batch),
               "--steps", str(args.steps), "--warmup", str(args.warmup), "--repeats", str(args.repeats),
               "--pingpong", str(args.pingpong), "--pin", str(args.pin),
               "--place-threads", args.place_threads]
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        finally:
            if proc.poll() is None:          # timeout, Ctrl-C or SIGTERM: end the whole group
                _killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    _killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
        if rc != 0:
            raise SystemExit(f"pipeline bench: the stage processes failed (exit {rc})")
        return [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in range(K)]


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _on_term(signum, frame):
    raise SystemExit(128 + signum)


def summarize(ranks: list[dict], args) -> dict:
    """Per M and stage: fractions of the step spent computing, sending, idle and other.

    A step lasts from the barrier both stages leave together to the moment the *later*
    stage leaves ``schedule.step`` (the GPipe flush: the next step cannot start before
    every stage is done). A stage that finished earlier sits idle for the difference, so
    idle = (p2p − send) + (step − own time); other = own time − compute − p2p.
    """
    med = statistics.median
    out = {k: {} for k in ("bubble_by_stage", "not_busy_by_stage", "send_by_stage", "other_by_stage",
                           "compute_by_stage", "compute_seconds_by_stage", "send_seconds", "step_seconds",
                           "throughput", "bounds", "time_share")}
    for m in MS:
        key = str(m)
        fr = {r: {k: [] for k in ("compute", "send", "idle", "other")} for r in range(K)}
        comp_s, walls = {r: [] for r in range(K)}, []
        for reps in zip(*(res[key] for res in ranks)):          # one repeat, every stage
            rep_fr = {r: {k: [] for k in fr[r]} for r in range(K)}
            rep_walls = []
            for steps in zip(*(rep["steps"] for rep in reps)):   # one step, every stage
                wall = max(st["wall"] for st in steps)
                rep_walls.append(wall)
                for r, st in enumerate(steps):
                    rep_fr[r]["compute"].append(st["compute"] / wall)
                    rep_fr[r]["send"].append(st["send"] / wall)
                    rep_fr[r]["idle"].append((st["p2p"] - st["send"] + wall - st["wall"]) / wall)
                    rep_fr[r]["other"].append((st["wall"] - st["compute"] - st["p2p"]) / wall)
                    comp_s[r].append(st["compute"])
            for r in range(K):
                for k in fr[r]:
                    fr[r][k].append(med(rep_fr[r][k]))
            walls.append(med(rep_walls))
        for name, k in (("bubble_by_stage", "idle"), ("send_by_stage", "send"),
                        ("other_by_stage", "other"), ("compute_by_stage", "compute")):
            out[name][key] = [round(med(fr[r][k]), 4) for r in range(K)]
        out["not_busy_by_stage"][key] = [round(med(fr[r]["idle"]) + med(fr[r]["other"]), 4)
                                         for r in range(K)]
        out["compute_seconds_by_stage"][key] = [round(med(comp_s[r]), 4) for r in range(K)]
        out["send_seconds"][key] = [round(med(rep["send_s"] for rep in ranks[r][key]), 5) for r in range(K)]
        out["step_seconds"][key] = round(med(walls), 4)
        out["throughput"][key] = round(args.batch / med(walls), 1)
        out["bounds"][key] = ranks[0][key][0]["bounds"]
        out["time_share"][key] = [round(ranks[r][key][0]["time_share"], 3) for r in range(K)]
    return out


#: the documented run's settings (the options below default to these)
PROTOCOL = {"stages": 2, "microbatches": [1, 2, 4, 8], "repeats": 3, "width": 1024, "layers": 8,
            "batch": 1024, "steps": 12, "warmup": 2, "pingpong": 10,
            "statistic": "per stage and M: median over measured steps, then median over repeats"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: width 512, 4 layers, 1 repeat")
    for key in ("repeats", "width", "layers", "batch", "steps", "warmup", "pingpong"):
        ap.add_argument(f"--{key}", type=int, default=PROTOCOL[key])
    ap.add_argument("--pin", type=int, default=0, help="1: pin stage r to CPU core r")
    ap.add_argument("--place-threads", choices=("auto", "off"), default="auto",
                    help="gloo thread placement, as [comm] place_threads (default auto)")
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", metavar="PREFIX", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args)
        return 0
    signal.signal(signal.SIGTERM, _on_term)
    if args.quick:
        args.repeats, args.width, args.layers, args.batch, args.steps = 1, 512, 4, 256, 4
    ranks = run_children(args)
    s = summarize(ranks, args)
    pred = {str(m): round(predicted(m), 4) for m in MS}
    bubble = {str(m): max(s["bubble_by_stage"][str(m)]) for m in MS}
    err = max(abs(v - predicted(m)) for m in MS for v in s["bubble_by_stage"][str(m)])
    err_nb = max(abs(v - predicted(m)) for m in MS for v in s["not_busy_by_stage"][str(m)])
    t1 = s["throughput"]["1"]
    print(json.dumps(s, indent=1), file=sys.stderr)
    line = {
        "bench": "pipeline", "K": K, "batch": args.batch, "width": args.width, "layers": args.layers,
        "repeats": args.repeats, "steps": args.steps,
        "bubble": bubble, "predicted": pred, "max_abs_error": round(err, 4),
        "bubble_by_stage": s["bubble_by_stage"], "send_by_stage": s["send_by_stage"],
        "other_by_stage": s["other_by_stage"], "not_busy_max_abs_error": round(err_nb, 4),
        "compute_seconds_by_stage": s["compute_seconds_by_stage"], "step_seconds": s["step_seconds"],
        "throughput": s["throughput"],
        "throughput_vs_m1": {str(m): round(s["throughput"][str(m)] / t1, 3) for m in MS},
        "predicted_throughput_vs_m1": {str(m): round(K * m / (m + K - 1), 3) for m in MS},
        "bounds": s["bounds"], "time_share": s["time_share"],
        "concurrent_compute_slowdown": [round(v, 3) for v in ranks[0]["concurrency"]],
    }
    line["headline"] = (f"bubble within {err:.4f} of GPipe's (K−1)/(M+K−1) "
                        f"(K = {K}, M = {', '.join(map(str, MS))}; medians of {args.repeats} repeats)")
    protocol = {**PROTOCOL, **{k: getattr(args, k) for k in ("repeats", "width", "layers", "batch",
                                                             "steps", "warmup", "pingpong")}}
    return finish(line, protocol, quick=args.quick,
                  details={"summary": s, "loadavg": os.getloadavg()})


if __name__ == "__main__":
    sys.exit(main())
