"""Loss factories: each returns a callable ``(output, target) -> scalar mean loss``.

Each is registered with meta ``tasks`` (the tasks it fits), which :func:`build_loss`
checks against the data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from distml.errors import ConfigError
from distml.models.base import LOSSES

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@LOSSES.register("cross_entropy", tasks=("classification", "language_modeling"),
                 summary="softmax cross-entropy on logits; targets are class indices or probabilities; "
                         "(B, T, V) sequence logits are scored at every position")
def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    """Softmax cross-entropy on logits (``torch.nn.functional.cross_entropy``).

    Targets may be class indices (N,) or class probabilities (N, C), e.g. an ensemble's
    soft labels for distillation. Sequence logits (B, T, V) with targets (B, T) (a
    language model) are flattened: the mean over all B·T positions, in nats.

    Args:
        label_smoothing: mass spread uniformly over the classes, in [0, 1).

    Returns:
        ``loss(output, target)``, the mean over the batch.

    Raises:
        ConfigError: label_smoothing outside [0, 1).
    """
    if isinstance(label_smoothing, bool) or not isinstance(label_smoothing, (int, float)) \
            or not 0 <= label_smoothing < 1:
        raise ConfigError(f"cross_entropy: label_smoothing must be in [0, 1), got {label_smoothing!r}")
    smoothing = float(label_smoothing)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim == 3:        # (B, T, V): torch wants the classes in dim 1, so flatten
            output, target = output.reshape(-1, output.shape[-1]), target.reshape(-1, *target.shape[2:])
        return F.cross_entropy(output, target, label_smoothing=smoothing)

    return loss


@LOSSES.register("mse", tasks=("regression",), summary="mean squared error")
def mse() -> LossFn:
    """Mean squared error; an (N, 1) output is compared with an (N,) target.

    Returns:
        ``loss(output, target)``, the mean over all elements.
    """

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if output.ndim == 2 and output.shape[1] == 1 and target.ndim == 1:
            output = output.squeeze(1)
        return F.mse_loss(output, target.to(output.dtype))

    return loss


@LOSSES.register("hinge", tasks=("classification",), paper="Crammer & Singer 2001",
                 summary="multi-class hinge max(0, margin + max_{j!=y} s_j - s_y)")
def hinge(margin: float = 1.0) -> LossFn:
    """Crammer–Singer multi-class hinge: ``max(0, margin + max_{j≠y} s_j − s_y)``, averaged.

    For 2 classes this is exactly the binary hinge ``max(0, margin − y·s)`` with
    ``s = s_1 − s_0`` and ``y = ±1`` (not torch's ``multi_margin_loss``, which sums over
    the wrong classes and divides by C, i.e. half the binary hinge for C = 2).

    Args:
        margin: the required gap between the true score and the best other one (> 0).

    Returns:
        ``loss(output, target)`` for scores (N, C) and class indices (N,).

    Raises:
        ConfigError: margin <= 0.
    """
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin > 0:
        raise ConfigError(f"hinge: margin must be > 0, got {margin!r}")
    m = float(margin)

    def loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        t = target.long().unsqueeze(1)
        # The true class's own entry becomes 0, so the max over all j is also the clamp at 0.
        margins = (output - output.gather(1, t) + m).scatter(1, t, 0.0)
        return margins.amax(dim=1).mean()

    return loss
