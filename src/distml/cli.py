"""Command line: ``distml run | launch | evaluate | compare | report | doctor | list``.

Exit codes: 0 success, 2 a user error (config, data, arguments; one line), 1 an internal
failure or a dead peer (one line naming the rank), 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from distml import __version__
from distml.errors import DataError, UserError

EXIT_USER = 2


def one_line(text: str) -> str:
    """An error message as one printable line: a key or value copied from the input may hold
    newlines or other control characters, which are shown escaped instead."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def _error(text: str) -> None:
    print(f"distml: error: {one_line(text)}", file=sys.stderr)


class _Parser(argparse.ArgumentParser):
    """argparse with distml's one-line errors (exit code 2) instead of a usage block."""

    def error(self, message: str):
        self.exit(EXIT_USER, f"distml: error: {one_line(message)} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="distml", description="Distributed machine learning, "
                "every strategy on the menu.")
    p.add_argument("--version", action="version", version=f"distml {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="train from a TOML config (local workers, or under torchrun)")
    r.add_argument("config", nargs="?", help="TOML file (optional with --resume: the run's own config)")
    r.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set optim.lr=0.1 (TOML syntax)")
    r.add_argument("--workers", type=int, help="number of worker processes")
    r.add_argument("--out", help="run folder (default runs/<name>)")
    r.add_argument("--resume", action="store_true", help="continue from the run folder's latest checkpoint")
    r.add_argument("--stop-after", type=int, metavar="STEPS",
                   help="stop after STEPS steps with a checkpoint (continue later with --resume)")
    r.add_argument("--max-restarts", type=int, default=0, metavar="N",
                   help="after a worker fails, restart all workers from the latest checkpoint, up "
                        "to N times (under torchrun, give --max-restarts to torchrun instead)")
    r.add_argument("--dry-run", action="store_true", help="validate and print the plan; no training")
    r.add_argument("--json", action="store_true", help="print the plan or summary as JSON")

    la = sub.add_parser("launch", help="start N local copies of your own training script")
    la.add_argument("-n", "--nproc", type=int, required=True, help="number of processes")
    la.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for peers")
    la.add_argument("script")
    la.add_argument("args", nargs=argparse.REMAINDER)

    e = sub.add_parser("evaluate", help="reload a run's model.pt and evaluate it on the test set")
    e.add_argument("run_dir")

    d = sub.add_parser("doctor", help="say which rank waited for which in a run that hung")
    d.add_argument("run_dir")

    c = sub.add_parser("compare", help="run config variants one after another and compare them")
    c.add_argument("configs", nargs="+", help="one or more TOML files")
    c.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2",
                   help="a config key and the values to try (repeatable: the cartesian product)")
    c.add_argument("--repeat", type=int, default=1, help="runs per variant (seed, seed+1, ...)")
    c.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    c.add_argument("--out", help="folder for the runs and the report (default runs/compare-<name>)")

    rp = sub.add_parser("report", help="plots and a comparison table for finished runs")
    rp.add_argument("run_dirs", nargs="+")
    rp.add_argument("--out", help="report folder (default: report/ in the first run's parent)")
    rp.add_argument("--html", action="store_true",
                    help="also write report.html: one file with the plots inlined, opens without a server")

    sm = sub.add_parser("simulate", help="project a measured run to more workers and another network")
    sm.add_argument("--profile", required=True, metavar="RUN_DIR", help="a finished run to calibrate from")
    sm.add_argument("--workers", default="8,64,512", help="comma-separated worker counts")
    sm.add_argument("--bandwidth", default="10Gbit", help="per-link bandwidth, e.g. 10Gbit, 100Mbit")
    sm.add_argument("--latency", default="20us", help="per-message latency, e.g. 20us, 1ms")
    sm.add_argument("--servers", type=int, default=1, help="parameter servers in the PS projection")
    sm.add_argument("--degree", type=int, default=2, help="gossip graph degree")
    sm.add_argument("--goodput", type=float, default=None,
                    help="TCP payload bytes per link byte (default 0.936: 1500-byte MTU, duplex ACKs; 1 = raw rate)")
    sm.add_argument("--software-latency", default="0", metavar="calibrated|0|VALUE",
                    help="software seconds per message hop added to --latency: 0 (default: the "
                         "physical network alone, for other hosts), calibrated (measured on the "
                         "profile's machine) or a value such as 2ms")
    sm.add_argument("--cores", type=int, default=None,
                    help="cores of a target host; with more ranks than cores on it, compute slows by "
                         "ranks/cores (default: a host per rank with cores to spare)")
    sm.add_argument("--ranks-per-host", type=int, default=None,
                    help="ranks sharing a host's --cores (default: all of them, as on one machine)")
    sm.add_argument("--json", action="store_true")

    li = sub.add_parser("list", help="list registered models, optimizers, sources, algorithms, ...")
    li.add_argument("kind", nargs="?")
    return p


