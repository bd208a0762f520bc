"""The Python API: ``distml.run``, ``distml.wrap``, ``distml.register``.

Example::

    import distml
    if __name__ == "__main__":     # required: every worker process imports this script
        summary = distml.run("examples/quickstart.toml", overrides=["train.epochs=1"])
        # or your own module and data, no config file:
        summary = distml.run({"workers": 2, "optim": {"name": "sgd", "lr": 0.05}},
                             model=MyNet(), train_data=train_set, test_data=test_set)

Without the guard every worker would run the script's ``distml.run`` again; distml then
stops with exit code 2 and one line naming the fix.
"""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path
from typing import Any

from distml.config import RunConfig, load_config
from distml.errors import ConfigError, UserError
from distml.runtime.build import UserParts, build_algorithm, build_source, make_plan, registries
from distml.runtime.devices import resolve_device
from distml.runtime.launcher import (EXIT_USER, UNGUARDED_MAIN, LaunchFailed, launch_local,
                                     launch_local_restarting, refuse_in_worker_import)
from distml.runtime.metrics import write_json_atomic
from distml.runtime.plan import add_roles
from distml.runtime.rundir import (check_run_dir_writable, choose_run_dir, prepare_run_dir,
                                   write_config, write_user_parts)
from distml.runtime.userparts import describe_user_parts
from distml.runtime.worker import WorkerJob, read_summary
from distml.runtime.wrap import DistributedOptimizer, init, wrap  # noqa: F401  (public API)


def register(kind: str, name: str, obj=None, **meta):
    """Register a user model, loss, optimizer, data source, partition or algorithm.

    Use as ``distml.register("model", "mynet", factory)`` or as a decorator. Workers are
    separate processes: register at the top level of your script (not under
    ``if __name__ == "__main__"``) so each worker's import of the script registers too.

    Raises:
        ConfigError: unknown kind (the valid ones are listed).
    """
    regs = registries()
    if kind not in regs:
        raise ConfigError(f"unknown registry kind '{kind}'; valid: {', '.join(regs)}")
    return regs[kind].register(name, obj, replace=True, user=True, **meta)


def _optimizer_params(name: str) -> set[str] | None:
    optimizers = registries()["optimizer"]
    return set(optimizers.parameters(name)) if name in optimizers else None


def load_run_config(config: str | os.PathLike | dict | RunConfig | None,
                    overrides: list[str] | None = None) -> RunConfig:
    """A RunConfig from a TOML path, a dict in the TOML's shape or a RunConfig, with
    ``--set``-style overrides (an ``optim.name`` override drops the old optimizer's
    parameters the new one does not take, with a note on stderr)."""
    if isinstance(config, RunConfig):
        config = config.to_dict()
    if config is None or isinstance(config, dict):
        return load_config(base=config or {}, overrides=overrides, optimizer_params=_optimizer_params)
    return load_config(Path(config), overrides=overrides, optimizer_params=_optimizer_params)


def _user_parts(model, train_data, test_data, loss, task) -> UserParts | None:
    if model is None and train_data is None and loss is None:
        return None
    source = None
    if train_data is not None:
        from distml.partition.user_data import DatasetSource
        if test_data is None:
            raise ConfigError("train_data needs test_data too (the run evaluates on it)")
        source = DatasetSource(train_data, test_data, task=task)
    return UserParts(model=model, source=source, loss=loss)


def preflight(cfg: RunConfig, user: UserParts | None = None, out: str | os.PathLike | None = None,
              resume: bool = False, runs_root: str | os.PathLike = "runs") -> dict[str, Any]:
    """Every check that can be made before a process starts, shared by ``--dry-run``,
    ``compare`` and the real run: names, parameters and data (:func:`make_plan`), device
    and backend on this host, and the run folder. Returns the plan with the resolved
    ``backend``, ``device`` and ``run_dir``."""
    resolved = add_roles(cfg, make_plan(cfg, user), lambda: build_source(cfg, user))
    device, backend = resolve_device(cfg.train.device, cfg.comm.backend, resolved["processes"])
    run_dir = choose_run_dir(cfg.name, out, resume, root=runs_root)
    check_run_dir_writable(run_dir)
    return {**resolved, "backend": backend, "device": device, "run_dir": str(run_dir)}


