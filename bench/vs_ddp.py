"""distml SyncSGD against torch's DistributedDataParallel: steps/s and peak memory.

Both sides train the same model (same initial weights), on the same batches (per
worker: Fashion-MNIST, batch 64 for mlp and cnn, 32 for resnet; for transformer_lm 16
windows of 64 byte tokens of the ``text`` source), with the same optimizer and the same
number of steps,
in 2 worker processes with 1 thread each over gloo on 127.0.0.1. Runs are interleaved
in one invocation (for each repeat and model: DDP, then distml), every run in fresh
processes, so that drift of the shared machine hits both sides alike and each run's
peak resident memory (``ru_maxrss``) is its own.

    python bench/vs_ddp.py --repeats 5          # the documented run (docs/benchmarks.md)
    python bench/vs_ddp.py --quick              # smoke check: same code path, fewer steps
    python bench/vs_ddp.py --models resnet,transformer_lm   # the two larger architectures

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "vs_ddp", "mlp_ratio": ..., "cnn_ratio": ..., "mlp_mem_ratio": ...,
     "cnn_mem_ratio": ..., "repeats": R, ...}

``*_ratio`` = median distml steps/s ÷ median DDP steps/s (per-worker steps/s, mean of
the two workers); ``*_ratio_min/max`` = the spread of the per-repeat ratios;
``*_mem_ratio`` = median distml peak RSS ÷ median DDP peak RSS (max over workers);
``*_param_diff`` = the largest relative difference between DDP's and distml's final
weights (both do the same arithmetic up to float rounding, so it must be tiny).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS_TO_RUN = ("mlp", "cnn")
MODES = ("ddp", "distml", "distml_unplaced", "ddp_placed")
WORLD = 2
LR, MOMENTUM = 0.01, 0.9
SEED = 0
FASHION = {"name": "fashion_mnist"}
# model -> (data source, batch per worker, model spec): what each model trains on
WORKLOADS = {
    "mlp": (FASHION, 64, {"name": "mlp"}),
    "cnn": (FASHION, 64, {"name": "cnn"}),
    "resnet": (FASHION, 32, {"name": "resnet"}),            # ResNet-20, BatchNorm
    "transformer_lm": ({"name": "text", "context": 64, "max_bytes": 1_000_000}, 16,
                       {"name": "transformer_lm", "d_model": 64, "n_layers": 2, "n_heads": 4}),
}


# ---------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------
def _batches(source, batch: int, rank: int, n: int):
    """This rank's first ``n`` training batches of ``source`` (epochs cycle), lazily."""
    from distml.partition import make_loader
    loader = make_loader(source, None, rank, WORLD, batch, SEED)
    produced, epoch = 0, 0
    while True:
        for b in loader.batches(epoch):
            if produced == n:
                return
            produced += 1
            yield b
        epoch += 1


def _build(model_name: str):
    """The workload's data source, model, loss and optimizer (same weights on every run)."""
    import torch
    from distml.models import build_loss, build_model
    from distml.partition import SOURCES
    source_spec, batch, model_spec = WORKLOADS[model_name]
    source = SOURCES.build(source_spec)
    torch.manual_seed(SEED)
    model = build_model(model_spec, source.info)
    loss_fn = build_loss("auto", model_spec["name"], source.info)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    return source, batch, model, loss_fn, opt


