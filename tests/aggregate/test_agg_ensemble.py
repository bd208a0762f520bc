"""Ensemble averaging / voting against scikit-learn's VotingClassifier, and the distillation loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import VotingClassifier

from distml.aggregate.distill import distillation_loss, soft_targets
from distml.aggregate.ensemble import Ensemble, average_probabilities, majority_vote


K, N, C = 5, 200, 4


class Fixed(ClassifierMixin, BaseEstimator):
    """A 'classifier' whose probabilities for sample i (X[:, 0] = i) are fixed in advance."""

    def __init__(self, proba=None):
        self.proba = proba

    def fit(self, x, y):
        self.classes_ = np.arange(C)
        return self

    def predict_proba(self, x):
        return self.proba[x[:, 0].astype(int)]

    def predict(self, x):
        return self.predict_proba(x).argmax(1)


class Table(torch.nn.Module):
    """A member whose logits for sample i (x[:, 0] = i) are fixed."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits[x[:, 0].long()]


def _fixed_logits():
    g = torch.Generator().manual_seed(0)
    return [torch.randn(N, C, generator=g, dtype=torch.float64) * 2 for _ in range(K)]


def test_average_and_vote_equal_sklearn_voting_classifier():
    logits = _fixed_logits()
    probs = [torch.softmax(z, 1).numpy() for z in logits]
    x = np.arange(N, dtype=float)[:, None]
    y = np.arange(N) % C
    est = [(f"m{k}", Fixed(p)) for k, p in enumerate(probs)]
    soft = VotingClassifier(est, voting="soft").fit(x, y)
    hard = VotingClassifier(est, voting="hard").fit(x, y)
    avg = average_probabilities(logits)
    assert np.allclose(avg.numpy(), soft.predict_proba(x))
    assert (avg.argmax(1).numpy() == soft.predict(x)).all()
    winner, votes = majority_vote(logits)
    top = votes.max(1, keepdim=True).values
    untied = ((votes == top).sum(1) == 1).numpy()
    assert untied.sum() > N // 2                         # the comparison covers most samples
    assert (winner.numpy()[untied] == hard.predict(x)[untied]).all()
    # ties: sklearn takes the lowest tied class; we take the tied class with the highest mean probability
    for i in np.flatnonzero(~untied):
        tied = (votes[i] == top[i]).nonzero().flatten()
        assert int(winner[i]) == int(tied[avg[i, tied].argmax()])


def test_vote_tie_break_on_a_constructed_case():
    a = torch.tensor([[5.0, 0.0, 0.0]])          # votes class 0, confidently
    b = torch.tensor([[0.0, 0.1, 0.0]])          # votes class 1, barely
    winner, votes = majority_vote([a, b])
    assert votes.tolist() == [[1, 1, 0]] and winner.tolist() == [0]
    winner, _ = majority_vote([a, b, b])
    assert winner.tolist() == [1]                # a real majority beats confidence


@pytest.mark.parametrize("mode", ["average", "vote"])
def test_ensemble_module_outputs_log_probabilities(mode):
    logits = _fixed_logits()
    ens = Ensemble([Table(z) for z in logits], mode)
    out = ens(torch.arange(N, dtype=torch.float64)[:, None])
    assert torch.allclose(out.exp().sum(1), torch.ones(N, dtype=torch.float64))
    expect = average_probabilities(logits).argmax(1) if mode == "average" else majority_vote(logits)[0]
    assert torch.equal(out.argmax(1), expect)
    assert set(ens.state_dict()) == {f"members.{k}.logits" for k in range(K)}
    with pytest.raises(ValueError, match="mode must be one of average, vote"):
        Ensemble([Table(logits[0])], "max")


def test_distillation_loss():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(3, (8,), generator=g)
    teacher = torch.randn(8, 3, generator=g, dtype=torch.float64)
    none = torch.zeros(8, dtype=torch.bool)
    assert torch.allclose(distillation_loss(s, y, teacher, none, 3.0), F.cross_entropy(s, y))
    # T = 1 and one-hot soft labels: plain cross-entropy again
    onehot = F.one_hot(y, 3).double()
    assert torch.allclose(distillation_loss(s, y, onehot, ~none, 1.0), F.cross_entropy(s, y))
    t = 4.0
    soft = soft_targets(teacher, t)
    assert torch.allclose(soft, torch.softmax(teacher / t, 1))
    got = distillation_loss(s, y, soft, ~none, t)
    assert torch.allclose(got, t * t * F.cross_entropy(s / t, soft))
    # half relabelled: the per-sample mix
    half = torch.arange(8) < 4
    mixed = distillation_loss(s, y, soft, half, t)
    expect = (t * t * F.cross_entropy(s[:4] / t, soft[:4], reduction="sum")
              + F.cross_entropy(s[4:], y[4:], reduction="sum")) / 8
    assert torch.allclose(mixed, expect)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        soft_targets(teacher, 0)


def test_sequence_logits_combine_per_position():
    """A language model's (B, T, V) logits: each position combines like one (B·T, V) row."""
    torch.manual_seed(0)
    members = [torch.randn(2, 5, 7) for _ in range(3)]
    flat = [z.reshape(-1, 7) for z in members]
    assert torch.allclose(average_probabilities(members).reshape(-1, 7), average_probabilities(flat))
    winner, votes = majority_vote(members)
    flat_winner, flat_votes = majority_vote(flat)
    assert torch.equal(winner.reshape(-1), flat_winner) and torch.equal(votes.reshape(-1, 7), flat_votes)