def check_restarts(cfg: RunConfig, max_restarts: int) -> None:
    """Refuse ``max_restarts`` (``--max-restarts``) where the config cannot use it, before
    any process starts (a dry run says the same)."""
    if int(max_restarts) != max_restarts or max_restarts < 0:
        raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts}")
    if cfg.faults.on_worker_loss == "restart" and not max_restarts:
        raise ConfigError("faults.on_worker_loss = 'restart' needs --max-restarts N (N >= 1, "
                          "max_restarts in the Python API)")
    if cfg.faults.on_worker_loss == "continue" and max_restarts and not build_algorithm(cfg).joinable:
        raise ConfigError(f"algorithm '{cfg.algorithm.name}' cannot admit a replacement into the "
                          "running group (faults.on_worker_loss = 'continue' with --max-restarts "
                          "works with sync_sgd, local_sgd, diloco and gossip); drop --max-restarts "
                          "to continue without replacements")
    wait = cfg.faults.join_wait_s
    if wait and not max_restarts:
        raise ConfigError("faults.join_wait_s waits for a replacement, which needs --max-restarts N "
                          "(N >= 1); give it or remove join_wait_s")
    if wait > cfg.comm.timeout_s / 2:
        raise ConfigError(f"faults.join_wait_s must be at most comm.timeout_s / 2 = "
                          f"{cfg.comm.timeout_s / 2:g} (the other members wait in a collective "
                          f"meanwhile), got {wait:g}; lower it or raise comm.timeout_s")


def plan(config=None, *, overrides: list[str] | None = None, model=None, train_data=None,
         test_data=None, loss=None, task: str | None = None, out: str | os.PathLike | None = None,
         resume: bool = False, runs_root: str | os.PathLike = "runs",
         max_restarts: int = 0) -> dict[str, Any]:
    """Validate a config exactly as :func:`run` does and return the resolved plan (what
    ``--dry-run`` prints); starts no process and creates no folder."""
    cfg = load_run_config(config, overrides)
    check_restarts(cfg, max_restarts)
    return preflight(cfg, _user_parts(model, train_data, test_data, loss, task), out, resume,
                     runs_root)


def run(config=None, *, overrides: list[str] | None = None, workers: int | None = None,
        out: str | os.PathLike | None = None, resume: bool = False, stop_after: int | None = None,
        max_restarts: int = 0, model=None, train_data=None, test_data=None, loss=None,
        task: str | None = None, runs_root: str | os.PathLike = "runs") -> dict[str, Any] | None:
    """Train with local worker processes on 127.0.0.1 and return ``summary.json``'s content.

    Call it under ``if __name__ == "__main__":``: workers import the calling script, and
    without the guard distml stops with exit code 2 and one line naming the fix.

    Args:
        config: a TOML path, a dict in the TOML's shape, or a RunConfig.
        overrides: ``key=value`` strings as with ``--set``.
        workers: overrides ``workers``.
        out: the run folder (default ``runs/<name>``, or ``runs/<name>-2``, ... when taken).
        resume: continue from the run folder's latest checkpoint.
        stop_after: stop after this many steps with a checkpoint (resume later).
        max_restarts: after a worker fails, stop the group and start it again from the
            latest committed checkpoint, up to this many times (``summary["restarts"]``).
        model: an ``nn.Module`` (each worker trains its own copy; read the result from
            ``model.pt`` in the run folder) or ``(input_shape, num_classes) -> nn.Module``;
            a class or function importable from a module (not the script) is recorded in
            the run folder so ``distml evaluate`` can rebuild it.
        train_data, test_data: ``torch.utils.data.Dataset`` of ``(x, y)`` pairs.
        loss: ``(output, target) -> loss``; default from the task.
        task: "classification" or "regression" for user data (inferred if omitted).

    Returns:
        The summary dict (its ``run_dir``: the folder used), or None when stopped early by
        ``stop_after``.

    Raises:
        UserError: bad config, data or arguments (before any process starts, where it can
            be checked); LaunchFailed: a worker failed.
    """
    return run_to_folder(config, overrides=overrides, workers=workers, out=out, resume=resume,
                         stop_after=stop_after, max_restarts=max_restarts, model=model,
                         train_data=train_data, test_data=test_data, loss=loss, task=task,
                         runs_root=runs_root)[1]


def run_to_folder(config=None, *, overrides: list[str] | None = None, workers: int | None = None,
                  out: str | os.PathLike | None = None, resume: bool = False,
                  stop_after: int | None = None, max_restarts: int = 0, model=None,
                  train_data=None, test_data=None, loss=None, task: str | None = None,
                  runs_root: str | os.PathLike = "runs",
                  show_plan=None) -> tuple[Path, dict[str, Any] | None]:
    """:func:`run`, returning the run folder really used with the summary (None when
    stopped early), e.g. for a resume hint; ``show_plan(plan)`` sees the checked plan
    (with the run folder) before any process starts."""
    refuse_in_worker_import()
    if workers is not None:
        overrides = [*(overrides or []), f"workers={int(workers)}"]
    cfg = load_run_config(config, overrides)
    check_restarts(cfg, max_restarts)
    user = _user_parts(model, train_data, test_data, loss, task)
    resolved = preflight(cfg, user, out, resume, runs_root)  # every check before a process starts
    run_dir = prepare_run_dir(cfg.name, out, resume, root=runs_root)
    if show_plan is not None:
        show_plan({**resolved, "run_dir": str(run_dir)})
    write_config(run_dir, cfg.to_dict())
    if user is not None:
        write_user_parts(run_dir, describe_user_parts(model, loss, train_data is not None))
    job = WorkerJob(config=cfg.to_dict(), out_dir=str(run_dir), resume=resume,
                    stop_after=stop_after, user=user, registrations=_user_registrations())
    try:
        if max_restarts:
            launch_local_restarting(job, resolved["processes"], cfg.comm.timeout_s, int(max_restarts),
                                    why_no_checkpoint=_why_no_checkpoint(cfg))
        else:
            launch_local(job, resolved["processes"], cfg.comm.timeout_s)
    except LaunchFailed as e:
        if e.first.line == UNGUARDED_MAIN:     # the script cannot work as written: say so, once
            print(f"distml: error: {UNGUARDED_MAIN}", file=sys.stderr)
            raise SystemExit(EXIT_USER) from None
        raise
    summary = read_summary(run_dir)
    if summary is not None:
        summary["run_dir"] = str(run_dir)
        write_json_atomic(run_dir / "summary.json", summary)
    return run_dir, summary