def _under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or (
        "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ)


def cmd_run(args) -> int:
    from distml import api
    from distml.config import load_config

    overrides = list(args.overrides)
    if args.workers is not None:
        if args.workers < 1:
            raise UserError(f"--workers must be >= 1, got {args.workers}")
        overrides.append(f"workers={args.workers}")
    config_path = args.config
    if config_path is None:
        if not (args.resume and args.out):
            raise UserError("give a config file (e.g. examples/quickstart.toml), or --resume --out RUN_DIR")
        saved = Path(args.out) / "config.json"
        try:
            base = json.loads(saved.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise UserError(f"cannot read {saved} ({e}); give the run's config file") from None
        cfg = load_config(base=base, overrides=overrides, where=str(saved))
    else:
        cfg = api.load_run_config(config_path, overrides)

    if args.max_restarts < 0:
        raise UserError(f"--max-restarts must be >= 0, got {args.max_restarts}")
    if args.stop_after is not None and args.stop_after < 1:
        raise UserError(f"--stop-after must be >= 1, got {args.stop_after}")
    if _under_torchrun():
        if args.max_restarts:
            raise UserError("under torchrun, pass --max-restarts to torchrun (its agent restarts "
                            "the workers, which continue from the latest checkpoint)")
        from distml.runtime.worker import WorkerJob, torchrun_main
        out = Path(args.out) if args.out else Path("runs") / cfg.name
        return torchrun_main(WorkerJob(config=cfg.to_dict(), out_dir=str(out), resume=args.resume,
                                       stop_after=args.stop_after))

    with _example_files_hint(config_path):
        return _run_checked(args, cfg)


@contextlib.contextmanager
def _example_files_hint(config_path: str | None):
    """A data file missing for a config that sits next to ``make_example_files.py`` (the
    examples folder): the error says which command makes the files."""
    maker = Path(config_path).parent / "make_example_files.py" if config_path else None
    try:
        yield
    except DataError as e:
        if maker is None or not maker.exists() or "not found" not in str(e):
            raise
        raise DataError(f"{e}; the example data files are made by `python {maker}`") from None


def _run_checked(args, cfg) -> int:
    from distml import api
    from distml.runtime.launcher import LaunchFailed
    from distml.runtime.plan import format_plan

    if args.dry_run:
        plan = api.plan(cfg, out=args.out, resume=args.resume, max_restarts=args.max_restarts)
        print(json.dumps(plan, indent=2, default=str) if args.json else format_plan(plan))
        return 0
    try:
        run_dir, summary = api.run_to_folder(cfg, out=args.out, resume=args.resume,
                                             stop_after=args.stop_after,
                                             max_restarts=args.max_restarts,
                                             show_plan=None if args.json else
                                             lambda plan: print(format_plan(plan), flush=True))
    except LaunchFailed as e:
        _error(f"rank {e.first.rank}: {e.first.line}")
        others = [x for x in e.exits if x.rank != e.first.rank]
        if others:
            print(f"distml: ({len(others)} other rank(s) stopped after it)", file=sys.stderr)
        return EXIT_USER if e.user_error else 1
    if summary is None:
        print(f"distml: stopped after {args.stop_after} steps; continue with "
              f"`distml run --resume --out {run_dir}`")
        return 0
    print(json.dumps(summary, indent=2) if args.json else _format_summary(summary))
    return 0


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _format_summary(s: dict[str, Any]) -> str:
    from io import StringIO

    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"run '{s.get('name')}': {s['algorithm']}, {s['workers']} workers",
              show_header=True, min_width=56)
    t.add_column("metric")
    t.add_column("value", justify="right")
    rows = [("test accuracy", s["test_accuracy"]), ("test loss", s["test_loss"]),
            ("train loss", s["train_loss"]), ("steps", s["steps"]),
            ("wall seconds", s["wall_seconds"]), ("steps / s", s.get("steps_per_second")),
            ("compute s / worker", s["compute_seconds"]), ("comm s / worker", s["comm_seconds"]),
            ("wait s / worker", s["wait_seconds"]), ("MB sent (all workers)", s["bytes_sent"] / 1e6),
            ("time to target s", s["time_to_target"]), ("results", s.get("run_dir"))]
    if s.get("bits_per_token") is not None:        # a language model: test loss is nats per token
        rows[2:2] = [("bits per token", s["bits_per_token"]), ("perplexity", s.get("perplexity"))]
    for k, v in rows:
        t.add_row(k, _fmt(v))
    buf = StringIO()
    Console(file=buf, width=100, force_terminal=False).print(t)
    return buf.getvalue().rstrip()


def cmd_launch(args) -> int:
    from distml.runtime.launcher import launch_script
    if args.nproc < 1:
        raise UserError(f"-n must be >= 1, got {args.nproc}")
    if not Path(args.script).exists():
        raise UserError(f"script not found: {args.script}")
    return launch_script(args.script, args.args, args.nproc, args.timeout)


def cmd_evaluate(args) -> int:
    from distml.runtime.evaluate_run import evaluate_run
    result = evaluate_run(Path(args.run_dir))
    print(json.dumps(result, indent=2))
    return 0


def cmd_doctor(args) -> int:
    from distml.runtime.hang import diagnose_run
    line = diagnose_run(Path(args.run_dir))
    print(f"hang: {line}" if line is not None else
          f"no hang report in {args.run_dir}/logs: no operation neared comm.timeout_s")
    return 0


def cmd_compare(args) -> int:
    from distml import api
    from distml.runtime.launcher import LaunchFailed
    try:
        result = api.compare(args.configs, args.vary, args.repeat, args.out, args.overrides)
    except LaunchFailed as e:
        _error(f"rank {e.first.rank}: {e.first.line}")
        return EXIT_USER if e.user_error else 1
    from distml.runtime.report import terminal_table
    print(terminal_table(result["rows"]))
    print(f"report: {result['markdown']} and {result['html']} (self-contained: open it in a browser)")
    return 0


def cmd_report(args) -> int:
    from distml.runtime.report import make_report, terminal_table
    dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else dirs[0].parent / "report"
    result = make_report(dirs, out, html=args.html)
    print(terminal_table(result["rows"]))
    print(f"report: {result['markdown']} ({len(result['plots'])} plots)")
    if result["html"]:
        print(f"report: {result['html']} (self-contained: open it in a browser)")
    return 0


def cmd_simulate(args) -> int:
    from distml.runtime.simulate import (parse_bandwidth, parse_latency, profile, project,
                                         software_alpha, wire_efficiency)
    try:
        workers = [int(w) for w in args.workers.split(",")]
    except ValueError:
        raise UserError(f"--workers must be comma-separated integers, got {args.workers!r}") from None
    if any(w < 1 for w in workers) or args.servers < 1 or args.degree < 1:
        raise UserError("--workers, --servers and --degree must be >= 1")
    if (args.cores is not None and args.cores < 1) or (args.ranks_per_host is not None and args.ranks_per_host < 1):
        raise UserError("--cores and --ranks-per-host must be >= 1")
    if args.goodput is not None and not 0 < args.goodput <= 1:
        raise UserError(f"--goodput must be in (0, 1], got {args.goodput}")
    prof = profile(Path(args.profile))
    measured_sw = software_alpha(prof)
    alpha_sw = measured_sw if args.software_latency == "calibrated" else parse_latency(args.software_latency)
    goodput = wire_efficiency() if args.goodput is None else args.goodput
    rows = project(prof, workers, parse_bandwidth(args.bandwidth), parse_latency(args.latency),
                   args.servers, args.degree, efficiency=goodput, alpha_sw=alpha_sw,
                   cores=args.cores, ranks_per_host=args.ranks_per_host)
    if args.json:
        print(json.dumps({"profile": prof, "goodput": goodput, "software_latency_s": alpha_sw,
                          "calibrated_software_latency_s": measured_sw, "projection": rows}, indent=2))
        return 0
    ops = ", ".join(f"{op} {o['calls']:g} call(s) {o['bytes'] / 1e6:.3f} MB" for op, o in prof["ops"].items())
    print(f"calibrated from {prof['run']} ({prof['algorithm']}, {prof['workers']} workers): "
          f"compute {prof['compute_per_step'] * 1e3:.2f} ms/step, per worker per step: {ops}")
    print(f"software latency per hop measured there: {measured_sw * 1e3:.3f} ms "
          + ("(used: --software-latency calibrated)" if args.software_latency == "calibrated"
             else f"(not used; projecting with {alpha_sw * 1e3:g} ms: --software-latency calibrated uses it)"))
    from io import StringIO

    from rich.console import Console
    from rich.table import Table
    t = Table(title=f"{args.bandwidth} links × {goodput:.3f} TCP goodput, {args.latency} network + "
                    f"{alpha_sw * 1e3:g} ms software latency per hop")
    for h in ("workers", "payload", "topology", "MB/step", "step ms", "worker-steps/s", "scaling_efficiency"):
        t.add_column(h, justify="left" if h in ("payload", "topology") else "right")
    for r in rows:
        t.add_row(str(r["workers"]), r["payload"], r["topology"], f"{r['bytes_per_step'] / 1e6:.3f}",
                  f"{r['step_seconds'] * 1e3:.2f}", f"{r['worker_steps_per_second']:.1f}",
                  f"{r['scaling_efficiency']:.2f}")
    buf = StringIO()
    Console(file=buf, width=120, force_terminal=False).print(t)
    print(buf.getvalue().rstrip())
    return 0


def cmd_list(args) -> int:
    from distml.runtime.build import registries
    regs = registries()
    kinds = [args.kind] if args.kind else list(regs)
    for kind in kinds:
        if kind not in regs:
            raise UserError(f"unknown kind '{kind}'; valid: {', '.join(regs)}")
        reg = regs[kind]
        print(f"{kind}:")
        for name in reg.names():
            meta = reg.meta(name)
            params = ", ".join(f"{k}={v!r}" if v is not __import__("inspect").Parameter.empty else k
                               for k, v in reg.parameters(name).items()
                               if k not in ("params", "input_shape", "num_classes", "task", "seed",
                                            "optimizer", "total_steps", "codec", "worker_rank"))
            line = f"  {name:<20} {meta.get('summary', '')}"
            if params:
                line += f"\n  {'':<20} params: {params}"
            if meta.get("paper"):
                line += f"\n  {'':<20} paper: {meta['paper']}"
            if kind == "algorithm":
                line += f"\n  {'':<20} supports: {_supports_line(reg.get(name))}"
            print(line)
    return 0


def _supports_line(algorithm) -> str:
    """What an algorithm class declares it honours (``Supports``) and its buffer policy."""
    from distml.algorithms import Algorithm
    if not (isinstance(algorithm, type) and issubclass(algorithm, Algorithm)):
        return "not declared (a factory, not an Algorithm class)"
    s = algorithm.supports
    extras = [w for w, on in (("accumulate_steps", s.accumulation), ("clip_grad_norm", s.clipping),
                              ("distml.wrap", s.wrap)) if on]
    return (f"precision {'/'.join(s.precisions)}; models {s.models}; buffers {algorithm.buffers}"
            + (f"; {', '.join(extras)}" if extras else ""))


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": cmd_run, "launch": cmd_launch, "evaluate": cmd_evaluate, "list": cmd_list,
                "compare": cmd_compare, "report": cmd_report, "simulate": cmd_simulate,
                "doctor": cmd_doctor}
    try:
        return handlers[args.command](args)
    except UserError as e:
        _error(str(e))
        return EXIT_USER
    except KeyboardInterrupt:
        print("distml: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:       # `distml list | head`: the reader left; not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
