"""The Python API: ``distml.run``, ``distml.wrap``, ``distml.register``.

Example::

    import distml
    summary = distml.run("examples/quickstart.toml", overrides=["train.epochs=1"])
    # or your own module and data, no config file:
    summary = distml.run({"workers": 2, "optim": {"name": "sgd", "lr": 0.05}},
                         model=MyNet(), train_data=train_set, test_data=test_set)
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from distml.config import RunConfig, load_config, parse_config
from distml.errors import ConfigError
from distml.runtime.build import UserParts, make_plan, registries
from distml.runtime.launcher import launch_local, launch_local_restarting
from distml.runtime.rundir import prepare_run_dir, write_config
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


def _as_config(config: str | os.PathLike | dict | RunConfig | None, overrides: list[str] | None) -> RunConfig:
    if isinstance(config, RunConfig):
        return load_config(base=config.to_dict(), overrides=overrides)
    if config is None or isinstance(config, dict):
        return load_config(base=config or {}, overrides=overrides)
    return load_config(Path(config), overrides=overrides)


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


def plan(config=None, *, overrides: list[str] | None = None, model=None, train_data=None,
         test_data=None, loss=None, task: str | None = None) -> dict[str, Any]:
    """Validate a config and return the resolved plan (what ``--dry-run`` prints)."""
    cfg = _as_config(config, overrides)
    return make_plan(cfg, _user_parts(model, train_data, test_data, loss, task))


def run(config=None, *, overrides: list[str] | None = None, workers: int | None = None,
        out: str | os.PathLike | None = None, resume: bool = False, stop_after: int | None = None,
        max_restarts: int = 0, model=None, train_data=None, test_data=None, loss=None,
        task: str | None = None, runs_root: str | os.PathLike = "runs") -> dict[str, Any] | None:
    """Train with local worker processes on 127.0.0.1 and return ``summary.json``'s content.

    Args:
        config: a TOML path, a dict in the TOML's shape, or a RunConfig.
        overrides: ``key=value`` strings as with ``--set``.
        workers: overrides ``workers``.
        out: the run folder (default ``runs/<name>``).
        resume: continue from the run folder's latest checkpoint.
        stop_after: stop after this many steps with a checkpoint (resume later).
        max_restarts: after a worker fails, stop the group and start it again from the
            latest committed checkpoint, up to this many times (``summary["restarts"]``).
        model: an ``nn.Module`` (each worker trains its own copy; read the result from
            ``model.pt`` in the run folder) or ``(input_shape, num_classes) -> nn.Module``.
        train_data, test_data: ``torch.utils.data.Dataset`` of ``(x, y)`` pairs.
        loss: ``(output, target) -> loss``; default from the task.
        task: "classification" or "regression" for user data (inferred if omitted).

    Returns:
        The summary dict, or None when stopped early by ``stop_after``.

    Raises:
        UserError: bad config, data or arguments (before any process starts, where it can
            be checked); LaunchFailed: a worker failed.
    """
    if workers is not None:
        overrides = [*(overrides or []), f"workers={int(workers)}"]
    if int(max_restarts) != max_restarts or max_restarts < 0:
        raise ConfigError(f"max_restarts must be an integer >= 0, got {max_restarts}")
    cfg = _as_config(config, overrides)
    user = _user_parts(model, train_data, test_data, loss, task)
    resolved = make_plan(cfg, user)  # every name, parameter and data file checked here
    run_dir = prepare_run_dir(cfg.name, out, resume, root=runs_root)
    write_config(run_dir, cfg.to_dict())
    job = WorkerJob(config=cfg.to_dict(), out_dir=str(run_dir), resume=resume,
                    stop_after=stop_after, user=user, registrations=_user_registrations())
    if max_restarts:
        launch_local_restarting(job, resolved["processes"], cfg.comm.timeout_s, int(max_restarts),
                                why_no_checkpoint=_why_no_checkpoint(cfg))
    else:
        launch_local(job, resolved["processes"], cfg.comm.timeout_s)
    summary = read_summary(run_dir)
    if summary is not None:
        summary["run_dir"] = str(run_dir)
    return summary


def _why_no_checkpoint(cfg: RunConfig) -> str | None:
    """Why a restart of this run would start over from step 0, if it always would."""
    algo = registries()["algorithm"].get(cfg.algorithm.name)
    if not getattr(algo, "mid_run_checkpoints", True):
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
        ``make_report``'s result plus ``"runs"``: the run folders.
    """
    from distml.runtime.report import make_report
    if repeat < 1:
        raise ConfigError(f"--repeat must be >= 1, got {repeat}")
    if not configs:
        raise ConfigError("give at least one config file")
    combos = variants(vary or [])
    first = _as_config(configs[0], overrides)
    root = Path(out) if out is not None else Path("runs") / f"compare-{first.name}"
    jobs = []
    for path in configs:
        stem = Path(path).stem
        for combo in combos:
            for r in range(repeat):
                label = (f"{stem}-" if len(configs) > 1 else "") + _label(combo) + (f"-r{r}" if repeat > 1 else "")
                jobs.append((path, combo, r, label))
    for path, combo, r, _ in jobs:      # validate every variant before the first run starts
        _as_config(path, [*(overrides or []), *combo])
    from tqdm import tqdm
    run_dirs = []
    bar = tqdm(jobs, desc="compare", unit="run", disable=not progress or None)
    for path, combo, r, label in bar:
        bar.set_postfix_str(label[:40])
        seed_shift = [f"seed={_as_config(path, overrides).seed + r}"] if repeat > 1 else []
        summary = run(path, overrides=[*(overrides or []), *combo, *seed_shift, "train.progress=false"],
                      out=root / label)
        run_dirs.append(Path(summary["run_dir"]))
    result = make_report(run_dirs, root)
    result["runs"] = [str(d) for d in run_dirs]
    return result