def _why_no_checkpoint(cfg: RunConfig) -> str | None:
    """Why a restart of this run would start over from step 0, if it always would."""
    if not build_algorithm(cfg).mid_run_checkpoints:
        return f"{cfg.algorithm.name} writes no mid-run checkpoints"
    if not cfg.train.checkpoint_every:
        return "train.checkpoint_every = 0"
    return None


def _user_registrations() -> list[tuple[str, str, Any, dict]]:
    """Entries added with :func:`register` that can travel to spawned workers.

    Workers re-import the user's script, which registers top-level entries again; those
    that cannot be pickled (lambdas) rely on that.
    """
    out = []
    for kind, reg in registries().items():
        for name in reg.names():
            meta = reg.meta(name)
            if meta.get("user"):
                try:
                    pickle.dumps(reg.get(name))
                except Exception:
                    continue
                out.append((kind, name, reg.get(name), meta))
    return out


def split_values(text: str) -> list[str]:
    """Split ``v1,v2,[1,2]`` on the commas that are not inside brackets, braces or quotes."""
    out, depth, quote, cur = [], 0, None, ""
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        out.append(cur.strip())
    return out


def variants(vary: list[str]) -> list[list[str]]:
    """The cartesian product of ``--vary key=v1,v2`` options, as lists of ``key=value`` overrides.

    Raises:
        ConfigError: an option without ``=`` or without values.
    """
    axes = []
    for item in vary:
        key, sep, values = item.partition("=")
        vals = split_values(values)
        if not sep or not key.strip() or not vals:
            raise ConfigError(f"--vary expects key=v1,v2,... (e.g. optim.lr=0.01,0.1), got {item!r}")
        axes.append([f"{key.strip()}={v}" for v in vals])
    combos: list[list[str]] = [[]]
    for axis in axes:
        combos = [c + [o] for c in combos for o in axis]
    return combos


def _label(overrides: list[str]) -> str:
    parts = []
    for o in overrides:
        key, _, value = o.partition("=")
        parts.append(f"{key.split('.')[-1]}={value}")
    text = ",".join(parts) or "base"
    return "".join(c if c.isalnum() or c in "=,.-_" else "_" for c in text)[:120]


def compare(configs: list[str | os.PathLike], vary: list[str] | None = None, repeat: int = 1,
            out: str | os.PathLike | None = None, overrides: list[str] | None = None,
            progress: bool = True) -> dict[str, Any]:
    """Run every config × variant × repeat sequentially, then report on all of them.

    Returns:
        ``make_report``'s result (``report.md``, ``report.json``, plots and the
        self-contained ``report.html``) plus ``"runs"``: the run folders.
    """
    from distml.runtime.report import make_report
    refuse_in_worker_import()
    if repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {repeat}")
    if not configs:
        raise ConfigError("give at least one config file")
    combos = variants(vary or [])
    first = load_run_config(configs[0], overrides)
    root = Path(out) if out is not None else Path("runs") / f"compare-{first.name}"
    jobs = []
    for path in configs:
        stem = Path(path).stem
        for combo in combos:
            for r in range(repeat):
                label = (f"{stem}-" if len(configs) > 1 else "") + _label(combo) + (f"-r{r}" if repeat > 1 else "")
                jobs.append((path, combo, r, label))
    for path, combo, r, label in jobs:  # the full plan of every variant before the first run starts
        try:
            preflight(load_run_config(path, [*(overrides or []), *combo]), out=root / label)
        except UserError as e:
            raise type(e)(f"variant {label}: {e}") from None
    from tqdm import tqdm
    run_dirs = []
    bar = tqdm(jobs, desc="compare", unit="run", disable=not progress or None)
    for path, combo, r, label in bar:
        bar.set_postfix_str(label[:40])
        seed_shift = [f"seed={load_run_config(path, overrides).seed + r}"] if repeat > 1 else []
        summary = run(path, overrides=[*(overrides or []), *combo, *seed_shift, "train.progress=false"],
                      out=root / label)
        run_dirs.append(Path(summary["run_dir"]))
    result = make_report(run_dirs, root, html=True)
    result["runs"] = [str(d) for d in run_dirs]
    return result
