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

from typing import Any

import torch
from torch import nn

from distml.algorithms import ALGORITHMS
from distml.algorithms.base import Algorithm
from distml.comm.buckets import Bucket, broadcast_module, make_buckets
from distml.comm.compress import init_state, reduce_mean


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
        codec: set by distml from ``[comm] codec``/``error_feedback`` (docs/compression.md):
            each bucket is reduced through it after backward, with its own codec state;
            without a codec nothing changes (the all-reduce overlaps backward).
    """

    def __init__(self, bucket_mb: float = 25.0, overlap: bool = True, sync_batchnorm: bool = False,
                 codec=None):
        if not bucket_mb > 0:
            raise ValueError(f"bucket_mb must be > 0, got {bucket_mb}")
        self.bucket_mb = float(bucket_mb)
        self.overlap = bool(overlap)
        self.sync_batchnorm = bool(sync_batchnorm)
        self.codec = codec
        self.codec_states: list = []
        self._handles: list[Any] = []
        self._hooks: list[Any] = []
        self.buckets: list[Bucket] = []

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
        # per bucket: a Reducer (PowerSGD) needs the parameter shapes inside the bucket
        self.codec_states = [init_state(self.codec, b.buffer, [p.shape for p in b.params])
                             for b in self.buckets] if self.codec is not None else []
        if self.overlap and transport.world_size > 1 and self.codec is None:
            for p in params:
                self._hooks.append(p.register_post_accumulate_grad_hook(self._grad_ready))

    def _reset(self) -> None:
        self._handles.clear()
        for b in self.buckets:
            b.pending = len(b.params)
            b.ready = [False] * len(b.params)
            b.launched = False

    def _launch(self, bucket: Bucket) -> None:
        bucket.launched = True
        self._handles.append((bucket, self.transport.all_reduce(bucket.buffer, op="sum",
                                                                async_op=True)))

    def _grad_ready(self, p: torch.Tensor) -> None:
        bucket, i = self._slot[p]
        if bucket.launched or bucket.ready[i]:
            raise RuntimeError(
                "sync_sgd averages gradients once per backward pass: a second backward "
                "produced a gradient before after_backward (the optimizer step) ran. "
                "Accumulating gradients over several backward passes is not supported; "
                "use a larger batch instead")
        bucket.load_grad(i, self._divisor)   # copy now, while the gradient is in cache
        bucket.ready[i] = True
        bucket.pending -= 1
        if bucket.pending == 0:
            self._launch(bucket)

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
        if self.transport.world_size == 1:
            return
        if self.codec is not None:
            self._reduce_with_codec()
            return
        try:
            for b in self.buckets:   # buckets whose hooks did not all fire (unused params, no overlap)
                if not b.launched:
                    for i in range(len(b.params)):
                        if not b.ready[i]:
                            b.load_grad(i, self._divisor)
                    self._launch(b)
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
                "codec": None if self.codec is None else self.codec.describe()}

    def close(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        self._handles.clear()
