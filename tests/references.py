"""Single-process references for the data-parallel differential tests (float64)."""

from __future__ import annotations

import itertools
from pathlib import Path

import torch

from procs import distml

from distml.models import build_loss
from distml.optim import build_optimizer
from distml.partition import PARTITIONS, SOURCES, make_loader
from distml.runtime.build import build_model_for


def rank_streams(cfg, source, workers: int):
    """Every rank's batches, across epochs, exactly as its worker loop reads them."""
    return [_epochs(make_loader(source, PARTITIONS.build(cfg.data.partition), r, workers,
                                cfg.data.batch_size, cfg.seed)) for r in range(workers)]


def _epochs(loader):
    return itertools.chain.from_iterable(loader.batches(e) for e in itertools.count())


def concatenated_sgd(cfg, steps: int, workers: int = 2, accumulate: int = 1,
                     clip: float | None = None,
                     regroup: tuple[int, int] | list[tuple[int, int]] | None = None,
                     lost: tuple[int, ...] = ()):
    """One process stepping on the concatenation of every rank's ``accumulate`` batches of
    each step (equal batch sizes: the mean of the means), clipped like the run; returns the
    model and how many steps the clip shortened the gradient.

    ``regroup = (k, n)``: from step k on, the data is re-partitioned among n workers, each
    reading its new shard from batch k on (survivors of a worker loss, runtime/elastic.py);
    a list of such pairs: one change after the other (a loss, then a replacement joining).
    ``lost``: the ranks that died before the first change's step k while the survivors'
    step k still ran on their old shards (a parameter server's workers had pushed it
    before they learnt of the loss): step k averages the survivors' old batches, the new
    partition starts at k + 1.
    """
    changes = dict([regroup] if isinstance(regroup, tuple) else regroup or [])
    first = min(changes) if changes else None
    if lost:        # the survivors' new partition starts one step after the loss
        changes[first + 1] = changes.pop(first)
    torch.set_num_threads(1)
    source = SOURCES.build(cfg.data.source, seed=cfg.seed)
    ranks = rank_streams(cfg, source, workers)
    model = build_model_for(cfg, source.info).double()
    loss_fn = build_loss(cfg.model.loss, cfg.model.name, source.info)
    opt = build_optimizer(cfg.optim.spec(), model.parameters())
    clipped = 0
    for step in range(steps):
        if lost and step == first:
            ranks = [r for i, r in enumerate(ranks) if i not in lost]
        if step in changes:
            ranks = [itertools.islice(r, step * accumulate, None)
                     for r in rank_streams(cfg, source, changes[step])]
        batches = [b for r in ranks for b in itertools.islice(r, accumulate)]
        opt.zero_grad()
        x = torch.cat([x for x, _ in batches]).double()
        loss_fn(model(x), torch.cat([y for _, y in batches])).backward()
        if clip is not None:
            clipped += torch.nn.utils.clip_grad_norm_(model.parameters(), clip).item() > clip
        opt.step()
    return model, clipped


def launched_state(script: str, tmp_path: Path, timeout: float = 100) -> dict:
    """Run ``tests/runtime/<script> OUT`` under ``distml launch -n 2``; the state dict rank 0 saved."""
    saved = tmp_path / "model.pt"
    res = distml("launch", "-n", "2", str(Path(__file__).parent / "runtime" / script), str(saved),
                 timeout=timeout)
    assert res.returncode == 0, res.stderr[-3000:]
    return torch.load(saved, weights_only=True)


def max_difference(got: dict, reference: dict) -> float:
    """The largest absolute difference between two state dicts' entries."""
    assert got.keys() == reference.keys()
    return max((got[k] - v).abs().max().item() for k, v in reference.items())
