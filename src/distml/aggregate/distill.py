"""Knowledge distillation: soft targets at a temperature and the student's loss.

Reference: Hinton, Vinyals & Dean 2015, "Distilling the knowledge in a neural network"
(the T² factor keeps the soft term's gradient scale independent of T); used by
ensemble-compression (Sun et al. 2017) to shrink a K-model ensemble back to one model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_targets(teacher_logprobs: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax(log p / T)``: the teacher's distribution softened by T (T = 1 keeps it).

    Args:
        teacher_logprobs: (n, C) log-probabilities (or logits) of the teacher.
        temperature: T > 0.

    Raises:
        ValueError: T <= 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(teacher_logprobs / temperature, dim=1)


def distillation_loss(student_logits: torch.Tensor, targets: torch.Tensor, soft: torch.Tensor,
                      relabelled: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean loss over a batch where some samples carry the teacher's soft labels.

    Relabelled samples: ``T² · CE(softmax(s/T), soft)``; the others: ``CE(s, y)``.

    Args:
        student_logits: (n, C).
        targets: (n,) true class indices.
        soft: (n, C) soft targets (rows of non-relabelled samples are ignored).
        relabelled: (n,) bool, which samples use ``soft``.
        temperature: T > 0.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    n = student_logits.shape[0]
    total = student_logits.new_zeros(())
    if relabelled.any():
        s = student_logits[relabelled] / temperature
        total = total + temperature ** 2 * F.cross_entropy(s, soft[relabelled], reduction="sum")
    hard = ~relabelled
    if hard.any():
        total = total + F.cross_entropy(student_logits[hard], targets[hard], reduction="sum")
    return total / max(n, 1)
