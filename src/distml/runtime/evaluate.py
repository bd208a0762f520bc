"""Evaluation of a model on a test set: mean loss, accuracy, and for language models bits per token."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from distml.partition.base import LANGUAGE_MODELING


def lm_metrics(loss_nats: float) -> dict[str, float]:
    """A language model's mean token loss (nats) as ``bits_per_token`` and ``perplexity``."""
    return {"bits_per_token": loss_nats / math.log(2),
            "perplexity": math.exp(loss_nats) if loss_nats < 700 else math.inf}


@torch.no_grad()
def evaluate(model: nn.Module, data, loss_fn, batch_size: int = 1000,
             device: torch.device | str = "cpu", classification: bool = True,
             dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Evaluate ``model`` on every sample of ``data`` (an ``ArrayData`` or text windows).

    Integer inputs (token ids) keep their dtype; floating ones take ``dtype``. For a
    language-modelling set (``data.info.task``), outputs are (B, T, V) logits:
    ``test_loss`` is the mean cross-entropy per token in nats, ``test_accuracy`` the
    next-token (top-1) accuracy over every position, and ``bits_per_token`` (=
    test_loss / ln 2), ``perplexity`` and ``test_tokens`` are added.

    Returns:
        ``{"test_loss": ..., "test_accuracy": ... or None, "test_samples": n}`` (plus the
        language-model figures above).
    """
    lm = getattr(getattr(data, "info", None), "task", None) == LANGUAGE_MODELING
    scored = classification or lm
    was_training = model.training
    model.eval()
    total_loss, correct, n, positions = 0.0, 0, len(data), 0
    try:
        for start in range(0, n, batch_size):
            idx = np.arange(start, min(start + batch_size, n))
            x, y = data.take(idx)
            x = x.to(device, dtype=dtype) if x.is_floating_point() else x.to(device)
            y = y.to(device, dtype=dtype) if y.is_floating_point() else y.to(device)
            out = model(x)
            total_loss += float(loss_fn(out, y)) * len(idx)   # loss_fn: mean over the batch
            if scored:
                correct += int((out.argmax(dim=-1) == y).sum())
                positions += y.numel()
    finally:
        model.train(was_training)
    loss = total_loss / max(n, 1)
    result = {"test_loss": loss,
              "test_accuracy": correct / max(positions, 1) if scored else None,
              "test_samples": n}
    if lm:
        result.update(lm_metrics(loss), test_tokens=positions)
    return result
