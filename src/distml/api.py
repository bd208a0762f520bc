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
from distml.runtime.launcher import launch_local
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
        model=None, train_data=None, test_data=None, loss=None, task: str | None = None,
        runs_root: str | os.PathLike = "runs") -> dict[str, Any] | None:
    """Train with local worker processes on 127.0.0.1 and return ``summary.json``'s content.

    Args:
        config: a TOML path, a dict in the TOML's shape, or a RunConfig.
        overrides: ``key=value`` strings as with ``--set``.
        workers: overrides ``workers``.
        out: the run folder (default ``runs/<name>``).
        resume: continue from the run folder's latest checkpoint.
        stop_after: stop after this many steps with a checkpoint (resume later).
        model: an ``nn.Module`` or ``(input_shape, num_classes) -> nn.Module``.
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
    cfg = _as_config(config, overrides)
    user = _user_parts(model, train_data, test_data, loss, task)
    resolved = make_plan(cfg, user)  # every name, parameter and data file checked here
    run_dir = prepare_run_dir(cfg.name, out, resume, root=runs_root)
    write_config(run_dir, cfg.to_dict())
    job = WorkerJob(config=cfg.to_dict(), out_dir=str(run_dir), resume=resume,
                    stop_after=stop_after, user=user, registrations=_user_registrations())
    launch_local(job, resolved["processes"], cfg.comm.timeout_s)
    summary = read_summary(run_dir)
    if summary is not None:
        summary["run_dir"] = str(run_dir)
    return summary


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
