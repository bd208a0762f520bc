"""Gradient buckets: group parameters into flat buffers so one message carries many tensors.

Few large messages beat many small ones on gloo (docs/design.md §6: one async all-reduce per
tensor is 10–25 % slower than one flat all-reduce), while several buckets let the first
ones travel while backward is still producing the rest.
"""

from __future__ import annotations

import torch


class Bucket:
    """A flat buffer over a fixed list of parameters, filled from their ``.grad``.

    ``views[i]`` is the slice of ``buffer`` shaped like ``params[i]``. After a reduction,
    :meth:`attach_grads` makes each ``p.grad`` that view, so the result reaches the
    optimizer without a copy; the next backward either finds ``p.grad`` None (after
    ``zero_grad(set_to_none=True)``: a fresh gradient, copied in by :meth:`load_grad`) or
    still the view (``zero_grad(set_to_none=False)``: accumulated in place, no copy).
    """

    def __init__(self, params: list[torch.nn.Parameter]):
        self.params = params
        self.numels = [p.numel() for p in params]
        first = params[0]
        self.buffer = torch.zeros(sum(self.numels), dtype=first.dtype, device=first.device)
        self.views: list[torch.Tensor] = []
        offset = 0
        for p, n in zip(params, self.numels):
            self.views.append(self.buffer[offset:offset + n].view_as(p))
            offset += n
        self.pending = len(params)           # gradients still to come in this backward
        self.ready = [False] * len(params)   # which gradients are in the buffer already
        self.launched = False                # its reduction has started

    @property
    def nbytes(self) -> int:
        return self.buffer.numel() * self.buffer.element_size()

    def holds_grad(self, i: int) -> bool:
        """Whether ``params[i].grad`` is already this bucket's view (no copy needed)."""
        g, v = self.params[i].grad, self.views[i]
        return (g is not None and g.data_ptr() == v.data_ptr() and g.shape == v.shape
                and g.stride() == v.stride() and g.dtype == v.dtype)

    def load_grad(self, i: int, divisor: float = 1.0) -> None:
        """Put ``params[i].grad / divisor`` into its view (zeros where the grad is missing).

        One pass over the gradient: the copy and the scaling are fused; a gradient that
        already is the view is scaled in place.
        """
        g, v = self.params[i].grad, self.views[i]
        if g is None:
            v.zero_()
        elif self.holds_grad(i):
            if divisor != 1.0:
                v.div_(divisor)
        elif divisor != 1.0:
            torch.div(g, divisor, out=v)
        else:
            v.copy_(g)

    def fill_from_grads(self, divisor: float = 1.0) -> torch.Tensor:
        """Copy every parameter's gradient (divided by ``divisor``) into the buffer."""
        for i in range(len(self.params)):
            self.load_grad(i, divisor)
        return self.buffer

    def attach_grads(self) -> None:
        """Make every parameter's ``.grad`` its view of the (reduced) buffer: no copy."""
        for i, p in enumerate(self.params):
            if not self.holds_grad(i):
                p.grad = self.views[i]

    def write_to_grads(self) -> None:
        """Copy the (reduced) buffer into every parameter's existing gradient tensor."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                p.grad = self.views[i].clone()
            elif not self.holds_grad(i):
                p.grad.copy_(self.views[i])


def make_buckets(params: list[torch.nn.Parameter], cap_bytes: int) -> list[Bucket]:
    """Split parameters, in reverse order (the order backward produces them), into buckets.

    Args:
        params: the trainable parameters in the model's order.
        cap_bytes: a bucket is closed once it holds at least this many bytes.
    """
    if cap_bytes <= 0:
        raise ValueError(f"bucket cap must be > 0 bytes, got {cap_bytes}")
    buckets: list[Bucket] = []
    current: list[torch.nn.Parameter] = []
    size = 0
    for p in reversed(params):
        if current and (p.dtype != current[0].dtype or p.device != current[0].device):
            buckets.append(Bucket(current))
            current, size = [], 0
        current.append(p)
        size += p.numel() * p.element_size()
        if size >= cap_bytes:
            buckets.append(Bucket(current))
            current, size = [], 0
    if current:
        buckets.append(Bucket(current))
    return buckets


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors]) if tensors else torch.zeros(0)


def unflatten_into(flat: torch.Tensor, tensors: list[torch.Tensor]) -> None:
    offset = 0
    for t in tensors:
        n = t.numel()
        t.data.copy_(flat[offset:offset + n].view_as(t))
        offset += n


def broadcast_module(module: torch.nn.Module, transport, src: int = 0) -> None:
    """Make every rank's parameters and buffers equal to rank ``src``'s, in one message per dtype."""
    tensors = [t for t in list(module.parameters()) + list(module.buffers())]
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = flatten(group)
        transport.broadcast(flat, src=src)
        unflatten_into(flat, group)
