"""Ensembles of equally shaped models: probability averaging and majority voting.

Reference: Dietterich 2000, "Ensemble methods in machine learning"; the output
sum/average and majority voting of docs/design.md §2.5 (scikit-learn's ``VotingClassifier``
``soft`` and ``hard`` voting, except that a tied vote goes to the tied class with the
highest mean probability instead of the lowest index).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

MODES = ("average", "vote")


def average_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Mean of the members' softmax probabilities (classes on the last dimension).

    Args:
        logits: one (n, C) tensor per member (or (n, T, C): a language model's positions).

    Returns:
        (n, C) probabilities (the members' shape).
    """
    if len(logits) == 0:
        raise ValueError("an ensemble needs at least one member, got 0")
    return torch.stack([torch.softmax(z, dim=-1) for z in logits]).mean(dim=0)


def majority_vote(logits: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member votes for its argmax; ties go to the tied class with the highest mean probability.

    Args:
        logits: one (n, C) tensor per member (or (n, T, C), voting per position).

    Returns:
        ``(winner, votes)``: (n,) class indices and (n, C) vote counts.
    """
    probs = average_probabilities(logits)
    votes = torch.zeros_like(probs)
    for z in logits:
        votes.scatter_add_(-1, z.argmax(dim=-1, keepdim=True), torch.ones_like(votes[..., :1]))
    # the mean probability is < 1, so adding it reorders only classes with equal votes
    return (votes + probs).argmax(dim=-1), votes


class Ensemble(nn.Module):
    """K models combined into one classifier whose output is a log-probability.

    ``average``: ``log mean_k softmax(f_k(x))``. ``vote``: ``log((votes + p̄)/(K + 1))``,
    a distribution whose argmax is the majority vote with the mean-probability tie-break,
    so the run's evaluation (cross-entropy on logits, argmax accuracy) applies unchanged.
    Its ``state_dict`` holds every member (``members.k.*``).

    Args:
        members: the models (same architecture), at least one.
        mode: "average" or "vote".

    Raises:
        ValueError: no members or an unknown mode.
    """

    def __init__(self, members: Sequence[nn.Module], mode: str = "average"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if len(members) == 0:
            raise ValueError("an ensemble needs at least one member, got 0")
        self.members = nn.ModuleList(members)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = [m(x) for m in self.members]
        probs = average_probabilities(logits)
        if self.mode == "average":
            return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
        _, votes = majority_vote(logits)
        return ((votes + probs) / (len(logits) + 1)).log()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    """Share of samples whose argmax output equals the label (the model is put in eval mode)."""
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(y), batch_size):
            out = model(x[start:start + batch_size])
            correct += int((out.argmax(dim=1) == y[start:start + batch_size]).sum())
    finally:
        model.train(was_training)
    return correct / max(len(y), 1)
