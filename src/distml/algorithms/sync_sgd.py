"""Synchronous data-parallel SGD: every step, the workers' gradients are averaged.

Reference: the bulk-synchronous parallel gradient method as in PyTorch DDP
(Li et al., "PyTorch Distributed: Experiences on Accelerating Data Parallel Training",
VLDB 2020) and Horovod. Gradients are flattened into buckets; each bucket's all-reduce
starts from a post-accumulate-grad hook as soon as backward has produced all its
gradients, so communication overlaps the rest of backward.

What makes it cheaper than torch's DDP on our gloo/CPU hosts (docs/benchmarks.md):
each gradient is copied into its bucket *and* divided by the world size in one pass,
as soon as it is ready; the reduction is a plain sum (no pass over the buffer after
communication); and the averaged gradients reach the optimizer as views of the bucket
buffer (no copy back). The default 25 MiB bucket keeps models of a few MB in one
message: on gloo every extra collective costs a fixed latency that outweighs what
overlapping a smaller first bucket with backward saves.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from distml.algorithms.base import Algorithm, LOOP_STEP, Supports
from distml.algorithms.registry import ALGORITHMS
from distml.comm.buckets import Bucket, broadcast_module, make_buckets
from distml.comm.compress import init_state, reduce_mean, with_momentum_correction


@ALGORITHMS.register("sync_sgd", topology="collective", pace="bsp",
                     paper="Li et al. 2020 (PyTorch DDP); Sergeev & Del Balso 2018 (Horovod)",
                     summary="Synchronous SGD: average gradients with bucketed all-reduce every step")
class SyncSGD(Algorithm):
    """Average gradients over all workers every step (bulk synchronous).

    Args:
        bucket_mb: bucket size in MiB; smaller buckets start communicating earlier,
            larger ones send fewer messages (on gloo, fewer messages won: the 25 MiB
            default sends one per step for models up to that size).
        overlap: start each bucket's all-reduce during backward (True) or all of them
            after backward (False).
        sync_batchnorm: convert BatchNorm layers to SyncBatchNorm (statistics over all
            workers); by default each worker keeps its own statistics.
        momentum_correction: with a codec, accumulate the optimizer's momentum locally and
            send the velocity through the codec (Lin et al. 2018, Deep Gradient Compression);
            the optimizer (``sgd`` with momentum, no dampening) then runs without momentum
            and weight decay, which move here. Default off: error feedback on the gradient,
            momentum after the reduction (the optimizer's own).
        momentum_masking: with ``momentum_correction``, zero the velocity where a sparse
            codec (topk, threshold, randomk) sent entries (DGC momentum factor masking);
            not for dense codecs, where it would erase the momentum.
        codec: set by distml from ``[comm] codec``/``error_feedback`` (docs/compression.md):
            each bucket is reduced through it after backward, with its own codec state;
            without a codec nothing changes (the all-reduce overlaps backward).

    Raises:
        ValueError: bucket_mb <= 0; momentum options without a codec or without a
            momentum SGD optimizer (at setup).
    """

    buffers = "rank0"       # gradients are averaged, buffers stay local (DDP); broadcast at setup
    supports = Supports(wrap=True, **LOOP_STEP)
    elastic = True          # a lost worker: the survivors average among themselves
    joinable = True         # ... and a replacement joins them at any step boundary

    def __init__(self, bucket_mb: float = 25.0, overlap: bool = True, sync_batchnorm: bool = False,
                 momentum_correction: bool = False, momentum_masking: bool = False, codec=None):
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        if (momentum_correction or momentum_masking) and codec is None:
            raise ValueError("momentum_correction/momentum_masking apply to a codec; "
                             "set comm.codec or remove them")
        if momentum_masking and not momentum_correction:
            raise ValueError("momentum_masking needs momentum_correction = true")
        self.bucket_mb = float(bucket_mb)
        self.overlap = bool(overlap)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.momentum_correction = bool(momentum_correction)
        self.momentum_masking = bool(momentum_masking)
        self.codec = codec
        self._decay: list[tuple[torch.Tensor, float]] = []
        self.codec_states: list = []
        self._handles: list[Any] = []
        self._hooks: list[Any] = []
        self.buckets: list[Bucket] = []
        self._next_launch = 0            # buckets launch in this fixed order on every rank
        self._accumulating = False       # inside no_sync(): hooks leave gradients local

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Called before the optimizer is built: layer conversions that replace modules."""
        if self.sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def setup(self, model, optimizer, transport) -> None:
        super().setup(model, optimizer, transport)
        broadcast_module(model, transport)
        params = [p for p in model.parameters() if p.requires_grad]
        self.buckets = make_buckets(params, int(self.bucket_mb * 2**20))
        # where each parameter's gradient goes: (bucket, index in the bucket)
        self._slot: dict[torch.Tensor, tuple[Bucket, int]] = {}
        for b in self.buckets:
            for i, p in enumerate(b.params):
                self._slot[p] = (b, i)
        self._reset()
        # Average = sum of grad / world: the division is fused into the copy into the
        # bucket (one pass, during backward) and the reduction is a plain sum, so no pass
        # over the buffer remains after communication.
        self._divisor = float(transport.world_size)
        if self.momentum_correction:
            self._move_momentum_into_codec(optimizer, params)
        # per bucket: a Reducer (PowerSGD) needs the parameter shapes inside the bucket
        self.codec_states = [init_state(self.codec, b.buffer, [p.shape for p in b.params])
                             for b in self.buckets] if self.codec is not None else []
        self._register_hooks()

    def _register_hooks(self) -> None:
        """Start each bucket's all-reduce from backward (overlap), where there is a peer."""
        if self.overlap and self.transport.world_size > 1 and self.codec is None:
            for p in self._slot:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def regroup(self, transport) -> None:
        """Average over the survivors from now on; a step that failed mid-reduction left
        buckets half launched: forget them (the loop runs the step again)."""
        super().regroup(transport)
        self._divisor = float(transport.world_size)
        self._reset()
        if transport.world_size == 1:      # after_backward then keeps the local gradient
            self.close()
        elif not self._hooks:              # grown again (a replacement joined): overlap again
            self._register_hooks()

    def is_join_point(self, done: int, workers: int) -> bool:
        return True                        # every step's all-reduce holds every rank

    def _move_momentum_into_codec(self, optimizer, params) -> None:
        """DGC momentum correction: the codec carries the velocity, the optimizer none.

        The optimizer's hyper-parameters are changed the way a scheduler changes ``lr``
        (so a checkpoint holds the corrected ones); weight decay joins the gradient before
        the velocity, as in momentum SGD, so a lossless codec reproduces it exactly.
        """
        if not isinstance(optimizer, torch.optim.SGD):
            raise ValueError("momentum_correction needs optim sgd/momentum/nesterov (torch SGD), "
                             f"got {type(optimizer).__name__}")
        groups = optimizer.param_groups
        momenta = {g["momentum"] for g in groups}
        nesterov = {bool(g["nesterov"]) for g in groups}
        if len(momenta) != 1 or len(nesterov) != 1:
            raise ValueError("momentum_correction needs one momentum and nesterov setting for "
                             f"all parameter groups, got momenta {sorted(momenta)}")
        momentum = momenta.pop()
        if not 0 < momentum < 1 or any(g["dampening"] for g in groups):
            raise ValueError("momentum_correction needs optim momentum in (0, 1) and dampening 0, "
                             f"got momentum {momentum}")
        mine = {id(p) for p in params}
        for g in groups:
            if g["weight_decay"]:
                self._decay += [(p, float(g["weight_decay"])) for p in g["params"] if id(p) in mine]
            g["momentum"], g["nesterov"], g["weight_decay"] = 0.0, False, 0.0
        self.codec = with_momentum_correction(self.codec, momentum, nesterov=nesterov.pop(),
                                              masking=self.momentum_masking)

    def _reset(self) -> None:
        self._handles.clear()
        self._next_launch = 0
        for b in self.buckets:
            b.pending = len(b.params)
            b.ready = [False] * len(b.params)
            b.launched = False

    def _launch_ready(self) -> None:
        """Launch, in bucket order, every bucket whose gradients are all in.

        The order is the same on every rank even when ranks leave different parameters
        without a gradient (a skipped branch) or produce them in different orders: a
        bucket waits for the ones before it, so the k-th all-reduce of every rank is the
        same bucket (launched as backward completes it, they could pair different
        buckets: a wrong sum or a hang). Buckets hold parameters in reverse order, the
        order backward produces them, so a normal backward loses no overlap.
        """
        while self._next_launch < len(self.buckets):
            bucket = self.buckets[self._next_launch]
            if bucket.pending:
                return
            bucket.launched = True
            self._handles.append((bucket, self.transport.all_reduce(bucket.buffer, op="sum",
                                                                    async_op=True)))
            self._next_launch += 1

    def _grad_ready(self, p: torch.Tensor) -> None:
        if self._accumulating:
            return              # no_sync(): the gradient accumulates in p.grad
        bucket, i = self._slot[p]
        if bucket.launched or bucket.ready[i]:
            raise RuntimeError(
                "sync_sgd averages gradients once per optimizer step: a second backward "
                "produced a gradient before after_backward (the optimizer step) ran. "
                "Run every backward but the last inside the algorithm's no_sync() "
                "([train] accumulate_steps does this; with distml.wrap: `with opt.no_sync():`)")
        bucket.load_grad(i, self._divisor)   # copy now, while the gradient is in cache
        bucket.ready[i] = True
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch_ready()

    @contextlib.contextmanager
    def no_sync(self):
        """Backward passes inside accumulate local gradients; the next one outside reduces."""
        self._accumulating = True
        try:
            yield
        finally:
            self._accumulating = False

    def global_loss(self, loss: torch.Tensor) -> torch.Tensor:
        avg = loss.detach().clone()
        self.transport.all_reduce(avg, op="avg")
        return avg

    def after_backward(self, step: int) -> None:
        """Finish every bucket's reduction; then ``p.grad`` is the average, as a view.

        Works whether the loop zeroes gradients with ``set_to_none=True`` (fresh
        gradients are copied in by the hooks) or ``False`` (the views are accumulated
        into in place); expects one backward pass per call.
        """
        if self.transport.world_size == 1 and not self.momentum_correction:
            return      # (with momentum correction the codec holds the momentum: run it)
        if self.codec is not None:
            self._reduce_with_codec()
            return
        try:
            # gradients whose hooks did not fire (no overlap; parameters this rank left
            # unused, which count as zero, as in DDP's find_unused_parameters)
            for b in self.buckets:
                if not b.launched:
                    for i in range(len(b.params)):
                        if not b.ready[i]:
                            b.load_grad(i, self._divisor)
                    b.pending = 0
            self._launch_ready()
            for _, handle in self._handles:
                handle.wait()
            # the averaged gradients reach the optimizer as views of the buffers: no copy
            for b in self.buckets:
                b.attach_grads()
        finally:
            self._reset()

    @torch.no_grad()
    def _reduce_with_codec(self) -> None:
        """Each bucket's local gradient through the codec; the mean becomes the gradient."""
        for p, wd in self._decay:          # momentum correction: decay before the velocity
            if p.grad is not None:
                p.grad.add_(p.detach(), alpha=wd)
        for i, b in enumerate(self.buckets):
            b.fill_from_grads()
            mean, self.codec_states[i] = reduce_mean(b.buffer, self.codec, self.codec_states[i],
                                                     self.transport)
            b.buffer.copy_(mean)
            b.attach_grads()

    def state_dict(self) -> dict[str, Any]:
        return {"codec_states": self.codec_states} if self.codec is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.codec is not None and "codec_states" in state:
            self.codec_states = list(state["codec_states"])

    def describe(self) -> dict[str, Any]:
        return {"algorithm": "sync_sgd", "buckets": len(getattr(self, "buckets", [])),
                "bucket_mb": self.bucket_mb, "overlap": self.overlap,
                "sync_batchnorm": self.sync_batchnorm,
                "momentum_correction": self.momentum_correction,
                "momentum_masking": self.momentum_masking,
                "codec": None if self.codec is None else self.codec.describe()}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._handles.clear()
