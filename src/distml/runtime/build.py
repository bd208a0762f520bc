"""Turn a validated config into the parts of one worker: data, model, optimizer, algorithm.

The same function builds a worker's parts inside a training process and the plan that
``distml run --dry-run`` prints (and that the launcher checks before it spawns anyone),
so a config that passes the dry run builds in every worker.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from distml.algorithms import ALGORITHMS
from distml.comm.compress import CODECS, Reducer, build_codec
from distml.config import RunConfig
from distml.errors import ConfigError
from distml.models import build_loss, build_model
from distml.optim import build_optimizer, build_schedule, is_full_batch, needs_closure
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.partition.steps import total_steps as run_steps
from distml.registry import split_spec
from distml.runtime.faults import check_faults, check_worker_loss

MAX_PROCESSES = 2048    # workers are at most 1024 (config.py); servers and helpers on top


@dataclass
class UserParts:
    """What a Python-API user hands over instead of registry names.

    Args:
        model: an ``nn.Module`` (copied into every worker) or a callable
            ``(input_shape, num_classes) -> nn.Module``.
        source: a data source object (see ``distml.partition.user_source``).
        loss: a callable ``(output, target) -> loss``.
    """

    model: Any = None
    source: Any = None
    loss: Any = None

    def __reduce__(self):
        # Workers receive their job through multiprocessing, whose pickler (once torch is
        # imported) moves tensors into shared memory instead of copying them: every rank
        # would then train one set of parameters in place, W optimizer steps per step.
        # The model and the loss travel as plain pickle bytes, so each worker owns a copy;
        # the data source stays shared (workers only read it).
        return (_user_parts_from_bytes, (pickle.dumps((self.model, self.loss)), self.source))


def _user_parts_from_bytes(model_and_loss: bytes, source) -> UserParts:
    model, loss = pickle.loads(model_and_loss)
    return UserParts(model=model, source=source, loss=loss)


@dataclass
class Parts:
    """Everything one worker trains with."""

    source: Any
    loader: Any
    test_data: Any
    model: nn.Module
    loss_fn: Any
    optimizer: torch.optim.Optimizer
    schedule: Any
    algorithm: Any
    steps_per_epoch: int
    total_steps: int
    full_batch: bool
    needs_closure: bool
    plan: dict[str, Any] = field(default_factory=dict)


def registries() -> dict[str, Any]:
    """Every registry by kind (``distml.register``, ``distml list``)."""
    from distml.models import LOSSES, MODELS
    from distml.optim import OPTIMIZERS, SCHEDULES
    return {"model": MODELS, "loss": LOSSES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES,
            "source": SOURCES, "partition": PARTITIONS, "algorithm": ALGORITHMS,
            "codec": CODECS}


def restore_registrations(entries: list[tuple[str, str, Any, dict]]) -> None:
    """Re-register user entries inside a spawned worker (its registries start fresh)."""
    regs = registries()
    for kind, name, obj, meta in entries:
        regs[kind].register(name, obj, replace=True, **meta)


def build_source(config: RunConfig, user: UserParts | None = None):
    if user is not None and user.source is not None:
        return user.source
    return SOURCES.build(config.data.source, seed=config.seed)


def build_model_for(config: RunConfig, info, user: UserParts | None = None) -> nn.Module:
    """Build the model identically on every rank (same seed → same initial weights)."""
    torch.manual_seed(config.seed)
    if user is not None and user.model is not None:
        if isinstance(user.model, nn.Module):
            return user.model
        return user.model(info.input_shape, info.num_classes)
    return build_model(config.model.spec(), info)


def build_parts(config: RunConfig, rank: int, world: int, device: torch.device | str = "cpu",
                user: UserParts | None = None, source=None) -> Parts:
    """Build one worker's parts; raises ConfigError/DataError for anything invalid."""
    source = source if source is not None else build_source(config, user)
    info = source.info
    optim_name, _ = split_spec(config.optim.spec(), "optimizer")
    full_batch = is_full_batch(optim_name)
    closure = needs_closure(optim_name)
    if source.online and config.data.samples_per_epoch is None:
        raise ConfigError("an online data source needs data.samples_per_epoch (the length of "
                          "one epoch), e.g. --set data.samples_per_epoch=20000")
    algorithm = build_algorithm(config, rank)
    # roles (docs/design.md §4): when the algorithm starts more processes than workers (servers),
    # ranks 0..workers-1 train on the data and the others build no data loader
    processes = algorithm.launch_size(config.workers)
    if processes > MAX_PROCESSES:
        raise ConfigError(f"algorithm '{config.algorithm.name}' would start {processes} processes "
                          f"for {config.workers} workers; at most {MAX_PROCESSES}")
    if processes != config.workers:
        world = config.workers
    algorithm.check_config(config)
    algorithm.check_data(info, bool(source.online))
    check_faults(config.faults, world, processes)
    check_worker_loss(config.faults, world, algorithm, config.algorithm.name)
    loader = None if rank >= world else shard_loader(config, source, rank, world)
    _check_step_features(config, algorithm, optim_name, full_batch or closure)
    # a step is one optimizer step, of accumulate_steps batches
    batches_per_epoch = 1 if (full_batch or loader is None) else loader.steps_per_epoch
    accumulate = config.train.accumulate_steps
    steps_per_epoch = max(1, batches_per_epoch // accumulate)
    total_steps = run_steps(config.train.epochs, batches_per_epoch / accumulate,
                            config.train.max_steps)

    model = build_model_for(config, info, user)
    if algorithm.sync_batchnorm and torch.device(device).type != "cuda":
        raise ConfigError("algorithm.sync_batchnorm needs CUDA devices (torch's SyncBatchNorm runs "
                          "on GPUs only); on CPU leave it false: each worker keeps its own statistics")
    model = algorithm.prepare_model(model)
    model = model.to(device=device, dtype=getattr(torch, config.train.dtype))
    if user is not None and user.loss is not None:
        loss_fn = user.loss
    else:
        model_name = config.model.name if (user is None or user.model is None) else None
        loss_fn = build_loss(config.model.loss, model_name, info)

    optim_spec = dict(config.optim.spec())
    if config.data.lr_scaling == "linear" and "lr" in optim_spec:
        optim_spec["lr"] = optim_spec["lr"] * world   # Goyal et al. 2017: lr ∝ global batch
    optimizer = build_optimizer(optim_spec, model.parameters())
    schedule = build_schedule(config.optim.schedule, optimizer, total_steps)
    return Parts(source=source, loader=loader, test_data=None, model=model, loss_fn=loss_fn,
                 optimizer=optimizer, schedule=schedule, algorithm=algorithm,
                 steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                 full_batch=full_batch, needs_closure=closure)


def shard_loader(config: RunConfig, source, rank: int, world: int):
    """Worker ``rank``'s loader of its shard when ``world`` workers split the data (also
    after survivors re-partition it, runtime/elastic.py)."""
    return make_loader(source, PARTITIONS.build(config.data.partition), rank, world,
                       config.data.batch_size, config.seed,
                       samples_per_epoch=config.data.samples_per_epoch)


def build_algorithm(config: RunConfig, rank: int = 0):
    """The run's algorithm, with its codec (combinations docs/design.md §3.1 leaves out refused)."""
    return ALGORITHMS.build(config.algorithm.spec(), codec=_check_composition(config, rank))


def _check_step_features(config: RunConfig, algorithm, optim_name: str, whole_step: bool) -> None:
    """Refuse [train] precision / accumulate_steps / clip_grad_norm where the step that
    runs cannot honour them (the algorithm's own loop, a closure or full-batch optimizer,
    fp16 without CUDA)."""
    train = config.train
    asked = [f"{key} = {value!r}" for key, value, default in
             (("precision", train.precision, "fp32"), ("accumulate_steps", train.accumulate_steps, 1),
              ("clip_grad_norm", train.clip_grad_norm, None)) if value != default]
    if not asked:
        return
    name = config.algorithm.name
    can = algorithm.supports         # the declaration (algorithms/base.py Supports)
    refused = [what for what, ok in
               ((f"precision = {train.precision!r}", train.precision in can.precisions),
                ("accumulate_steps", train.accumulate_steps == 1 or can.accumulation),
                ("clip_grad_norm", train.clip_grad_norm is None or can.clipping))
               if not ok]
    if refused:
        what = "runs its own step, which takes no" if algorithm.owns_loop else "does not support"
        raise ConfigError(f"algorithm '{name}' {what} train.{', train.'.join(refused)}; remove it "
                          "or choose an algorithm that does (`distml list algorithm` shows them)")
    if whole_step:
        raise ConfigError(f"optimizer '{optim_name}' evaluates the loss itself (closure or full "
                          f"batch) and takes no train.{', train.'.join(asked)}; remove it")
    cuda = train.device != "cpu" and torch.cuda.is_available()
    if train.precision == "fp16" and not cuda:
        raise ConfigError("train.precision = 'fp16' needs CUDA (float16 autocast with a gradient "
                          "scaler); on CPU use precision = 'bf16'")


def _check_composition(config: RunConfig, rank: int = 0):
    """Build the run's codec and reject combinations docs/design.md §3.1 leaves out, naming
    what does compose. An algorithm takes a codec when its factory has a ``codec``
    parameter; one registered with ``codecs="compressor"`` takes no Reducer (PowerSGD is
    a multi-round collective). Returns the codec (None without ``comm.codec``)."""
    codec = build_codec(config.comm.codec, config.comm.error_feedback, seed=config.seed,
                        rank=rank)
    if codec is None:
        return None
    name = config.algorithm.name
    takers = [a for a in ALGORITHMS.names() if "codec" in ALGORITHMS.parameters(a)]
    if name in ALGORITHMS and name not in takers:
        raise ConfigError(f"algorithm '{name}' takes no comm.codec; codecs compose with "
                          f"{', '.join(takers)}; remove comm.codec or change the algorithm")
    if isinstance(codec, Reducer) and name in ALGORITHMS \
            and ALGORITHMS.meta(name).get("codecs", "any") != "any":
        raise ConfigError(f"algorithm '{name}' sends one message per update and takes a "
                          f"Compressor, not the multi-round Reducer {codec.describe()}; choose "
                          f"another codec ({', '.join(n for n in CODECS.names() if CODECS.meta(n).get('kind') != 'reducer')})")
    return codec


def make_plan(config: RunConfig, user: UserParts | None = None) -> dict[str, Any]:
    """The resolved plan of a run, built without training (``distml run --dry-run``).

    Builds every worker's data shard (indices only) and rank 0's model, optimizer and
    algorithm, so every name and parameter is checked.
    """
    world = config.workers
    source = build_source(config, user)
    parts = build_parts(config, 0, world, "cpu", user, source=source)
    shards = []
    for rank in range(world):
        loader = parts.loader if rank == 0 else shard_loader(config, source, rank, world)
        shards.append({"rank": rank, "role": "worker" + (" (lead)" if rank == 0 else ""),
                       "samples_per_epoch": loader.steps_per_epoch * config.data.batch_size,
                       "steps_per_epoch": loader.steps_per_epoch})
    for rank in range(world, parts.algorithm.launch_size(world)):
        shards.append({"rank": rank, "role": "server", "samples_per_epoch": 0, "steps_per_epoch": 0})
    n_params = sum(p.numel() for p in parts.model.parameters())
    info = source.info
    return {
        "name": config.name,
        "workers": world,
        "processes": parts.algorithm.launch_size(world),
        "backend": config.comm.backend,
        "data": {"source": config.data.source, "partition": config.data.partition,
                 "online": bool(source.online), "task": info.task,
                 "num_classes": info.num_classes, "input_shape": list(info.input_shape),
                 "train_samples": None if source.online else len(source.train()),
                 "test_samples": len(source.test()), "batch_size_per_worker": config.data.batch_size},
        "shards": shards,
        "model": {"spec": config.model.spec() if (user is None or user.model is None) else "user module",
                  "parameters": n_params},
        "optimizer": config.optim.spec(), "schedule": config.optim.schedule,
        "algorithm": parts.algorithm.describe() | {"spec": config.algorithm.spec()},
        "codec": config.comm.codec or None,
        "steps_per_epoch": parts.steps_per_epoch, "total_steps": parts.total_steps,
    }
