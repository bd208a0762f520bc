"""Ensemble-compression: local training, then ensemble the workers' models and distil it back.

Reference: Sun, Wang, Chen & Liu 2017, "Ensemble-Compression: A New Method for Parallel
Training of Deep Neural Networks" (ECML PKDD). Every ``every`` local epochs: (1) the
workers all-gather their models; (2) each builds the ensemble (probability average) and
relabels a random ``relabel_fraction`` of its current shard with the ensemble's soft
outputs at temperature T; (3) each distils for ``distill_epochs`` passes over its shard
(soft targets where relabelled, true labels elsewhere; Hinton et al. 2015's T² scaling),
starting from its local model, so the result has the original size (the ensemble itself
would grow K-fold each round). The distilled model is the aggregation result: rank 0's is
evaluated and saved. Each evaluation after a round also reports the round's ensemble
accuracy, the mean accuracy of the members before compression and the distilled accuracy.
Distillation steps are optimizer steps outside the loop's step count (their time is
compute time of the round's last step).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import numpy as np
import torch

from distml.aggregate.distill import distillation_loss, soft_targets
from distml.aggregate.ensemble import Ensemble, accuracy
from distml.algorithms.base import LOOP_STEP, Algorithm, Supports
from distml.algorithms.ensemble import gather_members
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import broadcast_module
from distml.errors import ConfigError

log = logging.getLogger("distml")


@ALGORITHMS.register("ensemble_compression", topology="collective", pace="bsp every R epochs",
                     paper="Sun et al. 2017 (Ensemble-Compression, EC-DNN); Hinton et al. 2015",
                     summary="every R epochs: ensemble the workers' models, relabel, distil back")
class EnsembleCompression(Algorithm):
    """Local training with periodic ensemble → relabel → distillation rounds.

    Args:
        every: local epochs between rounds (R >= 1).
        relabel_fraction: share of the local shard relabelled with soft outputs, in (0, 1].
        temperature: softening temperature T (> 0).
        distill_epochs: passes over the local shard per distillation (>= 1).
        distill_schedule: learning rate during a distillation: ``"constant"`` (the
            optimizer's current one) or ``"linear"`` (from the current one down to 0 over the
            distillation's steps, then restored), so the student settles on the ensemble's
            outputs instead of ending a round with a full-size SGD step's noise.

    Raises:
        ValueError: a parameter out of range.
    """

    owns_loop = True   # it runs the standard loop, but needs the loop's data for distillation

    # the saved model is rank 0's distilled model (never averaged), with its own statistics
    buffers = "rank0"
    # training steps run in the standard loop (autocast applies), distillation in fp32
    supports = Supports(wrap=False, precisions=LOOP_STEP["precisions"])

    def __init__(self, every: int = 1, relabel_fraction: float = 1.0, temperature: float = 2.0,
                 distill_epochs: int = 1, distill_schedule: str = "constant"):
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be an integer >= 1 (epochs), got {every!r}")
        if not 0 < relabel_fraction <= 1:
            raise ValueError(f"relabel_fraction must be in (0, 1], got {relabel_fraction}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not isinstance(distill_epochs, int) or distill_epochs < 1:
            raise ValueError(f"distill_epochs must be an integer >= 1, got {distill_epochs!r}")
        if distill_schedule not in ("constant", "linear"):
            raise ValueError(f"distill_schedule must be 'constant' or 'linear', got {distill_schedule!r}")
        self.distill_schedule = distill_schedule
        self.every, self.relabel_fraction = every, float(relabel_fraction)
        self.temperature, self.distill_epochs = float(temperature), distill_epochs
        self.round = 0
        self._pending: dict[str, Any] | None = None   # rank 0: the last round, to evaluate
        self.last: dict[str, Any] = {}

    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)

    def check_data(self, info, online: bool) -> None:
        if info.task != "classification":
            raise ConfigError("ensemble_compression distils class probabilities: it needs a "
                              f"classification data set, got a {info.task} task")
        if online:
            raise ConfigError("ensemble_compression relabels the local shard: it needs an "
                              "offline data set (an online source has no fixed shard)")

    def run(self, loop):
        p = loop.parts
        self._loader = p.loader
        self._to_device = loop.to_device
        self._steps_per_epoch, self._seed = p.steps_per_epoch, loop.config.seed
        self._batch = loop.config.data.batch_size
        self._test = loop.test_data
        return loop.run(resume=loop.resume_requested, stop_after=loop.stop_after)

    def after_step(self, step: int) -> None:
        if (step + 1) % (self.every * self._steps_per_epoch):
            return
        members = gather_members(self.model, self.transport)
        ensemble = Ensemble(members, "average").eval()
        epoch = step // self._steps_per_epoch
        x, y = self._loader.data.take(self._loader.indices(epoch))
        x, y = self._to_device(x), self._to_device(y)
        rank = self.transport.rank
        g = torch.Generator().manual_seed(self._seed * 1_000_003 + self.round * 1009 + rank)
        n = len(y)
        relabelled = torch.zeros(n, dtype=torch.bool)
        relabelled[torch.randperm(n, generator=g)[:max(1, round(self.relabel_fraction * n))]] = True
        relabelled = relabelled.to(y.device)
        with torch.no_grad():
            soft = torch.cat([soft_targets(ensemble(x[i:i + 1000]), self.temperature)
                              for i in range(0, n, 1000)])
        self._distil(x, y, soft, relabelled, g)
        self.round += 1
        if rank == 0:   # evaluated at the next evaluation point, outside the clock
            self._pending = {"ensemble": ensemble, "members": members,
                             "distilled": copy.deepcopy(self.model), "round": self.round}

    def _distil(self, x, y, soft, relabelled, g: torch.Generator) -> None:
        model, opt, b = self.model, self.optimizer, self._batch
        base_lrs = [group["lr"] for group in opt.param_groups]
        total, done = self.distill_epochs * (len(y) // b), 0
        for _ in range(self.distill_epochs):
            order = torch.randperm(len(y), generator=g).to(y.device)
            for i in range(0, len(y) - b + 1, b):
                idx = order[i:i + b]
                if self.distill_schedule == "linear":
                    for group, lr in zip(opt.param_groups, base_lrs):
                        group["lr"] = lr * (1 - done / total)
                done += 1

                def closure(idx=idx):
                    opt.zero_grad(set_to_none=True)
                    loss = distillation_loss(model(x[idx]), y[idx], soft[idx], relabelled[idx],
                                             self.temperature)
                    loss.backward()
                    return loss

                opt.step(closure)
        for group, lr in zip(opt.param_groups, base_lrs):
            group["lr"] = lr

    def at_eval(self, step: int) -> dict[str, Any]:
        if self._pending is not None and self._test is not None:
            r = self._pending
            x, y = self._test.take(np.arange(len(self._test)))
            x, y = self._to_device(x), self._to_device(y)
            member_acc = [accuracy(m, x, y) for m in r["members"]]
            self.last = {"ec_round": r["round"], "ensemble_accuracy": accuracy(r["ensemble"], x, y),
                         "member_accuracy_mean": sum(member_acc) / len(member_acc),
                         "distilled_accuracy": accuracy(r["distilled"], x, y)}
            log.info("ensemble-compression round %d: %s", r["round"], self.last)
            self._pending = None
        return dict(self.last)

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "ensemble_compression", "every_epochs": self.every,
                "relabel_fraction": self.relabel_fraction, "temperature": self.temperature,
                "distill_epochs": self.distill_epochs, "distill_schedule": self.distill_schedule}

    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "last": dict(self.last)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.last = int(state["round"]), dict(state["last"])
