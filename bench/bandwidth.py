"""Time to accuracy on a slow network: fp32 sync SGD vs communication-efficient training.

Two hosts in network namespaces (``distml.runtime.testbed``), each host's egress capped
at ``--rate`` (100 Mbit/s by default) with tc tbf; one worker per host, started by
torchrun with c10d rendezvous (as on a cluster). Fashion-MNIST, the MLP 784-512-512-10,
momentum SGD, batch 64 per worker. Every configuration trains until rank 0's test
accuracy reaches ``--target`` (evaluation every ``--eval-every`` steps, its time
excluded from the clock, docs/design.md §5); ``time_to_target`` comes from summary.json.
Needs root (namespaces); deletes everything it creates.

    python bench/bandwidth.py                  # the documented run: 100mbit, target 0.84
    python bench/bandwidth.py --quick          # smoke check: target 0.75, same code path

Ends with one JSON line (docs/design.md §5)::

    {"bench": "bandwidth", "speedup": ..., "best": "...", "time_to_target": {...}}

``speedup`` = fp32's time to target ÷ the best efficient configuration's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from compression import METHODS, config_text  # noqa: E402  (one place for the method table)

from distml.runtime.testbed import can_make_namespaces, hosts  # noqa: E402

CANDIDATES = ("local_h16_sign_ef", "local_h16_powersgd_r2", "powersgd_r2", "local_sgd_h16_pipeline")


def run_on_testbed(hs, cfg: Path, out: Path, timeout: float) -> dict:
    """One torchrun job across the hosts; returns rank 0's summary."""
    port = random.randint(29600, 29900)
    master = hs[0].addr
    procs = []
    try:
        for node, h in enumerate(hs):
            env = dict(os.environ, GLOO_SOCKET_IFNAME=h.iface, PYTHONUNBUFFERED="1",
                       OMP_NUM_THREADS="1")
            cmd = ["ip", "netns", "exec", h.ns, sys.executable, "-m", "torch.distributed.run",
                   "--nnodes", str(len(hs)), "--nproc-per-node", "1", "--node-rank", str(node),
                   "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{master}:{port}",
                   "--rdzv-id", f"bw{port}", "--max-restarts", "0",
                   # every namespace shares the hostname: say who hosts the store
                   "--rdzv-conf", f"is_host={1 if node == 0 else 0}", "--local-addr", h.addr,
                   "-m", "distml", "run", str(cfg), "--out", str(out / f"host{node}")]
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True, cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            time.sleep(0.5)
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait(10)
    if any(p.returncode != 0 for p in procs):
        raise SystemExit("a run failed:\n" + "\n=====\n".join(log[-2000:] for log in logs))
    return json.loads((out / "host0" / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="target 0.75: a smoke check")
    ap.add_argument("--rate", default="100mbit")
    ap.add_argument("--target", type=float, default=None)
    ap.add_argument("--eval-every", type=int, default=None)
    ap.add_argument("--epochs", type=float, default=3.0, help="the most any run trains")
    ap.add_argument("--candidates", default=",".join(CANDIDATES))
    args = ap.parse_args()
    reason = can_make_namespaces()
    if reason:
        raise SystemExit(f"bench/bandwidth.py needs network namespaces: {reason}")
    target = args.target or (0.75 if args.quick else 0.84)
    eval_every = args.eval_every or (20 if args.quick else 50)
    from distml.algorithms import ALGORITHMS
    names = ["fp32"]
    for c in (c for c in args.candidates.split(",") if c):
        algorithm, comm = METHODS[c]
        if comm.get("codec") and "codec" not in ALGORITHMS.parameters(algorithm["name"]):
            print(f"  skipped {c}: {algorithm['name']} takes no comm.codec in this version",
                  file=sys.stderr)
        else:
            names.append(c)
    ttt, steps, wall, mb = {}, {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="distml-bw-") as tmp, hosts(2, rate=args.rate) as hs:
        for name in names:
            algorithm, comm = METHODS[name]
            text = config_text("mlp", algorithm, comm, 0, args.epochs)
            text = text.replace("eval_every = 0", f"eval_every = {eval_every}\n"
                                f"target_accuracy = {target}\nstop_at_target = true")
            cfg = Path(tmp) / f"{name}.toml"
            cfg.write_text(text)
            t0 = time.perf_counter()
            s = run_on_testbed(hs, cfg, Path(tmp) / name, timeout=3600)
            ttt[name], steps[name], wall[name] = s["time_to_target"], s["steps"], s["wall_seconds"]
            mb[name] = s["bytes_sent"] / 1e6
            print(f"  {name:24s} time to {target}: {ttt[name]}  steps {s['steps']}  wall "
                  f"{s['wall_seconds']:.1f}s  acc {s['test_accuracy']:.4f}  {mb[name]:.1f} MB "
                  f"({time.perf_counter() - t0:.0f}s total)", file=sys.stderr, flush=True)
    reached = [n for n in names[1:] if ttt[n] is not None]
    best = min(reached, key=lambda n: ttt[n]) if reached else None
    speedup = (ttt["fp32"] / ttt[best]) if best and ttt["fp32"] is not None else None
    print(json.dumps({"bench": "bandwidth", "rate": args.rate, "target": target, "quick": args.quick,
                      "speedup": None if speedup is None else round(speedup, 2), "best": best,
                      "time_to_target": ttt, "steps": steps, "wall_seconds": wall,
                      "mb_sent": {k: round(v, 2) for k, v in mb.items()}}))


if __name__ == "__main__":
    main()