def worker(args) -> None:
    """One worker of one run; prints one JSON line with its measurements."""
    import gc
    import resource

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    rank = args.rank
    source, batch, model, loss_fn, opt = _build(args.model)
    n_total = args.warmup + args.steps
    data = _batches(source, batch, rank, n_total)

    timeout_s = 120.0
    if args.mode.startswith("ddp"):
        import datetime
        from torch.nn.parallel import DistributedDataParallel as DDP
        store = dist.TCPStore("127.0.0.1", args.port, is_master=False,
                              timeout=datetime.timedelta(seconds=timeout_s))
        dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD,
                                timeout=datetime.timedelta(seconds=timeout_s))
        net = DDP(model)              # default settings: 25 MiB buckets, copies, no views
        if args.mode == "ddp_placed":  # diagnostic: DDP with distml's gloo thread placement
            from distml.comm.placement import place_gloo_threads
            dist.barrier()
            place_gloo_threads(rank)
        algo = transport = None
    else:
        from distml.algorithms.sync_sgd import SyncSGD
        from distml.comm.transport import Transport
        store = Transport.store_client("127.0.0.1", args.port, timeout_s)
        transport = Transport.connect(store, rank, WORLD, backend="gloo", timeout_s=timeout_s)
        if args.mode == "distml":      # the worker's default, [comm] place_threads = "auto"
            transport.place_threads(rank, WORLD)
        algo = SyncSGD()              # default settings
        algo.setup(model, opt, transport)
        net = model

    def step(i: int, x, y) -> None:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        if algo is not None:
            algo.after_backward(i)
        opt.step()
        if algo is not None:
            algo.after_step(i)

    it = iter(data)
    for i in range(args.warmup):
        x, y = next(it)
        step(i, x, y)
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(args.warmup, n_total):
        x, y = next(it)
        step(i, x, y)
    seconds = time.perf_counter() - t0

    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    result = {"rank": rank, "mode": args.mode, "model": args.model, "steps": args.steps,
              "seconds": seconds, "steps_per_s": args.steps / seconds,
              "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}
    if rank == 0:
        Path(args.params_out).parent.mkdir(parents=True, exist_ok=True)
        torch.save(flat, args.params_out)

    # teardown in the order that is clean on gloo (docs/design.md §6)
    if algo is not None:
        algo.close()
    del net, model, opt, algo
    gc.collect()
    if transport is not None:
        transport.close()
    else:
        dist.barrier()
        dist.destroy_process_group()
    print("RESULT " + json.dumps(result), flush=True)


# ---------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------
class Run:
    """Two worker processes of one (mode, model) run, around a store on 127.0.0.1.

    Workers get their own sessions, so only the driver sees Ctrl-C; leaving the ``with``
    block (normally, on an error or on Ctrl-C) kills whatever is still running.
    """

    def __init__(self, mode: str, model: str, warmup: int, steps: int, params_out: str,
                 logdir: str, timeout_s: float):
        self.mode, self.model = mode, model
        self.warmup, self.steps, self.params_out = warmup, steps, params_out
        self.logdir, self.timeout_s = logdir, timeout_s
        self.procs: list[subprocess.Popen] = []
        self.logs: list[tuple[str, str]] = []
        self.store = None

    def __enter__(self):
        from distml.comm.transport import Transport
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        self.store = Transport.host_store(sock, timeout_s=120.0)
        sock.detach()                 # the store owns the listening fd now
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        for rank in range(WORLD):
            cmd = [sys.executable, os.path.abspath(__file__), "--_worker",
                   "--rank", str(rank), "--port", str(port), "--mode", self.mode,
                   "--model", self.model, "--warmup", str(self.warmup),
                   "--steps", str(self.steps), "--params-out", self.params_out]
            out = os.path.join(self.logdir, f"{self.mode}_{self.model}_{rank}.out")
            err = os.path.join(self.logdir, f"{self.mode}_{self.model}_{rank}.err")
            self.logs.append((out, err))
            with open(out, "w") as fo, open(err, "w") as fe:
                self.procs.append(subprocess.Popen(cmd, env=env, stdout=fo, stderr=fe,
                                                   start_new_session=True))
        return self

    def results(self) -> list[dict]:
        """Wait for both workers; the first one to fail (or the timeout) ends the run."""
        deadline = time.monotonic() + self.timeout_s
        while any(p.poll() is None for p in self.procs):
            for rank, p in enumerate(self.procs):
                if p.poll() not in (None, 0):
                    raise RuntimeError(f"{self.mode}/{self.model}: worker {rank} exited with "
                                       f"{p.returncode}:\n{_tail(self.logs[rank][1])}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.mode}/{self.model}: workers did not finish within "
                                   f"{self.timeout_s:g} s")
            time.sleep(0.05)
        outs = []
        for rank, p in enumerate(self.procs):
            if p.returncode != 0:
                raise RuntimeError(f"{self.mode}/{self.model}: worker {rank} exited with "
                                   f"{p.returncode}:\n{_tail(self.logs[rank][1])}")
            with open(self.logs[rank][0]) as f:
                lines = [ln for ln in f.read().splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise RuntimeError(f"{self.mode}/{self.model}: worker {rank} printed no result:\n"
                                   f"{_tail(self.logs[rank][1])}")
            outs.append(json.loads(lines[-1][len("RESULT "):]))
        return outs

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                _killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.store = None
        return False


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _tail(path: str, n: int = 3000) -> str:
    try:
        with open(path) as f:
            return f.read()[-n:]
    except OSError:
        return "(no log)"


def _median(xs):
    return statistics.median(xs) if xs else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: 60 steps, 1 repeat")
    ap.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 5)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per run (default 400)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first (default 20)")
    ap.add_argument("--models", default=",".join(MODELS_TO_RUN), help="comma-separated")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    # worker-only arguments
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--modes", default="ddp,distml",
                    help="runs per repeat (the first is the baseline of the ratios); also "
                         "distml_unplaced (distml without gloo thread placement) and "
                         "ddp_placed (DDP with it), for diagnosis")
    ap.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--params-out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker(args)
        return 0

    repeats = args.repeats if args.repeats is not None else (1 if args.quick else 5)
    steps = args.steps if args.steps is not None else (60 if args.quick else 400)
    warmup = min(args.warmup, 5) if args.quick else args.warmup
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    if set(models) - set(WORKLOADS):
        ap.error(f"--models: any of {', '.join(WORKLOADS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if len(modes) < 2 or set(modes) - set(MODES) or modes[0] != "ddp":
        ap.error(f"--modes: 'ddp' first, then any of {', '.join(MODES[1:])}")
    if repeats < 1 or steps < 1 or warmup < 0:
        ap.error("--repeats and --steps must be >= 1, --warmup >= 0")

    def _on_term(signum, frame):   # make `kill` clean up like Ctrl-C does
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import torch
    rows: dict[tuple[str, str], list[dict]] = {}
    diffs: dict[str, list[float]] = {}
    tmp = tempfile.mkdtemp(prefix="vs_ddp_")
    try:
        for r in range(repeats):
            for model in models:
                finals = {}
                for mode in modes:
                    out = os.path.join(tmp, f"{mode}_{model}.pt")
                    with Run(mode, model, warmup, steps, out, tmp, args.timeout) as run:
                        res = run.results()
                    sps = statistics.mean(x["steps_per_s"] for x in res)
                    rss = max(x["maxrss_kb"] for x in res) / 1024
                    rows.setdefault((model, mode), []).append({"steps_per_s": sps, "rss_mb": rss})
                    finals[mode] = torch.load(out, weights_only=True)
                    print(f"repeat {r + 1}/{repeats} {model:14s} {mode:15s} "
                          f"{sps:8.1f} steps/s  peak RSS {rss:7.1f} MB", file=sys.stderr, flush=True)
                a = finals["ddp"]
                diffs.setdefault(model, []).append(max(
                    ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()
                    for b in finals.values()))
    except KeyboardInterrupt:
        print("interrupted: workers stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"vs_ddp failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    summary: dict = {"bench": "vs_ddp"}
    for model in models:
        if (model, "distml") not in rows:
            continue
        ddp, ours = rows[(model, "ddp")], rows[(model, "distml")]
        per_rep = [o["steps_per_s"] / d["steps_per_s"] for d, o in zip(ddp, ours)]
        d_sps, o_sps = _median([d["steps_per_s"] for d in ddp]), _median([o["steps_per_s"] for o in ours])
        d_rss, o_rss = _median([d["rss_mb"] for d in ddp]), _median([o["rss_mb"] for o in ours])
        summary.update({
            f"{model}_ratio": round(o_sps / d_sps, 3),
            f"{model}_mem_ratio": round(o_rss / d_rss, 3),
            f"{model}_ratio_min": round(min(per_rep), 3),
            f"{model}_ratio_max": round(max(per_rep), 3),
            f"{model}_ddp_steps_per_s": round(d_sps, 1),
            f"{model}_distml_steps_per_s": round(o_sps, 1),
            f"{model}_ddp_rss_mb": round(d_rss, 1),
            f"{model}_distml_rss_mb": round(o_rss, 1),
            f"{model}_param_diff": float(f"{max(diffs[model]):.2e}"),
        })
    for model in models:
        for mode in modes[1:]:
            if mode != "distml":
                d, o = rows[(model, "ddp")], rows[(model, mode)]
                summary[f"{model}_{mode}_ratio"] = round(
                    _median([x["steps_per_s"] for x in o]) / _median([x["steps_per_s"] for x in d]), 3)
    summary.update({"repeats": repeats, "modes": modes, "steps": steps, "warmup": warmup,
                    "batch": {m: WORKLOADS[m][1] for m in models},
                    "workers": WORLD, "threads_per_worker": 1, "backend": "gloo",
                    "quick": bool(args.quick)})
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
