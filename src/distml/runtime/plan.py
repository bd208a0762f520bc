"""The plan a person reads: what each process does, for every algorithm family.

``make_plan`` (runtime/build.py) checks a config by building rank 0's parts; here the
checked plan gets the per-rank roles the run really has (data shards, pipeline stages,
tensor-parallel slices, feature blocks, CoCoA's disjoint rows, servers) and the step
count the algorithm really trains for, and is rendered as ``rich`` tables for
``distml run --dry-run`` and the line printed before a run.
"""

from __future__ import annotations

import math
from io import StringIO
from typing import Any

import numpy as np

from distml.algorithms import ALGORITHMS
from distml.config import RunConfig
from distml.optim import is_full_batch
from distml.partition import PARTITIONS, FeatureSplit, make_loader
from distml.registry import split_spec

# algorithms that train one model split across ranks: every rank walks the whole data
# set in the same order (a single worker's view of the partition), one step per batch
_MODEL_PARALLEL = {"pipeline": "pipeline stage", "tensor_parallel": "tensor slice",
                   "feature_split": "feature block"}
# algorithms that train without the configured optimizer
_NO_OPTIMIZER = {"cocoa": "none: CoCoA's local solver is SDCA"}


def spec_text(spec: Any) -> str:
    """``{"name": "sgd", "lr": 0.1}`` as ``sgd(lr=0.1)``; lists joined with " + "."""
    if spec is None or spec == []:
        return "none"
    if isinstance(spec, list):
        return " + ".join(spec_text(s) for s in spec)
    if isinstance(spec, dict):
        rest = {k: v for k, v in spec.items() if k != "name"}
        args = ", ".join(f"{k}={spec_text(v) if isinstance(v, dict) else v}" for k, v in rest.items())
        return f"{spec.get('name', '?')}({args})" if args else str(spec.get("name", "?"))
    return str(spec)


def add_roles(config: RunConfig, plan: dict[str, Any], build_source) -> dict[str, Any]:
    """The plan with ``roles`` (one entry per process) and the steps this algorithm trains.

    Args:
        build_source: builds the run's data source (called only where the roles need
            more than ``plan`` holds: model-parallel algorithms and CoCoA).
    """
    name = config.algorithm.name
    world = config.workers
    roles: list[dict[str, Any]] = []
    steps_per_epoch, total = plan["steps_per_epoch"], plan["total_steps"]
    if name in _MODEL_PARALLEL:
        # the pipeline's schedule needs batches; the others take a full-batch optimizer whole
        full_batch = name != "pipeline" and is_full_batch(split_spec(config.optim.spec(), "optimizer")[0])
        order = make_loader(build_source(), PARTITIONS.build(config.data.partition), 0, 1,
                            config.data.batch_size, config.seed,
                            samples_per_epoch=config.data.samples_per_epoch)
        steps_per_epoch = 1 if full_batch else order.steps_per_epoch
        total = _capped(config, math.ceil(config.train.epochs * steps_per_epoch))
        dims = int(np.prod(plan["data"]["input_shape"]))
        for rank in range(world):
            if name == "feature_split":
                cols = FeatureSplit(dims, world).columns(rank)
                work = f"feature columns {cols.start}..{cols.stop - 1} of {dims}, every sample"
            elif name == "pipeline":
                work = (f"stage {rank + 1} of {world}"
                        + (" (reads the batches)" if rank == 0 else "")
                        + (" (computes the loss)" if rank == world - 1 else ""))
            else:
                work = f"1/{world} of every column/row-parallel Linear pair, every batch"
            roles.append({"rank": rank, "role": _MODEL_PARALLEL[name], "work": work})
    elif name == "cocoa":
        n = len(build_source().train())
        algo = ALGORITHMS.build(config.algorithm.spec())
        rows = [len(part) for part in np.array_split(np.arange(n), world)]
        for rank, count in enumerate(rows):
            roles.append({"rank": rank, "role": "worker (SDCA)",
                          "work": f"{count} of {n} rows (disjoint, every sample kept)"})
        h = algo.local_steps or rows[0]
        steps_per_epoch = max(1, math.ceil(rows[0] / h))
        total = _capped(config, algo.rounds or max(1, math.ceil(config.train.epochs * rows[0] / h)))
    else:
        full_batch = is_full_batch(split_spec(config.optim.spec(), "optimizer")[0])
        # an algorithm that starts fewer processes than workers (Hogwild) forks them itself
        forked = " (forked, shares the model)" if plan["processes"] < world else ""
        for s in plan["shards"]:
            if s["role"] == "server":
                roles.append({"rank": s["rank"], "role": "server", "work": "parameter server"})
                continue
            work = (f"shard of {plan['data']['train_samples'] // world} samples, one full-batch "
                    "step per epoch" if full_batch and plan["data"]["train_samples"] else
                    f"shard of {s['samples_per_epoch']} samples/epoch, {s['steps_per_epoch']} steps/epoch")
            roles.append({"rank": s["rank"], "role": ("worker" if s["rank"] else "worker (lead)") + forked,
                          "work": work})
    return {**plan, "roles": roles, "steps_per_epoch": steps_per_epoch, "total_steps": total,
            "max_steps": config.train.max_steps,
            "optimizer_used": _NO_OPTIMIZER.get(name)}


