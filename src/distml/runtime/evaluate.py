"""Evaluation of a model on a test set: mean loss and, for classification, accuracy."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn, batch_size: int = 1000,
             device: torch.device | str = "cpu", classification: bool = True,
             dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Evaluate ``model`` on every sample of ``data`` (an ``ArrayData``).

    Returns:
        ``{"test_loss": ..., "test_accuracy": ... or None, "test_samples": n}``.
    """
    was_training = model.training
    model.eval()
    total_loss, correct, n = 0.0, 0, len(data)
    try:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            x, y = data.take(idx)
            x = x.to(device, dtype=dtype)
            y = y.to(device, dtype=dtype) if y.is_floating_point() else y.to(device)
            out = model(x)
            total_loss += float(loss_fn(out, y)) * len(idx)
            if classification:
                correct += int((out.argmax(dim=1) == y).sum())
    finally:
        model.train(was_training)
    return {"test_loss": total_loss / max(n, 1),
            "test_accuracy": correct / max(n, 1) if classification else None,
            "test_samples": n}
