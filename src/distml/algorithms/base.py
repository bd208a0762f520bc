"""The contract between the runtime and an algorithm (docs/design.md §3).

Every hook the runtime calls is declared on :class:`Algorithm` with a docstring and a
default; the runtime calls them directly (it never probes with ``getattr``). Two shapes
of algorithm share it (the model for the shape is Bagua's ``Algorithm`` base class):

* **data-parallel** algorithms implement hooks that the worker loop calls around its
  "forward, backward, optimizer step";
* algorithms whose step has another shape set ``owns_loop = True`` and implement
  ``run(loop)``, driving their steps through the **loop API** below.

The loop API (public members of :class:`~distml.runtime.loop.TrainLoop`; an algorithm
touches nothing else of the loop):

* ``loop.config``, ``loop.parts`` (what ``build_parts`` made: model, optimizer, loader,
  source, loss), ``loop.transport``, ``loop.rank``, ``loop.device``, ``loop.dtype``,
  ``loop.classification``, ``loop.test_data`` (rank 0), ``loop.out_dir``, ``loop.clock``
  (an algorithm may narrow ``loop.transport`` to a subgroup before ``loop.run``, as the
  parameter server's workers do: barriers and stop votes then stay among them);
* ``loop.to_device(t)``: a batch tensor on the device (floating ones in the run's dtype);
* ``loop.total_steps``, ``loop.steps_per_epoch`` and ``loop.batches(start)``: this rank's
  run length and batches. A loop that reads the data another way (e.g. every rank the
  same order) uses the same two functions: :func:`distml.partition.steps.total_steps`
  (the one formula) and :func:`distml.partition.steps.batches` (the one iterator);
* ``loop.run(resume, stop_after)``: the standard loop with this algorithm's hooks;
  ``loop.run_steps(step_fn, total_steps, steps_per_epoch)``: the clocks, logs,
  evaluations and progress bar around an algorithm's own step;
* ``loop.evaluate(step, wall, events)``, ``loop.checkpoints`` (write/load/latest_step),
  ``loop.resume_requested`` and ``loop.stop_after`` (what the worker entry asked for).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

#: what happens to a model's buffers (BatchNorm running statistics, any registered
#: buffer) at the synchronization, evaluation and save points (docs/models.md):
#: ``average``: averaged over the workers wherever models are averaged, and in the model
#: that is evaluated and saved; ``rank0``: rank 0's, as DDP (only gradients are averaged);
#: ``members``: each member of an ensemble keeps its own; ``owner``: model-parallel: each
#: buffer lives on the rank holding its layer and is gathered with the parameters;
#: ``shared``: one model in shared memory (Hogwild), updated by every worker.
BufferPolicy = Literal["average", "rank0", "members", "owner", "shared"]
BUFFER_POLICIES: tuple[str, ...] = ("average", "rank0", "members", "owner", "shared")


@dataclass(frozen=True)
class Supports:
    """What an algorithm honours; anything else is refused before any process starts.

    Args:
        wrap: ``distml.wrap`` can run it: every hook it needs is one that
            ``DistributedOptimizer`` calls (no ``loss_terms``, ``eval_model``,
            ``on_train_end``, ``at_eval`` it depends on, no loop of its own).
        precisions: the ``train.precision`` values it trains correctly with (the worker
            loop's autocast: an algorithm that runs its own step takes fp32 only).
        accumulation: ``train.accumulate_steps > 1`` (its communication can wait for the
            last micro-batch, ``no_sync``).
        clipping: ``train.clip_grad_norm`` (the loop clips after ``after_backward``).
        models: the model kinds it takes: ``"any"`` (any ``nn.Module``), ``"sequential"``
            (a layer sequence holding every parameter), ``"linear"`` (one linear layer).
    """

    wrap: bool = False
    precisions: tuple[str, ...] = ("fp32",)
    accumulation: bool = False
    clipping: bool = False
    models: str = "any"


#: what the worker loop's own step honours: the data-parallel algorithms declare this
LOOP_STEP = dict(precisions=("fp32", "bf16", "fp16"), accumulation=True, clipping=True)


class Algorithm:
    """Base class: every hook has a default, so an algorithm overrides only what it needs.

    Lifecycle (worker loop): ``check_config``, ``check_data`` and ``prepare_model`` while building,
    ``setup`` once, then per step ``loss_terms`` → backward → ``after_backward`` →
    optimizer step → ``after_step``; at every evaluation point ``at_eval`` on every rank
    and ``eval_model`` on rank 0; ``on_train_end`` after the last step; ``rank_metrics``
    and ``summary_extra`` for the results; ``close`` before the process group goes.
    """

    #: the algorithm drives its own steps through ``run(loop)`` (see the loop API above)
    owns_loop = False
    #: a run can resume from a checkpoint taken mid-run (``--resume``, ``--max-restarts``);
    #: algorithms that drive their own steps (``TrainLoop.run_steps``) start over instead
    mid_run_checkpoints = True
    #: rank 0 evaluates while the others wait at a barrier (collective algorithms).
    synchronous_eval = True
    #: the buffer policy (see :data:`BufferPolicy`)
    buffers: BufferPolicy = "rank0"
    #: what it honours (see :class:`Supports`)
    supports = Supports()
    #: BatchNorm layers become SyncBatchNorm (``prepare_model``); CUDA only, refused on CPU
    sync_batchnorm = False
    #: the survivors of a worker loss can go on with it (``[faults] on_worker_loss =
    #: "continue"``, runtime/elastic.py): it implements ``regroup``
    elastic = False
    #: a replacement may join the running group at ``is_join_point`` boundaries
    #: (``on_worker_loss = "continue"`` with ``--max-restarts``, runtime/elastic.py)
    joinable = False

    def launch_size(self, workers: int) -> int:
        """How many processes the launcher starts for ``workers`` workers (servers are extra)."""
        return workers

    def check_config(self, config) -> None:
        """Refuse (``ConfigError``, one line) what does not compose with this algorithm;
        called while building, before any process starts."""

    def check_data(self, info, online: bool) -> None:
        """Refuse (``ConfigError``, one line) data this algorithm cannot train on (``info``:
        the source's task, classes and input shape; ``online``: an endless stream);
        called while building, before any process starts."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Before the optimizer is built: layer conversions that replace modules (e.g.
        SyncBatchNorm); returns the model to train."""
        return model

    def run(self, loop) -> Any:
        """``owns_loop`` algorithms: train with ``loop`` (the loop API above) and return its
        ``LoopResult``."""
        raise NotImplementedError(f"{type(self).__name__} sets owns_loop but has no run()")

    def setup(self, model: nn.Module, optimizer: torch.optim.Optimizer, transport) -> None:
        """Once, after the model and optimizer are built: keep them, agree on a start."""
        self.model = model
        self.optimizer = optimizer
        self.transport = transport

    def regroup(self, transport) -> None:
        """A worker died and the survivors formed ``transport`` (fewer ranks, new rank
        numbers) at a step boundary; adapt whatever depends on the group (divisors,
        graphs, in-flight handles). Model, optimizer and ``state_dict()`` are already
        agreed. Only ``elastic`` algorithms are called (runtime/elastic.py)."""
        self.transport = transport

    def is_join_point(self, done: int, workers: int) -> bool:
        """Whether a replacement may join after ``done`` steps (``joinable`` algorithms,
        runtime/elastic.py). Join points must be step boundaries that no rank passes
        before every rank has passed the previous one (a synchronization reaching every
        rank lies between two of them): rank 0 then announces the next point and every
        rank reads the announcement in time. ``workers``: the workers at launch."""
        return False

    def loss_terms(self, model: nn.Module) -> torch.Tensor | None:
        """Extra loss added before backward (e.g. ADMM's proximal term)."""
        return None

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        """The loss that line-searching optimizers (L-BFGS) must see identically on every rank."""
        return loss

    def no_sync(self) -> contextlib.AbstractContextManager:
        """Around every backward pass but an optimizer step's last (``accumulate_steps``):
        gradients accumulate locally and nothing is communicated (DDP's ``no_sync``)."""
        return contextlib.nullcontext()

    def after_backward(self, step: int) -> None:
        """Gradient-level hook: gradients are in ``p.grad``; e.g. all-reduce them."""

    def after_step(self, step: int) -> None:
        """Model-level hook: after the optimizer step; e.g. average models every H steps."""

    def on_train_end(self, steps: int) -> None:
        """After the last step (``steps`` done), before the final evaluation: e.g. local
        SGD's last average, a parameter-server worker's last push and final pull."""

    def agree_to_stop(self, mine: bool) -> bool | None:
        """Stop at the target: ``mine`` is rank 0's decision. Return whether this rank
        stops, or None to let the loop broadcast rank 0's decision (collective
        algorithms); an algorithm whose workers are not in step answers its own way."""
        return None

    def eval_model(self) -> nn.Module:
        """The model to evaluate and save as ``model.pt`` (an ensemble, the consensus
        variable, ...), buffers included as the buffer policy says."""
        return self.model

    def at_eval(self, step: int) -> dict[str, Any]:
        """Called on every rank at every evaluation point, before rank 0 evaluates
        ``eval_model()``; it may communicate (e.g. gather the ensemble's members, measure
        the consensus distance). Returns figures that rank 0 adds to the evaluation record
        (``eval.jsonl``) and, from the last one, to ``summary.json["algorithm_metrics"]``."""
        return {}

    def saved_model(self, model: nn.Module, workers: int) -> nn.Module:
        """The module ``model.pt`` was saved from, built around a fresh ``model`` of the
        run's architecture (e.g. an ensemble of ``workers`` copies); ``distml evaluate``
        loads the state dict into it."""
        return model

    def rank_metrics(self) -> dict[str, Any]:
        """This rank's figures, gathered from every rank at the end (``role`` other than
        ``"worker"`` keeps a rank out of the workers' totals, e.g. a server)."""
        return {}

    def summary_extra(self, per_rank: list[dict[str, Any]]) -> dict[str, Any]:
        """Rank 0: keys added to ``summary.json`` from every rank's ``rank_metrics``."""
        return {}

    def describe(self) -> dict[str, Any]:
        """The resolved plan shown by ``distml run --dry-run``."""
        return {"algorithm": type(self).__name__}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def transfer_state(self) -> dict[str, Any]:
        """The state a peer takes over after a membership change (runtime/elastic.py;
        loaded with :meth:`load_state_dict`): by default what a checkpoint holds."""
        return self.state_dict()

    def close(self) -> None:
        """Drop hooks and buffers before the process group is destroyed."""
