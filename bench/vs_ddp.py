"""distml SyncSGD against the best configuration of torch's DistributedDataParallel.

Both sides train the same model (same initial weights), on the same batches (per
worker: Fashion-MNIST, batch 64 for mlp and cnn, 32 for resnet (ResNet-20, BatchNorm);
for transformer_lm 16 windows of 64 byte tokens of the ``text`` source), with the same
optimizer and the same number of steps, in 2 worker processes with 1 thread each over
gloo on 127.0.0.1. DDP runs in four configurations — its defaults, tuned
(``bucket_cap_mb=25, gradient_as_bucket_view=True, static_graph=True``), and each of the
two with the gloo thread placement distml can apply (``distml.comm.placement``); distml
runs with its defaults (``[comm] place_threads = "auto"``). One pair of worker processes
runs every segment (a process start costs minutes on a loaded 2-core host): per repeat
and model, every configuration once, in an order rotated by the repeat, so drift of the
shared machine hits them alike. DDP and distml share the one gloo process group (and so
gloo's threads); placement is applied or undone before each segment. Memory is not
compared here (one process runs every configuration).

    python bench/vs_ddp.py                      # the documented run (bench/results/vs_ddp.json)
    python bench/vs_ddp.py --quick              # smoke check: same code path, fewer steps

Ends by printing one JSON line (docs/design.md §5)::

    {"bench": "vs_ddp", "mlp_ratio": ..., "mlp_ratio_ci": [lo, hi], "mlp_best_ddp": ...,
     "cnn_ratio": ..., ..., "repeats": R, "headline": ...}

``<model>_ratio`` = distml steps/s ÷ the steps/s of the *best* DDP configuration (the
one with the highest mean steps/s over the repeats of this invocation; per-worker
steps/s, mean of the two workers), with a 95% interval of the paired per-repeat ratios
(``ratio_ci``). Picking DDP's best after the runs favours DDP, never distml.
``<model>_param_diff`` = the largest relative difference between any configuration's
final weights and DDP's (the same arithmetic up to float rounding, so it must be tiny).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import finish, ratio_ci, table  # noqa: E402

# DDP's four configurations; distml runs with its defaults ("auto" placement). What each
# mode is: (DDP keyword arguments or None for distml, gloo thread placement).
DDP_TUNED = {"bucket_cap_mb": 25, "gradient_as_bucket_view": True, "static_graph": True}
MODES = {
    "ddp": ({}, "off"),
    "ddp_placed": ({}, "on"),
    "ddp_tuned": (DDP_TUNED, "off"),
    "ddp_tuned_placed": (DDP_TUNED, "on"),
    "distml": (None, "auto"),
    "distml_placed": (None, "on"),          # diagnostics (--modes): placement forced on/off
    "distml_unplaced": (None, "off"),
}
DDP_MODES = tuple(m for m, (kw, _) in MODES.items() if kw is not None)

PROTOCOL = {
    "models": ["mlp", "cnn", "resnet", "transformer_lm"],
    "modes": list(DDP_MODES) + ["distml"],
    "ddp_tuned": DDP_TUNED,
    "workers": 2, "threads_per_worker": 1, "backend": "gloo",
    "lr": 0.01, "momentum": 0.9, "seed": 0,
    # timed steps per model, after warm-up steps (a few seconds each on an idle machine:
    # the machine is shared, so many short interleaved runs beat a few long ones)
    "steps": {"mlp": 200, "cnn": 100, "resnet": 20, "transformer_lm": 40},
    "warmup": {"mlp": 10, "cnn": 5, "resnet": 3, "transformer_lm": 3},
    "repeats": 3,
    "baseline": "the DDP configuration with the highest mean steps/s in this invocation",
    "quick": {"steps_scale": 0.25, "repeats": 1, "models": ["mlp", "cnn"]},
}
WORLD = PROTOCOL["workers"]
LR, MOMENTUM, SEED = PROTOCOL["lr"], PROTOCOL["momentum"], PROTOCOL["seed"]
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


def _order(modes: list[str], repeat: int) -> list[str]:
    """The modes of one repeat, rotated by the repeat: each one runs first once in a while."""
    k = repeat % len(modes)
    return modes[k:] + modes[:k]


def _one(mode: str, model_name: str, transport, rank: int, warmup: int, steps: int):
    """Train one (mode, model) segment; its steps/s, whether gloo's threads were placed,
    and the final flat parameters."""
    import gc

    import torch
    import torch.distributed as dist

    from distml.comm.placement import place_gloo_threads, unplace_gloo_threads
    source, batch, model, loss_fn, opt = _build(model_name)
    data = iter(_batches(source, batch, rank, warmup + steps))
    ddp_kwargs, placement = MODES[mode]
    transport.barrier()
    if placement == "off":
        unplace_gloo_threads()
        placed = None
    elif ddp_kwargs is not None:        # DDP with distml's gloo thread placement
        placed = place_gloo_threads(rank)
    else:                               # "auto" decides as the worker does; "on" forces it
        unplace_gloo_threads()
        placed = transport.place_threads(rank, WORLD, force=placement == "on")
    algo = None
    if ddp_kwargs is not None:
        from torch.nn.parallel import DistributedDataParallel as DDP
        net = DDP(model, **ddp_kwargs)
    else:
        from distml.algorithms.sync_sgd import SyncSGD
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

    for i in range(warmup):
        step(i, *next(data))
    dist.barrier()
    t0 = time.perf_counter()
    for i in range(warmup, warmup + steps):
        step(i, *next(data))
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    if algo is not None:
        algo.close()
    del net, model, opt, algo
    gc.collect()
    return steps / seconds, placed is not None, flat


def worker(args) -> None:
    """One of the two worker processes: every (repeat, model, mode) segment, interleaved.

    One pair of processes runs them all (a process start costs minutes on a loaded
    2-core host); DDP and distml share the one gloo process group, so they use the same
    gloo threads, and placement is applied or undone before every segment.
    """
    import torch

    from distml.comm.transport import Transport
    torch.set_num_threads(PROTOCOL["threads_per_worker"])
    rank, timeout_s = args.rank, 300.0
    store = Transport.store_client("127.0.0.1", args.port, timeout_s)
    transport = Transport.connect(store, rank, WORLD, backend="gloo", timeout_s=timeout_s)
    plan = json.loads(args.plan)
    for r in range(plan["repeats"]):
        for model in plan["models"]:
            finals = {}
            for mode in _order(plan["modes"], r):
                sps, placed, flat = _one(mode, model, transport, rank, plan["warmup"][model],
                                         plan["steps"][model])
                finals[mode] = flat
                print("RESULT " + json.dumps({"repeat": r, "model": model, "mode": mode, "rank": rank,
                                              "steps_per_s": sps, "placed": placed}), flush=True)
            ref = finals[next(m for m in plan["modes"] if m in DDP_MODES)]
            diff = max(((ref - f).abs().max() / ref.abs().max().clamp_min(1e-12)).item()
                       for f in finals.values())
            print("RESULT " + json.dumps({"repeat": r, "model": model, "rank": rank,
                                          "param_diff": diff}), flush=True)
    transport.close()


# ---------------------------------------------------------------------------------------
# driver side
# ---------------------------------------------------------------------------------------
class Run:
    """The two worker processes of the whole invocation, around a store on 127.0.0.1.

    Workers get their own sessions, so only the driver sees Ctrl-C; leaving the ``with``
    block (normally, on an error or on Ctrl-C) kills whatever is still running.
    """

    def __init__(self, plan: dict, logdir: str, timeout_s: float):
        self.plan, self.logdir, self.timeout_s = plan, logdir, timeout_s
        self.procs: list[subprocess.Popen] = []
        self.logs: list[tuple[str, str]] = []
        self.store = None

    def __enter__(self):
        from distml.comm.transport import Transport
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        port = sock.getsockname()[1]
        self.store = Transport.host_store(sock, timeout_s=300.0)
        sock.detach()                 # the store owns the listening fd now
        env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
        for rank in range(WORLD):
            cmd = [sys.executable, os.path.abspath(__file__), "--_worker",
                   "--rank", str(rank), "--port", str(port), "--plan", json.dumps(self.plan)]
            out = os.path.join(self.logdir, f"worker{rank}.out")
            err = os.path.join(self.logdir, f"worker{rank}.err")
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
                    raise RuntimeError(f"worker {rank} exited with "
                                       f"{p.returncode}:\n{_tail(self.logs[rank][1])}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"workers did not finish within {self.timeout_s:g} s")
            time.sleep(0.5)
        outs = []
        for rank, p in enumerate(self.procs):
            if p.returncode != 0:
                raise RuntimeError(f"worker {rank} exited with "
                                   f"{p.returncode}:\n{_tail(self.logs[rank][1])}")
            with open(self.logs[rank][0]) as f:
                lines = [ln for ln in f.read().splitlines() if ln.startswith("RESULT ")]
            if not lines:
                raise RuntimeError(f"worker {rank} printed no result:\n"
                                   f"{_tail(self.logs[rank][1])}")
            outs += [json.loads(ln[len("RESULT "):]) for ln in lines]
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


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke check: fewer steps, 1 repeat, mlp and cnn")
    ap.add_argument("--models", default=None, help="comma-separated subset (diagnosis)")
    ap.add_argument("--modes", default=None,
                    help="comma-separated subset (diagnosis); also distml_placed / distml_unplaced "
                         "(placement forced on / off)")
    ap.add_argument("--timeout", type=float, default=5400.0, help="seconds for the whole invocation")
    # worker-only arguments
    ap.add_argument("--_worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--rank", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--plan", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        worker(args)
        return 0

    quick = PROTOCOL["quick"] if args.quick else {}
    repeats = quick.get("repeats", PROTOCOL["repeats"])
    scale = quick.get("steps_scale", 1.0)
    models = args.models.split(",") if args.models else quick.get("models", PROTOCOL["models"])
    modes = args.modes.split(",") if args.modes else PROTOCOL["modes"]
    if set(models) - set(WORKLOADS):
        ap.error(f"--models: any of {', '.join(WORKLOADS)}")
    if set(modes) - set(MODES) or "distml" not in modes or not set(modes) & set(DDP_MODES):
        ap.error(f"--modes: 'distml', at least one DDP configuration, any of {', '.join(MODES)}")
    plan = {"repeats": repeats, "models": models, "modes": modes,
            "steps": {m: max(1, int(PROTOCOL["steps"][m] * scale)) for m in models},
            "warmup": {m: max(1, int(PROTOCOL["warmup"][m] * scale)) for m in models}}

    def _on_term(signum, frame):   # make `kill` clean up like Ctrl-C does
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    load_before = os.getloadavg()
    tmp = tempfile.mkdtemp(prefix="vs_ddp_")
    try:
        with Run(plan, tmp, args.timeout) as run:
            results = run.results()
    except KeyboardInterrupt:
        print("interrupted: workers stopped", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"vs_ddp failed: {e}", file=sys.stderr)
        return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    loads = {"before": load_before, "after": os.getloadavg()}

    # per (model, mode): per-repeat steps/s, the mean of the two workers
    rows: dict[tuple[str, str], list[dict]] = {}
    diffs: dict[str, list[float]] = {}
    for r in range(repeats):
        for model in models:
            for mode in modes:
                mine = [x for x in results if x.get("mode") == mode and x["model"] == model
                        and x["repeat"] == r]
                rows.setdefault((model, mode), []).append(
                    {"steps_per_s": statistics.mean(x["steps_per_s"] for x in mine),
                     "placed": all(x["placed"] for x in mine)})
            diffs.setdefault(model, []).extend(x["param_diff"] for x in results
                                               if "param_diff" in x and x["model"] == model
                                               and x["repeat"] == r)

    line: dict = {"bench": "vs_ddp"}
    per_mode, summary_rows, headline = {}, [], []
    for model in models:
        sps = {m: [x["steps_per_s"] for x in rows[(model, m)]] for m in modes}
        best = max((m for m in modes if m in DDP_MODES), key=lambda m: statistics.fmean(sps[m]))
        ratio, lo, hi = ratio_ci(sps["distml"], sps[best])
        line.update({f"{model}_ratio": round(ratio, 3), f"{model}_ratio_ci": [round(lo, 3), round(hi, 3)],
                     f"{model}_best_ddp": best,
                     f"{model}_param_diff": float(f"{max(diffs[model]):.2e}")})
        headline.append(f"{model} {ratio:.2f}× [{lo:.2f}, {hi:.2f}]")
        for m in modes:
            mr, mlo, mhi = ratio_ci(sps[m], sps[best])
            per_mode[f"{model}/{m}"] = {"steps_per_s": sps[m],
                                        "placed": [x["placed"] for x in rows[(model, m)]]}
            summary_rows.append([model, m, f"{statistics.fmean(sps[m]):.1f}",
                                 f"{mr:.3f} [{mlo:.3f}, {mhi:.3f}]" + (" (best DDP)" if m == best else ""),
                                 f"{sum(x['placed'] for x in rows[(model, m)])}/{repeats}"])
    line.update(repeats=repeats,
                headline="distml vs the best DDP configuration (steps/s, 95% CI): " + ", ".join(headline))
    details = {"runs": per_mode, "loadavg": loads,
               "tables": [table("Steps/s per worker against the best DDP configuration (same invocation)",
                                ["model", "configuration", "steps/s", "÷ best DDP [95% CI]",
                                 "placed"], summary_rows)]}
    return finish(line, PROTOCOL, quick=args.quick, details=details)


if __name__ == "__main__":
    sys.exit(main())
