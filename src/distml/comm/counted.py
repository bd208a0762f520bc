"""Counting torch's own model-parallel traffic on the transport.

Pipeline and tensor parallelism hand their communication to torch
(``torch.distributed.pipelining`` posts the stages' sends and receives, DTensor runs
the collectives of a sharded layer); the transport never sees those calls. Both are
counted here, on the transport's :class:`~distml.comm.transport.CommStats`, from the
operations themselves rather than estimated from layer shapes, and their time is
booked as communication (docs/design.md §5):

- :func:`counted_stage`: a ``PipelineStage`` whose point-to-point operations are
  counted as :data:`P2P_OP` and whose own arithmetic is timed, so the rest of the
  schedule's time is the stage's communication (sends, receives, waiting on the
  neighbouring stages);
- :class:`CountedCollectives`: a dispatch mode that counts every functional collective
  (the ops DTensor lowers to) and the waits on their results, with their time.
"""

from __future__ import annotations

import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from distml.comm.transport import is_send, nbytes

#: the transport counter of the pipeline stages' sends and receives
P2P_OP = "pipeline_p2p"


def counted_stage(stats, *args, **kwargs):
    """A ``torch.distributed.pipelining.PipelineStage`` that accounts for its traffic.

    The schedule asks the stage for the point-to-point operations of each micro-batch
    (``get_fwd_recv_ops`` and the three others) and posts exactly those, so their
    tensors' sizes are the bytes on the wire: each is recorded in ``stats`` as
    :data:`P2P_OP` (sent for an ``isend``, received for an ``irecv``). The stage also
    adds up the seconds of its own forward, backward and loss (``compute_seconds``), so
    the step can book the rest of the schedule's time as communication.
    """
    from torch.distributed.pipelining import PipelineStage

    class CountedStage(PipelineStage):
        compute_seconds = 0.0

        def _count(self, ops):
            for op in ops:
                n = op.tensor.numel() * op.tensor.element_size()
                sent = is_send(op)
                stats.record(P2P_OP, n if sent else 0, 0 if sent else n)
            return ops

        def _computing(self, fn, *a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.compute_seconds += time.perf_counter() - t0

        def timed(self, loss_fn):
            """``loss_fn`` with its seconds counted as this stage's compute."""
            return lambda *a, **kw: self._computing(loss_fn, *a, **kw)

        def get_fwd_recv_ops(self, chunk):
            return self._count(super().get_fwd_recv_ops(chunk))

        def get_fwd_send_ops(self, chunk):
            return self._count(super().get_fwd_send_ops(chunk))

        def get_bwd_recv_ops(self, chunk):
            return self._count(super().get_bwd_recv_ops(chunk))

        def get_bwd_send_ops(self, chunk):
            return self._count(super().get_bwd_send_ops(chunk))

        def forward_one_chunk(self, *a, **kw):
            return self._computing(super().forward_one_chunk, *a, **kw)

        def backward_one_chunk(self, *a, **kw):
            return self._computing(super().backward_one_chunk, *a, **kw)

        def backward_weight_one_chunk(self, *a, **kw):
            return self._computing(super().backward_weight_one_chunk, *a, **kw)

    return CountedStage(*args, **kwargs)


_FUNCOL = torch.ops._c10d_functional


class CountedCollectives(TorchDispatchMode):
    """Count the functional collectives run inside the ``with`` block on ``stats`` as ``op``.

    Bytes follow the transport's convention (docs/design.md §5): an all-reduce sends and
    receives its input; an all-gather sends its shard and receives the others'
    (``world - 1`` shards); a reduce-scatter sends its input and receives one
    ``1/world`` share; an all-to-all sends and receives its input. Time is the time
    inside the collective calls and inside the waits on their results
    (``wait_tensor``): with gloo the collective runs on a background thread and the wait
    is where the step blocks on it.

    DTensor lowers a sharded layer's redistributions to these ops, so a mode entered
    around the training step sees every byte tensor parallelism moves, forward and
    backward (dispatch modes follow the autograd engine into the backward pass). Build
    one per run and enter it at every step.
    """

    def __init__(self, stats, op: str, world_size: int):
        from torch.distributed.tensor import DTensor   # half a second: only where it is used

        super().__init__()
        self.stats, self.op, self._dtensor = stats, op, DTensor
        w = world_size           # (sent, received) for an input of n bytes
        self._sizes = {
            _FUNCOL.all_reduce.default: lambda n: (n, n),
            _FUNCOL.all_reduce_.default: lambda n: (n, n),
            _FUNCOL.all_gather_into_tensor.default: lambda n: (n, n * (w - 1)),
            _FUNCOL.reduce_scatter_tensor.default: lambda n: (n, n // w),
            _FUNCOL.all_to_all_single.default: lambda n: (n, n),
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._dtensor in types:
            # let DTensor lower the op first (a mode runs before tensor subclasses); the
            # collectives it lowers to come back through this mode
            return NotImplemented
        size = self._sizes.get(func)
        if size is None and func is not _FUNCOL.wait_tensor.default:
            return func(*args, **kwargs)
        t0 = time.perf_counter()
        out = func(*args, **kwargs)
        sent, received = size(nbytes(args[0])) if size is not None else (0, 0)
        self.stats.record(self.op, sent, received, time.perf_counter() - t0,
                          calls=1 if size is not None else 0)
        return out