def _capped(config: RunConfig, steps: int) -> int:
    return min(steps, config.train.max_steps) if config.train.max_steps is not None else steps


def _algorithm_text(described: dict[str, Any]) -> str:
    shown = {k: v for k, v in described.items() if k not in ("spec", "algorithm") and v is not None}
    return spec_text({"name": described.get("algorithm", "?"), **shown})


def format_plan(plan: dict[str, Any]) -> str:
    """The plan as text: a summary line, a table of the run and a table of the roles."""
    from rich.console import Console
    from rich.table import Table

    d = plan["data"]
    head = (f"plan for '{plan['name']}': {plan['workers']} worker(s) in {plan['processes']} "
            f"process(es), backend {plan['backend']} on {plan.get('device', 'cpu')}")
    run = Table(show_header=False, box=None, padding=(0, 2))
    run.add_column(style="bold")
    run.add_column()
    train = (f"online, {d['batch_size_per_worker'] * plan['steps_per_epoch']} samples per epoch"
             if d["online"] else f"{d['train_samples']} samples")
    run.add_row("data", f"{spec_text(d['source'])}: {d['task']}, input {d['input_shape']}, "
                        f"{d['num_classes']} classes")
    run.add_row("train / test", f"{train} / {d['test_samples']} samples")
    algorithm = plan["algorithm"]["spec"]["name"]
    if algorithm == "cocoa":
        run.add_row("partition", f"{spec_text(d['partition'])} order cut into {plan['workers']} disjoint parts")
    elif algorithm not in _MODEL_PARALLEL:
        run.add_row("partition", f"{spec_text(d['partition'])}, batch {d['batch_size_per_worker']} per worker")
    else:
        run.add_row("batches", f"{d['batch_size_per_worker']} samples, the same on every rank")
    model = plan["model"]["spec"]
    run.add_row("model", f"{spec_text(model)} ({plan['model']['parameters']:,} parameters)")
    if plan.get("optimizer_used"):
        run.add_row("optimizer", plan["optimizer_used"])
    else:
        run.add_row("optimizer", f"{spec_text(plan['optimizer'])}, schedule {spec_text(plan['schedule'])}")
    run.add_row("algorithm", _algorithm_text(plan["algorithm"]))
    run.add_row("codec", spec_text(plan["codec"]))
    run.add_row("backend", f"{plan['backend']} on {plan.get('device', 'cpu')}")
    capped = plan.get("max_steps") is not None and plan["total_steps"] == plan["max_steps"]
    run.add_row("steps", f"{plan['total_steps']} ({'train.max_steps; ' if capped else ''}"
                         f"{plan['steps_per_epoch']} per epoch)")
    if plan.get("run_dir"):
        run.add_row("results", str(plan["run_dir"]))
    roles = Table(show_header=True, header_style="bold", box=None, padding=(0, 2))
    for column in ("rank", "role", "work"):
        roles.add_column(column)
    for r in plan.get("roles", []):
        roles.add_row(str(r["rank"]), r["role"], r["work"])
    buf = StringIO()
    console = Console(file=buf, width=110, force_terminal=False)
    console.print(head, markup=False, highlight=False)
    console.print(run)
    console.print(roles)
    return "\n".join(line.rstrip() for line in buf.getvalue().rstrip().splitlines())
